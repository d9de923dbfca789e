/**
 * Scenario 5: many SSE followers of one push, from a separate process
 * (test/faults/sse-followers.js; loopback, batched, bounded). Every follower
 * receives the push's final event; the API process's Redis connections stay
 * constant; a new worker can still connect; API RSS stays within a bound.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Redis } from 'ioredis';
import {
  startProxy,
  startRegistry,
  tmpDir,
  removeTmpDir,
  type ProxyHandle,
  type RegistryHandle,
} from '../helpers';
import { startDurableRedis, type DurableRedisHandle } from '../helpers/durable-redis';
import {
  FULL,
  MiB,
  apiCall,
  figure,
  memoryOf,
  sleep,
  startFerryProcs,
  tcpConnectionsTo,
  waitFinal,
  writeImage,
  type FerryProcs,
} from './harness';

const S = '5 SSE followers';
const TOKEN = 'faults-' + randomBytes(8).toString('hex');
/** A lazily opened shared subscriber (or two) is fine; one per follower is not. */
const EXTRA_API_CONNECTIONS = 2;
/** API RSS high-water mark may grow by at most this over its idle RSS: 100 MiB + 32 KiB per follower. */
const rssBoundMb = (followers: number) => 100 + (followers * 32) / 1024;

async function clientCount(url: string): Promise<number> {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 3_000 });
  await r.connect();
  try {
    const list = (await r.client('LIST')) as string;
    return list.trim().split('\n').length - 1; // not counting this connection
  } finally {
    r.disconnect();
  }
}

describe(`faults ${S}: SSE followers from a separate process`, function () {
  this.timeout(FULL ? 900_000 : 300_000);
  const followers = FULL ? 10_000 : 1_000;
  let redis: DurableRedisHandle;
  let registry: RegistryHandle;
  let proxy: ProxyHandle;
  let ferry: FerryProcs | undefined;
  let root: string;

  before(async () => {
    [redis, registry] = await Promise.all([startDurableRedis(), startRegistry()]);
    proxy = await startProxy({ host: '127.0.0.1', port: registry.port });
    root = tmpDir('faults-sse');
  });
  after(async () => {
    await ferry?.stop();
    await proxy?.stop();
    await Promise.allSettled([redis?.stop(), registry?.stop()]);
    if (root) removeTmpDir(root);
  });

  it(`${followers} followers all get the final event; the API's Redis connections stay constant; a new worker connects; API RSS bounded`, async () => {
    const img = writeImage(root, 'sse', [4 * MiB]);
    ferry = await startFerryProcs(
      {
        FERRY_REDIS_URL: redis.url,
        FERRY_SOURCE_ROOT: root,
        FERRY_REGISTRY_ALLOW: proxy.host,
        FERRY_API_TOKENS: TOKEN,
        FERRY_UPLOAD_CHUNK_SIZE: String(MiB),
      },
      ['api', 'coordinator', 'lookup', 'upload'],
    );
    const f = ferry;
    const apiPid = f.api().service.pid;
    // The push stays mid-upload (its first PATCH held at the proxy) until every follower is in.
    const held = proxy.holdNext('PATCH');
    const r = await apiCall(f.url, TOKEN, 'POST', '/v1/pushes', {
      source: `dir:${img}`,
      target: `${proxy.host}/sse/app:1`,
    });
    assert.equal(r.status, 202, r.text);
    const id = r.body.id as string;
    figure(S, 'pushes started', 1);
    await Promise.race([
      held,
      sleep(60_000).then(() => Promise.reject(new Error('no PATCH within 60 s'))),
    ]);

    const apiConnsBefore = tcpConnectionsTo(apiPid, redis.port);
    const clientsBefore = await clientCount(redis.url);
    const memBefore = memoryOf(apiPid);

    const child = spawn(process.execPath, [join(__dirname, 'sse-followers.js')], {
      env: {
        ...process.env,
        NODE_OPTIONS: '',
        URL: `${f.url}/v1/pushes/${id}/events`,
        TOKEN,
        COUNT: String(followers),
        TIMEOUT_MS: String(FULL ? 600_000 : 150_000),
        BATCH: '200',
      },
      cwd: join(__dirname, '..', '..'),
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const lines = createInterface({ input: child.stdout });
    const next = () =>
      new Promise<Record<string, unknown>>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error('sse-followers said nothing in time')),
          FULL ? 620_000 : 170_000,
        );
        lines.once('line', (l) => {
          clearTimeout(timer);
          resolve(JSON.parse(l));
        });
      });
    try {
      const open = await next();
      figure(
        S,
        'followers connected',
        `${open.connected}/${followers} (${open.failedToConnect} failed)`,
      );
      const apiConnsDuring = tcpConnectionsTo(apiPid, redis.port);
      const clientsDuring = await clientCount(redis.url);
      const memDuring = memoryOf(apiPid);
      // A new worker process can still connect to Redis while every follower is in.
      let newWorker = 'ready';
      try {
        await f.add('upload');
      } catch (err) {
        newWorker = `failed: ${(err as Error).message.split('\n')[0]}`;
      }
      figure(S, 'a new upload worker started meanwhile', newWorker);

      proxy.release();
      const result = await next();
      const state = await waitFinal(f.url, TOKEN, id, 120_000);
      const memAfter = memoryOf(apiPid);
      const apiConnsAfter = tcpConnectionsTo(apiPid, redis.port);
      figure(S, 'pushes finished', `${state.status === 'succeeded' ? 1 : 0}/1 succeeded`);
      figure(
        S,
        'followers that got the final event',
        `${result.finals}/${followers} (ended without it: ${result.endedWithoutFinal}; HTTP ${JSON.stringify(result.statuses)}; errors ${JSON.stringify(result.errors)})`,
      );
      figure(
        S,
        "API's Redis connections before / with followers / after",
        `${apiConnsBefore} / ${apiConnsDuring} / ${apiConnsAfter} (allowed: +${EXTRA_API_CONNECTIONS})`,
      );
      figure(S, 'Redis CLIENT LIST before / with followers', `${clientsBefore} / ${clientsDuring}`);
      const bound = memBefore.rssMb + rssBoundMb(followers);
      figure(
        S,
        'API RSS before / with followers / VmHWM after (MiB)',
        `${memBefore.rssMb.toFixed(0)} / ${memDuring.rssMb.toFixed(0)} / ${memAfter.hwmMb.toFixed(0)} (bound: ${bound.toFixed(0)} = before + 100 MiB + 32 KiB per follower)`,
      );

      assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
      assert.equal(result.finals, followers, JSON.stringify(result));
      assert.ok(
        apiConnsDuring <= apiConnsBefore + EXTRA_API_CONNECTIONS,
        `the API opened ${apiConnsDuring - apiConnsBefore} Redis connections for ${followers} followers`,
      );
      assert.equal(newWorker, 'ready');
      assert.ok(
        memAfter.hwmMb <= bound,
        `API VmHWM ${memAfter.hwmMb.toFixed(0)} MiB > ${bound.toFixed(0)} MiB`,
      );
    } finally {
      if (child.exitCode === null && child.pid) process.kill(child.pid, 'SIGKILL');
    }
  });
});
