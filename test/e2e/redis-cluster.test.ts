/**
 * Redis beyond one node: Ferry's API and roles (in this process) on a
 * 3-master Redis Cluster and on a Sentinel-watched master, each started by
 * the test from Debian's redis-server / redis-sentinel; a push end to end
 * into a real docker-registry, read back by skopeo; Ferry's own Lua scripts
 * (semaphore, lease, blob index, push store) and the SSE event hub on the
 * Cluster with every key in the prefix's hash slot.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { Cluster } from 'ioredis';
import {
  BlobIndex,
  EventHub,
  Lease,
  PushStore,
  Semaphore,
  createConnection,
  isCluster,
  keySlot,
  openQueueContext,
  waitReady,
  type PushRequest,
} from '@ferry/queue';
import {
  readSse,
  skopeo,
  skopeoInspect,
  startRegistry,
  tmpDir,
  type RegistryHandle,
} from '../helpers';
import {
  haveRedisBinaries,
  startRedisCluster,
  startRedisSentinel,
  type RedisClusterHandle,
  type RedisSentinelHandle,
} from '../helpers/redis-cluster';
import {
  copyHello,
  stackConfig,
  startWorkers,
  submitPush,
  waitForPush,
  pushAndWait,
  type WorkerStack,
} from './stack';

function needBinaries(ctx: Mocha.Context, sentinel: boolean): void {
  if (haveRedisBinaries(sentinel)) return;
  const what = sentinel ? 'redis-server, redis-cli, redis-sentinel' : 'redis-server, redis-cli';
  if (process.env.CI === 'true') throw new Error(`${what} missing: scripts/install-system-deps.sh`);
  ctx.skip();
}

const digestA = 'sha256:' + 'a'.repeat(64);
const diffIdA = 'sha256:' + 'd'.repeat(64);

/** A push through the stack's API: succeeded, read back by skopeo inspect and copy. */
async function pushHello(
  stack: WorkerStack,
  root: string,
  registry: RegistryHandle,
  repo: string,
): Promise<{ id: string; digest: string; events: { data: string }[] }> {
  const target = `${registry.host}/${repo}:1.0`;
  const id = await submitPush(stack, { source: `dir:${root}/hello`, target, tags: ['latest'] });
  // Followed over SSE while it runs: the API's event hub reads through the same Redis.
  const sse = readSse(`${stack.api.url}/v1/pushes/${id}/events`, {});
  const state = await waitForPush(stack.ctx, id, 90_000);
  assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
  const digest = state.manifest!.digest;
  const info = await skopeoInspect(`docker://${target}`);
  assert.equal(info.Digest, digest);
  assert.equal(info.Layers.length, 2);
  const latest = await skopeoInspect(`docker://${registry.host}/${repo}:latest`);
  assert.equal(latest.Digest, digest);
  await skopeo([
    'copy',
    '--insecure-policy',
    '--src-tls-verify=false',
    '--preserve-digests',
    `docker://${target}`,
    `oci:${tmpDir('copy-back')}:x`,
  ]);
  const { events, ended } = await sse;
  assert.ok(ended, 'the SSE stream ends after the final status');
  const statuses = events
    .map((e) => JSON.parse(e.data) as { type?: string; status?: string })
    .filter((e) => e.type === 'status')
    .map((e) => e.status);
  assert.equal(statuses.at(-1), 'succeeded', JSON.stringify(statuses));
  return { id, digest, events };
}

describe('Redis beyond one node', function () {
  this.timeout(180_000);

  describe('a 3-master Redis Cluster (FERRY_REDIS_CLUSTER)', () => {
    let cluster: RedisClusterHandle | undefined;
    let registry: RegistryHandle | undefined;
    let stack: WorkerStack | undefined;
    let root: string;

    before(async function () {
      needBinaries(this, false);
      [cluster, registry] = await Promise.all([startRedisCluster(3), startRegistry()]);
      root = tmpDir('cluster-src');
      copyHello(root);
      stack = await startWorkers(
        stackConfig({
          FERRY_REDIS_CLUSTER: cluster.seeds,
          FERRY_REGISTRY_ALLOW: registry.host,
          FERRY_SOURCE_ROOT: root,
        }),
      );
    });
    after(async () => {
      await stack?.stop();
      await Promise.allSettled([cluster?.stop(), registry?.stop()]);
    });

    it('pushes an image end to end through the Cluster; skopeo reads it back; a re-push finds it, another repository mounts it', async () => {
      assert.ok(isCluster(stack!.ctx.connection), 'the queue context runs on a Cluster client');
      const first = await pushHello(stack!, root, registry!, 'cluster/hello');
      const again = await pushAndWait(stack!, {
        source: `dir:${root}/hello`,
        target: `${registry!.host}/cluster/hello:1.0`,
      });
      assert.equal(again.status, 'succeeded');
      assert.deepEqual(
        again.layers.map((l) => l.state),
        ['exists', 'exists'],
      );
      // The blob index (written by the upload lease's commit script) names the repository to mount from.
      const other = await pushAndWait(stack!, {
        source: `dir:${root}/hello`,
        target: `${registry!.host}/cluster/other:1.0`,
      });
      assert.equal(other.status, 'succeeded', JSON.stringify(other.error));
      assert.deepEqual(
        other.layers.map((l) => [l.state, l.mountedFrom]),
        [
          ['mounted', 'cluster/hello'],
          ['mounted', 'cluster/hello'],
        ],
      );
      assert.equal(other.manifest!.digest, first.digest);

      // /readyz pings through the Cluster; /metrics reads the cluster-wide counters and queue depths there.
      assert.equal((await fetch(`${stack!.api.url}/readyz`)).status, 200);
      const metrics = await (await fetch(`${stack!.api.url}/metrics`)).text();
      assert.match(metrics, /^ferry_redis_up 1$/m);
      assert.match(metrics, /^ferry_pushes_total\{[^}]*status="succeeded"[^}]*\} 3$/m);
      assert.match(metrics, /^ferry_queue_jobs\{/m);
    });

    it("keeps every key of the push — BullMQ's and Ferry's — in the one slot of the prefix's hash tag", async () => {
      const conn = stack!.ctx.connection as Cluster;
      const prefix = stack!.config.queuePrefix;
      const slot = Number(await conn.cluster('KEYSLOT', prefix));
      assert.equal(keySlot(prefix), slot, 'Ferry computes the slot as Redis does');
      const owner = (await conn.cluster('SLOTS')) as unknown as [
        number,
        number,
        [string, number],
      ][];
      const [, , [ownerHost, ownerPort]] = owner.find(([lo, hi]) => lo <= slot && slot <= hi)!;
      const found: string[] = [];
      for (const node of conn.nodes('master')) {
        const keys = await node.keys(`${prefix}*`);
        if (node.options.host === ownerHost && node.options.port === ownerPort) found.push(...keys);
        else assert.deepEqual(keys, [], `keys on ${node.options.port}, not the slot's owner`);
      }
      // BullMQ's queues, Ferry's push state, events, indexes, metrics and blob index are all there.
      for (const part of [':lookup:', ':upload:', ':assemble:', ':push:', ':pushes:', ':blob:']) {
        assert.ok(
          found.some((k) => k.includes(part)),
          `a ${part} key: ${found.join(' ')}`,
        );
      }
      for (const key of found) {
        assert.equal(Number(await conn.cluster('KEYSLOT', key)), slot, key);
      }
    });

    it('runs the semaphore, lease, blob index and push store scripts on the Cluster (no CROSSSLOT)', async () => {
      const conn = createConnection(stack!.config.redis, { role: 'producer' });
      try {
        await waitReady(conn);
        const prefix = `{s${randomBytes(4).toString('hex')}}`;

        const sem = new Semaphore(conn, { prefix, name: 'lookup', limit: 1 });
        assert.equal(await sem.use('reg', async () => sem.count('reg')), 1);
        assert.equal(await sem.tryAcquire('reg', 'x').then((p) => p !== null), true);
        assert.equal(await sem.tryAcquire('reg', 'y'), null, 'the limit holds');

        const lease = new Lease(conn, { prefix });
        const token = await lease.acquire('reg/blob', 'me', 5_000);
        assert.ok(token !== null);
        assert.equal(await lease.acquire('reg/blob', 'other', 5_000), null);
        assert.equal(await lease.renew('reg/blob', 'me', token, 5_000), true);

        const blobs = new BlobIndex(conn, { prefix });
        assert.equal(
          await blobs.recordUpload({
            lease: { key: 'reg/blob', owner: 'me', token },
            registry: 'reg',
            repository: 'team/app',
            digest: digestA,
            compressed: { diffId: diffIdA, level: 6, zlib: '1.2.13', size: 42 },
          }),
          true,
        );
        assert.deepEqual(await blobs.reposWithBlob('reg', digestA), ['team/app']);
        assert.deepEqual(await blobs.lookupCompressed(diffIdA, 6, '1.2.13'), {
          digest: digestA,
          size: 42,
        });
        assert.equal(await lease.release('reg/blob', 'me', token), true);

        const store = new PushStore(conn, { prefix, ttlSeconds: 600 });
        try {
          const request: PushRequest = {
            source: 'dir:/srv/app',
            target: 'reg/team/app:1',
            tags: [],
            format: 'oci',
          };
          // Two pushes followed at once: one XREAD over both streams, on one Cluster node.
          assert.equal(await store.create('p1', request), true);
          assert.equal(await store.create('p2', request), true);
          const r1 = store.eventReader('p1');
          const r2 = store.eventReader('p2');
          const [seen1, seen2] = [r1.read('0', 10_000), r2.read('0', 10_000)];
          assert.ok((await seen1).length > 0 && (await seen2).length > 0);
          const last1 = (await seen1).at(-1)!.id;
          const last2 = (await seen2).at(-1)!.id;
          const next1 = r1.read(last1, 10_000);
          const next2 = r2.read(last2, 10_000);
          await new Promise((r) => setTimeout(r, 200)); // both blocked in the hub's read
          assert.equal((await store.setStatus('p1', 'running')).ok, true);
          await store.appendEvent('p2', { type: 'log', message: 'hello from p2' });
          assert.deepEqual(
            (await next1).map((e) => e.event.type === 'status' && e.event.status),
            ['running'],
          );
          assert.deepEqual(
            (await next2).map((e) => e.event.type === 'log' && e.event.message),
            ['hello from p2'],
          );
          assert.equal((await store.get('p1'))?.status, 'running');
          r1.close();
          r2.close();
        } finally {
          store.close();
        }

        // The contrast: without a hash tag the lease's two keys fall in two slots and Redis refuses.
        const untagged = new Lease(conn, { prefix: 'untagged' });
        assert.notEqual(keySlot('untagged:lease:k'), keySlot('untagged:lease-token:k'));
        await assert.rejects(untagged.acquire('k', 'me', 5_000), /CROSSSLOT/);
      } finally {
        conn.disconnect();
      }
    });

    it("wakes the event hub's blocked XREAD for a new follower with CLIENT UNBLOCK on the slot's node; refuses a stream of another slot", async () => {
      const conn = createConnection(stack!.config.redis, { role: 'producer' });
      // A round blocks for up to a minute: only CLIENT UNBLOCK (sent to the right node) lets a new follower in sooner.
      const hub = new EventHub(conn, { maxBlockMs: 60_000 });
      try {
        await waitReady(conn);
        const tag = `{h${randomBytes(4).toString('hex')}}`;
        await conn.xadd(
          `${tag}:early`,
          '*',
          'e',
          JSON.stringify({ type: 'log', message: 'early' }),
        );
        const quiet = hub.read(`${tag}:quiet`, '0', 60_000, 10);
        await new Promise((r) => setTimeout(r, 300)); // the hub is blocked on the quiet stream
        const timer = new Promise<'still blocked'>((r) =>
          setTimeout(() => r('still blocked'), 15_000),
        );
        const got = await Promise.race([hub.read(`${tag}:early`, '0', 60_000, 10), timer]);
        assert.notEqual(got, 'still blocked');
        assert.deepEqual(
          (got as { event: { type: string; message?: string } }[]).map((e) => e.event.message),
          ['early'],
        );
        await assert.rejects(hub.read('{another-tag}:events', '0', 1_000, 10), /hash slot/);
        hub.close();
        assert.deepEqual(await quiet, []);
      } finally {
        hub.close();
        conn.disconnect();
      }
    });

    it('refuses a queue prefix without a hash tag on a Cluster', async () => {
      await assert.rejects(
        openQueueContext(
          { ...stack!.config, queuePrefix: 'ferry' },
          { role: 'producer', waitReady: false },
        ),
        /hash tag/,
      );
    });
  });

  describe('one master behind a Sentinel (FERRY_REDIS_SENTINELS, FERRY_REDIS_SENTINEL_NAME)', () => {
    let sentinel: RedisSentinelHandle | undefined;
    let registry: RegistryHandle | undefined;
    let stack: WorkerStack | undefined;
    let root: string;

    before(async function () {
      needBinaries(this, true);
      [sentinel, registry] = await Promise.all([startRedisSentinel(), startRegistry()]);
      root = tmpDir('sentinel-src');
      copyHello(root);
      stack = await startWorkers(
        stackConfig({
          FERRY_REDIS_SENTINELS: sentinel.sentinels,
          FERRY_REDIS_SENTINEL_NAME: sentinel.name,
          FERRY_REGISTRY_ALLOW: registry.host,
          FERRY_SOURCE_ROOT: root,
        }),
      );
    });
    after(async () => {
      await stack?.stop();
      await Promise.allSettled([sentinel?.stop(), registry?.stop()]);
    });

    it('pushes an image end to end through the master the Sentinel names', async () => {
      assert.equal(stack!.config.redis.mode, 'sentinel');
      const { id } = await pushHello(stack!, root, registry!, 'sentinel/hello');
      // The state is on the master the Sentinel watches, read there directly.
      const direct = createConnection(sentinel!.master.url, { role: 'producer' });
      try {
        await waitReady(direct);
        const key = `${stack!.config.queuePrefix}:push:${id}`;
        assert.equal(await direct.hget(key, 'status'), 'succeeded');
      } finally {
        direct.disconnect();
      }
    });
  });
});
