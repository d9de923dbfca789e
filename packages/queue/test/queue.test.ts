import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import {
  BlobIndex,
  JOB_VERSION,
  Lease,
  Metrics,
  PushStore,
  Semaphore,
  addUploadChild,
  assembleJobId,
  createConnection,
  createQueues,
  enqueuePush,
  lookupJobId,
  removePushJobs,
  uploadJobId,
  waitReady,
  type AssembleJob,
  type FerryQueues,
  type LookupJob,
  type PushRequest,
  type UploadJob,
} from '@ferry/queue';
import { startRedis, type RedisHandle } from '../../../test/helpers/redis';

const request: PushRequest = {
  source: 'dir:/srv/images/app',
  target: '127.0.0.1:59999/team/app:1.0',
  tags: ['latest'],
  format: 'oci',
};

async function until(what: string, fn: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('@ferry/queue against a real redis-server', function () {
  let redis: RedisHandle;
  let conn: Redis;
  const workers: Worker[] = [];

  before(async () => {
    redis = await startRedis();
    conn = createConnection(redis.url, { role: 'producer' });
    await waitReady(conn);
  });
  after(async () => {
    conn?.disconnect();
    await redis?.stop();
  });
  afterEach(async () => {
    await Promise.all(workers.splice(0).map((w) => w.close(true)));
  });

  /** A fresh prefix per test, like BullMQ's own tests use fresh queue names. */
  function freshQueues(): FerryQueues {
    return createQueues({
      connection: conn,
      prefix: `{t${randomUUID().slice(0, 8)}}`,
      policy: { attempts: 1, backoffMs: 10 },
    });
  }

  function worker<T>(
    q: FerryQueues,
    name: 'lookup' | 'upload' | 'assemble',
    fn: (job: Job<T>) => Promise<unknown>,
  ) {
    const w = new Worker<T>(name, fn, {
      connection: createConnection(redis.url, { role: 'worker' }),
      prefix: q.prefix,
      concurrency: 4,
    });
    w.on('error', () => undefined);
    workers.push(w as Worker);
    return w;
  }

  describe('flows', () => {
    it('builds one lookup child per layer under the push parent, and a second enqueue collapses', async () => {
      const q = freshQueues();
      const layout = { images: [{ layers: 3 }, { layers: 2 }] };
      const parent = await enqueuePush(q, 'p1', request, layout, { gzipLevel: 6 });
      assert.equal(parent.id, assembleJobId('p1'));
      const again = await enqueuePush(q, 'p1', request, layout, { gzipLevel: 6 });
      assert.equal(again.id, parent.id);

      assert.deepEqual(await q.lookup.getJobCounts('waiting'), { waiting: 5 });
      assert.deepEqual(await q.assemble.getJobCounts('waiting-children'), {
        'waiting-children': 1,
      });
      const job = await q.lookup.getJob(lookupJobId('p1', 1, 1));
      assert.ok(job, 'the lookup job of image 1 layer 1 exists');
      assert.equal(job.id, 'p1-i1-l1');
      assert.deepEqual(job.data, {
        v: JOB_VERSION,
        pushId: 'p1',
        imageIndex: 1,
        layerIndex: 1,
        source: request.source,
        target: request.target,
        gzipLevel: 6,
      } satisfies LookupJob);
      assert.equal(job.opts.failParentOnFailure, true);
      assert.deepEqual(job.opts.backoff, { type: 'ferry', delay: 10 });
      const deps = await (await q.assemble.getJob(parent.id as string))!.getDependenciesCount();
      assert.equal(deps.unprocessed, 5);
      await q.close();
    });

    it('refuses a push id that would break job ids', async () => {
      const q = freshQueues();
      await assert.rejects(
        enqueuePush(q, 'a:b', request, { images: [{ layers: 1 }] }, { gzipLevel: 6 }),
        /push id/,
      );
      await q.close();
    });

    it('an upload child added by a lookup worker makes the parent wait for it', async () => {
      const q = freshQueues();
      await enqueuePush(q, 'p2', request, { images: [{ layers: 2 }] }, { gzipLevel: 6 });
      const order: string[] = [];
      worker<LookupJob>(q, 'lookup', async (job) => {
        if (job.data.layerIndex === 0) {
          const up = await addUploadChild(q, job, { ...job.data });
          assert.equal(up.id, uploadJobId('p2', 0, 0));
          // a retried lookup adds the same upload: it collapses
          await addUploadChild(q, job, { ...job.data });
        }
        order.push(`lookup ${job.data.layerIndex}`);
        return 'done';
      });
      worker<AssembleJob>(q, 'assemble', async (job) => {
        order.push('assemble');
        return job.data.pushId;
      });
      await until(
        'both lookups',
        async () => (await q.lookup.getJobCounts('completed')).completed === 2,
      );
      await new Promise((r) => setTimeout(r, 300));
      assert.equal((await q.assemble.getJob(assembleJobId('p2')))!.finishedOn, undefined);
      assert.equal(
        await (await q.assemble.getJob(assembleJobId('p2')))!.getState(),
        'waiting-children',
      );
      assert.ok(!order.includes('assemble'), 'the parent waits for the upload child');
      assert.equal((await q.upload.getJobCounts('waiting')).waiting, 1);

      worker<UploadJob>(q, 'upload', async () => {
        order.push('upload');
      });
      await until('assemble', async () => order.includes('assemble'));
      assert.equal(order.indexOf('assemble'), order.length - 1);
      assert.ok(order.indexOf('upload') < order.indexOf('assemble'));
      await q.close();
    });

    it('refuses to add an upload to a flow the lookup job does not belong to', async () => {
      const q = freshQueues();
      const fake = { id: 'x', parent: { id: 'push-other', queueKey: q.assemble.qualifiedName } };
      await assert.rejects(
        addUploadChild(q, fake, {
          v: JOB_VERSION,
          pushId: 'p9',
          imageIndex: 0,
          layerIndex: 0,
          source: 's',
          target: 't',
          gzipLevel: 6,
        }),
        /not to push p9/,
      );
      await q.close();
    });

    it('a lookup failing for good fails the parent', async () => {
      const q = freshQueues();
      await enqueuePush(q, 'p3', request, { images: [{ layers: 2 }] }, { gzipLevel: 6 });
      worker<LookupJob>(q, 'lookup', async (job) => {
        if (job.data.layerIndex === 1) throw new UnrecoverableError('FERRY_DIGEST_MISMATCH');
      });
      let ran = false;
      worker<AssembleJob>(q, 'assemble', async () => {
        ran = true;
      });
      await until(
        'parent failed',
        async () => (await q.assemble.getJobCounts('failed')).failed === 1,
      );
      assert.equal(ran, false);
      await q.close();
    });

    it('an upload child failing for good fails the parent', async () => {
      const q = freshQueues();
      await enqueuePush(q, 'p4', request, { images: [{ layers: 1 }] }, { gzipLevel: 6 });
      worker<LookupJob>(q, 'lookup', async (job) => {
        await addUploadChild(q, job, { ...job.data });
      });
      worker<UploadJob>(q, 'upload', async () => {
        throw new UnrecoverableError('blob refused');
      });
      let ran = false;
      worker<AssembleJob>(q, 'assemble', async () => {
        ran = true;
      });
      await until(
        'parent failed',
        async () => (await q.assemble.getJobCounts('failed')).failed === 1,
      );
      assert.equal(ran, false);
      await q.close();
    });

    it('removePushJobs removes the waiting jobs of a cancelled push', async () => {
      const q = freshQueues();
      const layout = { images: [{ layers: 3 }] };
      await enqueuePush(q, 'p5', request, layout, { gzipLevel: 6 });
      const removed = await removePushJobs(q, 'p5', layout);
      assert.equal(removed, 4);
      assert.equal((await q.lookup.getJobCounts('waiting')).waiting, 0);
      assert.equal(await q.assemble.getJob(assembleJobId('p5')), undefined);
      await q.close();
    });
  });

  describe('Semaphore', () => {
    it('never lets more than N hold a key at once, across connections', async () => {
      const prefix = `{s${randomUUID().slice(0, 8)}}`;
      const conns = [0, 1, 2].map(() => createConnection(redis.url, { role: 'producer' }));
      await Promise.all(conns.map((c) => waitReady(c)));
      const sems = conns.map(
        (c) => new Semaphore(c, { prefix, name: 'lookup', limit: 3, leaseMs: 5_000 }),
      );
      let inside = 0;
      let max = 0;
      let done = 0;
      await Promise.all(
        Array.from({ length: 24 }, (_, i) =>
          sems[i % 3].use(
            'registry.example:5000',
            async () => {
              inside++;
              max = Math.max(max, inside);
              const held = await sems[0].count('registry.example:5000');
              assert.ok(held <= 3, `redis says ${held} holders`);
              await new Promise((r) => setTimeout(r, 5 + (i % 4) * 5));
              inside--;
              done++;
            },
            { timeoutMs: 20_000, pollMs: 5 },
          ),
        ),
      );
      assert.equal(done, 24);
      assert.ok(max >= 1 && max <= 3, `at most 3 held at once (saw ${max})`);
      assert.equal(await sems[0].count('registry.example:5000'), 0);
      // another key has its own permits
      const a = await sems[0].tryAcquire('other');
      assert.ok(a);
      await a.release();
      conns.forEach((c) => c.disconnect());
    });

    /** A lookup semaphore of 3 permits under a fresh prefix (the useMany tests). */
    const lanesSemaphore = () =>
      new Semaphore(conn, {
        prefix: `{s${randomUUID().slice(0, 8)}}`,
        name: 'lookup',
        limit: 3,
        leaseMs: 5_000,
      });

    it('useMany takes as many permits as are free in one call, gives them back in one, and keeps the cap', async () => {
      const key = 'registry.example:5000';
      const sem = lanesSemaphore();
      const other = await sem.tryAcquire(key);
      assert.ok(other);
      // Two free: four wanted, two granted; each is held, and nothing more can be taken.
      const lanes = await sem.useMany(
        key,
        4,
        async (permits) => {
          assert.equal(permits.length, 2);
          assert.ok(permits.every((p) => p.held));
          assert.equal(await sem.count(key), 3);
          assert.equal(await sem.tryAcquire(key), null);
          // A lane may let its permit go while it sleeps and take it back.
          await permits[1].release();
          assert.equal(await sem.count(key), 2);
          await permits[1].reacquire();
          assert.ok(permits[1].held);
          return permits.length;
        },
        { timeoutMs: 1_000, pollMs: 5 },
      );
      assert.equal(lanes, 2);
      await until('permits given back', async () => (await sem.count(key)) === 1);
      // None free: it waits for one, like use().
      await sem.tryAcquire(key);
      await sem.tryAcquire(key);
      let got = 0;
      const waiting = sem.useMany(key, 3, async (permits) => (got = permits.length), {
        timeoutMs: 5_000,
        pollMs: 5,
      });
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(got, 0, 'waits while all are held');
      await other.release();
      await waiting;
      assert.equal(got, 1);
      await until('permits given back', async () => (await sem.count(key)) === 2);
    });

    it("useMany's more() takes permits freed since the start, without waiting, and gives them back with the rest", async () => {
      const key = 'registry.example:5000';
      const sem = lanesSemaphore();
      const a = await sem.tryAcquire(key);
      const b = await sem.tryAcquire(key);
      assert.ok(a && b);
      let later: ((n: number) => Promise<unknown[]>) | undefined;
      const total = await sem.useMany(
        key,
        3,
        async (permits, more) => {
          later = more;
          assert.equal(permits.length, 1);
          // None free: nothing, at once.
          const t0 = Date.now();
          assert.deepEqual(await more(2), []);
          assert.ok(Date.now() - t0 < 1_000);
          await a.release();
          const added = await more(2);
          assert.equal(added.length, 1, 'the one freed');
          assert.ok(added[0]!.held);
          assert.equal(await sem.count(key), 3);
          assert.equal(await sem.tryAcquire(key), null, 'the cap holds');
          await b.release();
          // Asked for nothing: nothing taken.
          assert.deepEqual(await more(0), []);
          assert.equal(await sem.count(key), 2);
          const last = await more(5);
          assert.equal(last.length, 1, 'no more than wanted in all');
          assert.deepEqual(await more(1), [], 'all three wanted are held');
          return permits.length + added.length + last.length;
        },
        { timeoutMs: 1_000, pollMs: 5 },
      );
      assert.equal(total, 3);
      await until('permits given back', async () => (await sem.count(key)) === 0);
      // Asked after fn answered: nothing is kept.
      assert.deepEqual(await later!(3), []);
      assert.equal(await sem.count(key), 0);
    });

    it('frees the permit of a holder that stopped renewing', async () => {
      const sem = new Semaphore(conn, {
        prefix: `{s${randomUUID().slice(0, 8)}}`,
        name: 'lookup',
        limit: 1,
        leaseMs: 200,
      });
      const first = await sem.tryAcquire('r');
      assert.ok(first);
      assert.equal(await sem.tryAcquire('r'), null);
      const second = await sem.acquire('r', { timeoutMs: 2_000, pollMs: 20 });
      assert.ok(second, 'the dead holder’s permit was taken over');
      assert.equal(await first.renew(), false, 'the lapsed holder knows it lost the permit');
      assert.equal(await sem.acquire('r', { timeoutMs: 50 }), null);
      await second.release();
    });
  });

  describe('Lease', () => {
    it('is exclusive, hands out growing fencing tokens and is taken over after expiry', async () => {
      const lease = new Lease(conn, { prefix: `{l${randomUUID().slice(0, 8)}}` });
      const key = '127.0.0.1:59999/sha256:' + 'b'.repeat(64);
      const t1 = await lease.acquire(key, 'worker-a', 5_000);
      assert.equal(typeof t1, 'number');
      assert.equal(await lease.acquire(key, 'worker-b', 5_000), null);
      assert.equal(await lease.acquire(key, 'worker-a', 5_000), t1, 're-acquiring keeps the token');
      assert.equal((await lease.holder(key))?.owner, 'worker-a');
      assert.equal(await lease.release(key, 'worker-b', t1!), false, 'only the owner releases');
      assert.equal(await lease.release(key, 'worker-a', t1!), true);
      assert.equal(await lease.holder(key), null);

      const t2 = await lease.acquire(key, 'worker-b', 150);
      assert.ok(t2! > t1!, 'a new holder gets a larger token');
      await new Promise((r) => setTimeout(r, 250));
      const t3 = await lease.acquire(key, 'worker-c', 5_000);
      assert.ok(t3! > t2!, 'took over the expired lease with a larger token');
      assert.equal(await lease.isCurrent(key, t2!), false);
      assert.equal(await lease.isCurrent(key, t3!), true);
      assert.equal(
        await lease.renew(key, 'worker-b', t2!, 5_000),
        false,
        'the old holder cannot renew',
      );
      assert.equal(await lease.release(key, 'worker-b', t2!), false);
      assert.equal(await lease.renew(key, 'worker-c', t3!, 5_000), true);
      const h = await lease.holder(key);
      assert.equal(h?.token, t3);
      assert.ok(h!.ttlMs > 4_000);
    });

    it('lets exactly one of many concurrent claimants win', async () => {
      const lease = new Lease(conn, { prefix: `{l${randomUUID().slice(0, 8)}}` });
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) => lease.acquire('k', `w${i}`, 5_000)),
      );
      assert.equal(results.filter((r) => r !== null).length, 1);
    });
  });

  describe('PushStore', () => {
    let store: PushStore;
    beforeEach(() => {
      store = new PushStore(conn, { prefix: `{p${randomUUID().slice(0, 8)}}`, ttlSeconds: 3600 });
    });

    it('round-trips state, layers and events; sets the TTL', async () => {
      assert.equal(
        await store.create('a1', request, { layout: { images: [{ layers: 2 }] } }),
        true,
      );
      assert.equal(await store.create('a1', request), false, 'create does not overwrite');
      const ttl = await store.ttl('a1');
      assert.ok(ttl.state > 3500 && ttl.state <= 3600, `state TTL ${ttl.state}`);
      assert.ok(ttl.events > 3500 && ttl.events <= 3600, `events TTL ${ttl.events}`);

      let s = await store.get('a1');
      assert.equal(s?.status, 'queued');
      assert.deepEqual(s?.tags, ['latest']);
      assert.deepEqual(s?.request, request);
      assert.deepEqual(s?.layers, [
        { imageIndex: 0, index: 0, state: 'pending', bytesSent: 0 },
        { imageIndex: 0, index: 1, state: 'pending', bytesSent: 0 },
      ]);

      assert.equal((await store.setStatus('a1', 'running')).ok, true);
      const digest = 'sha256:' + 'c'.repeat(64);
      // concurrent updates of different attributes of one layer do not overwrite each other
      await Promise.all([
        store.updateLayer('a1', { imageIndex: 0, index: 0 }, { digest, size: 1234 }),
        store.updateLayer('a1', { imageIndex: 0, index: 0 }, { state: 'uploading' }),
        store.updateLayer(
          'a1',
          { imageIndex: 0, index: 1 },
          { state: 'mounted', mountedFrom: 'team/base', digest },
        ),
      ]);
      await store.updateLayer(
        'a1',
        { imageIndex: 0, index: 0 },
        { bytesSent: 1234, state: 'uploaded' },
      );
      await store.appendEvent('a1', { type: 'log', message: 'hello' });
      const manifest = {
        digest: 'sha256:' + 'd'.repeat(64),
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        size: 500,
      };
      assert.equal((await store.finish('a1', { manifest })).ok, true);
      assert.equal(
        (await store.finish('a1', { error: { code: 'X', message: 'late' } })).ok,
        false,
        'final is final',
      );
      assert.equal((await store.cancel('a1')).ok, false);

      s = await store.get('a1');
      assert.equal(s?.status, 'succeeded');
      assert.deepEqual(s?.manifest, manifest);
      assert.ok(s?.startedAt && s.finishedAt);
      assert.deepEqual(s?.layers, [
        { imageIndex: 0, index: 0, state: 'uploaded', bytesSent: 1234, digest, size: 1234 },
        {
          imageIndex: 0,
          index: 1,
          state: 'mounted',
          bytesSent: 0,
          digest,
          mountedFrom: 'team/base',
        },
      ]);

      const events = await store.readEvents('a1');
      const types = events.map(
        (e) => e.event.type + ('status' in e.event ? ':' + e.event.status : ''),
      );
      assert.deepEqual(types, [
        'status:queued',
        'status:running',
        'layer',
        'layer',
        'layer',
        'layer',
        'log',
        'status:succeeded',
      ]);
      const last = events[events.length - 1].event;
      assert.equal(last.type === 'status' && last.manifest?.digest, manifest.digest);
      const lastLayer = events[5].event;
      assert.equal(lastLayer.type, 'layer');
      assert.deepEqual(
        { ...lastLayer, at: undefined },
        {
          type: 'layer',
          imageIndex: 0,
          index: 0,
          state: 'uploaded',
          digest,
          size: 1234,
          bytesSent: 1234,
          at: undefined,
        },
      );
      // ids grow, and reading after an id gives exactly the rest
      for (let i = 1; i < events.length; i++)
        assert.ok(events[i].id > events[i - 1].id || events[i].id.length > events[i - 1].id.length);
      const rest = await store.readEvents('a1', events[4].id);
      assert.deepEqual(
        rest.map((e) => e.id),
        events.slice(5).map((e) => e.id),
      );
      assert.deepEqual(await store.readEvents('a1', events[events.length - 1].id), []);
      await assert.rejects(store.readEvents('a1', 'nope'), /bad event id/);
    });

    it('workers racing to mark a push running record one status event and one startedAt', async () => {
      await store.create('r1', request);
      const results = await Promise.all(
        Array.from({ length: 10 }, () => store.setStatus('r1', 'running')),
      );
      assert.ok(results.every((r) => r.ok));
      assert.equal(results.filter((r) => r.eventId).length, 1);
      const events = await store.readEvents('r1');
      assert.deepEqual(
        events.map((e) => (e.event.type === 'status' ? e.event.status : e.event.type)),
        ['queued', 'running'],
      );
      const startedAt = (await store.get('r1'))?.startedAt;
      assert.ok(startedAt);
      await store.setStatus('r1', 'running');
      assert.equal((await store.get('r1'))?.startedAt, startedAt);
    });

    it('a blocking read returns an event appended while it waits', async () => {
      await store.create('b1', request);
      const [first] = await store.readEvents('b1');
      const pending = store.readEvents('b1', first.id, 5_000);
      await new Promise((r) => setTimeout(r, 100));
      const id = await store.appendEvent('b1', { type: 'log', message: 'later' });
      const got = await pending;
      assert.equal(got.length, 1);
      assert.equal(got[0].id, id);
      assert.deepEqual(
        { ...got[0].event, at: undefined },
        { type: 'log', message: 'later', at: undefined },
      );
    });

    it('cancels, lists by status, and ignores unknown pushes', async () => {
      await store.create('c1', request);
      await store.create('c2', request);
      await store.setStatus('c2', 'running');
      assert.equal(await store.isCancelled('c1'), false);
      const r = await store.cancel('c1');
      assert.deepEqual([r.ok, r.previous], [true, 'queued']);
      assert.equal(await store.isCancelled('c1'), true);
      assert.equal(await store.isCancelled('never'), true, 'a missing push counts as cancelled');
      assert.equal(
        (await store.setStatus('c1', 'running')).ok,
        false,
        'a cancelled push does not restart',
      );
      assert.deepEqual(
        (await store.list({ status: 'cancelled' })).map((p) => p.id),
        ['c1'],
      );
      assert.deepEqual(
        (await store.list({ status: 'running' })).map((p) => p.id),
        ['c2'],
      );
      assert.deepEqual((await store.list()).map((p) => p.id).sort(), ['c1', 'c2']);
      assert.equal(await store.get('never'), undefined);
      assert.equal(await store.appendEvent('never', { type: 'log', message: 'x' }), undefined);
      assert.equal(
        await store.updateLayer('never', { imageIndex: 0, index: 0 }, { state: 'exists' }),
        undefined,
      );
      const last = (await store.readEvents('c1')).pop()!.event;
      assert.equal(last.type === 'status' && last.status, 'cancelled');
    });

    it('updates several layers in one call: each its own event, in order; cancelled stays', async () => {
      await store.create('u1', request, { layout: { images: [{ layers: 3 }] } });
      await store.updateLayer('u1', { imageIndex: 0, index: 2 }, { state: 'cancelled' });
      const digest = 'sha256:' + 'e'.repeat(64);
      const ids = await store.updateLayers('u1', [
        { key: { imageIndex: 0, index: 0 }, patch: { state: 'exists', digest, size: 5 } },
        { key: { imageIndex: 0, index: 1 }, patch: { state: 'uploading' }, addBytesSent: 7 },
        { key: { imageIndex: 0, index: 2 }, patch: { state: 'exists', digest } },
      ]);
      assert.equal(ids?.length, 3);
      const s = await store.get('u1');
      assert.deepEqual(
        s?.layers.map((l) => [l.index, l.state, l.digest, l.bytesSent]),
        [
          [0, 'exists', digest, 0],
          [1, 'uploading', undefined, 7],
          [2, 'cancelled', digest, 0],
        ],
      );
      const layerEvents = (await store.readEvents('u1'))
        .map((e) => e.event)
        .flatMap((e) => (e.type === 'layer' ? [[e.index, e.state]] : []));
      assert.deepEqual(layerEvents, [
        [2, 'cancelled'],
        [0, 'exists'],
        [1, 'uploading'],
        [2, 'cancelled'],
      ]);
      assert.deepEqual(await store.updateLayers('u1', []), []);
      assert.equal(
        await store.updateLayers('never', [
          { key: { imageIndex: 0, index: 0 }, patch: { state: 'exists' } },
        ]),
        undefined,
      );
    });

    it('maps an idempotency key to the first push id', async () => {
      const a = await store.idempotent('key-1', 'id-a', 'fp1');
      assert.deepEqual(a, { id: 'id-a', created: true, sameRequest: true });
      const b = await store.idempotent('key-1', 'id-b', 'fp1');
      assert.deepEqual(b, { id: 'id-a', created: false, sameRequest: true });
      const c = await store.idempotent('key-1', 'id-c', 'fp2');
      assert.deepEqual(c, { id: 'id-a', created: false, sameRequest: false });
      const ttl = await conn.ttl(store.keys.idempotency('key-1'));
      assert.ok(ttl > 3500);
    });

    it('counts finished pushes and durations in the cluster metrics', async () => {
      await store.create('m1', request);
      await store.finish('m1', { error: { code: 'FERRY_X', message: 'boom' } });
      await store.metrics.inc('ferry_blobs_total', { result: 'uploaded' });
      await store.metrics.inc('ferry_bytes_uploaded_total', {}, 4096);
      const snap = await store.metrics.snapshot();
      const byName = Object.fromEntries(snap.map((m) => [m.name, m]));
      assert.deepEqual(byName.ferry_pushes_total.values, [
        { value: 1, labels: { status: 'failed' } },
      ]);
      assert.deepEqual(byName.ferry_blobs_total.values, [
        { value: 1, labels: { result: 'uploaded' } },
      ]);
      assert.equal(byName.ferry_bytes_uploaded_total.values[0].value, 4096);
      const count = byName.ferry_push_duration_seconds.values.find((v) =>
        v.metricName?.endsWith('_count'),
      );
      assert.equal(count?.value, 1);
      const inf = byName.ferry_push_duration_seconds.values.find((v) => v.labels.le === '+Inf');
      assert.equal(inf?.value, 1);
    });
  });

  describe('BlobIndex and Metrics', () => {
    it('remembers repositories per registry blob and compressed digests per diffID + settings', async () => {
      const blobs = new BlobIndex(conn, { prefix: `{b${randomUUID().slice(0, 8)}}` });
      const d = 'sha256:' + 'e'.repeat(64);
      await blobs.recordBlob('127.0.0.1:59999', 'team/base', d);
      await new Promise((r) => setTimeout(r, 5));
      await blobs.recordBlob('127.0.0.1:59999', 'team/app', d);
      assert.deepEqual(await blobs.reposWithBlob('127.0.0.1:59999', d), ['team/app', 'team/base']);
      assert.deepEqual(await blobs.reposWithBlob('other:5000', d), []);
      await blobs.forgetBlob('127.0.0.1:59999', 'team/app', d);
      assert.deepEqual(await blobs.reposWithBlob('127.0.0.1:59999', d), ['team/base']);

      await blobs.cacheCompressed(d, 6, '1.3.1', 'sha256:' + 'f'.repeat(64), 999);
      assert.deepEqual(await blobs.lookupCompressed(d, 6, '1.3.1'), {
        digest: 'sha256:' + 'f'.repeat(64),
        size: 999,
      });
      assert.equal(
        await blobs.lookupCompressed(d, 1, '1.3.1'),
        null,
        'another gzip level is another entry',
      );
      assert.equal(
        await blobs.lookupCompressed(d, 6, '1.2.13'),
        null,
        'another zlib is another entry',
      );
    });

    it('histogram buckets are cumulative', async () => {
      const m = new Metrics(conn, `{m${randomUUID().slice(0, 8)}}`);
      await m.observe('ferry_blob_upload_duration_seconds', 0.3);
      await m.observe('ferry_blob_upload_duration_seconds', 7);
      const h = (await m.snapshot()).find((s) => s.name === 'ferry_blob_upload_duration_seconds')!;
      const bucket = (le: string) => h.values.find((v) => v.labels.le === le)?.value;
      assert.equal(bucket('0.1'), 0);
      assert.equal(bucket('0.5'), 1);
      assert.equal(bucket('15'), 2);
      assert.equal(bucket('+Inf'), 2);
      assert.equal(h.values.find((v) => v.metricName?.endsWith('_sum'))?.value, 7.3);
    });
  });
});
