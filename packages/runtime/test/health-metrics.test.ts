import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { loadConfig, type FerryConfig } from '@ferry/config';
import { createLogger } from '@ferry/log';
import { QUEUE_NAMES } from '@ferry/queue';
import { startWorker, type RoleHandle } from '../src';
import { freePort } from '../../../test/helpers/ports';
import { startRedis, type RedisHandle } from '../../../test/helpers/redis';
import { assertPromtoolClean, badValues, requirePromtool } from '../../../test/helpers/promtool';

/*
 * A worker's FERRY_HEALTH_PORT: /metrics serves the process' own default
 * metrics, ferry_redis_up and the cluster metrics it can read — and keeps
 * answering 200 while Redis is down.
 */

function seriesNames(text: string): Set<string> {
  return new Set(
    text
      .split('\n')
      .filter((l) => l && !l.startsWith('#'))
      .map((l) => l.split(/[{\s]/)[0]!),
  );
}

describe('worker health port: /metrics', function () {
  let redis: RedisHandle | undefined;
  const open: RoleHandle[] = [];

  afterEach(async () => {
    for (const h of open.splice(0)) await h.close().catch(() => undefined);
    await redis?.stop();
  });

  function config(redisUrl: string, healthPort: number): FerryConfig {
    return loadConfig({
      FERRY_REDIS_URL: redisUrl,
      FERRY_HOST: '127.0.0.1',
      FERRY_HEALTH_PORT: String(healthPort),
      FERRY_QUEUE_PREFIX: `{h${randomBytes(4).toString('hex')}}`,
      FERRY_LOG_LEVEL: 'error',
      FERRY_SHUTDOWN_TIMEOUT: '3',
    });
  }

  function start(cfg: FerryConfig, role: 'lookup' | 'upload') {
    return startWorker<{ pushId: string }, string>({
      role,
      queueName: QUEUE_NAMES[role],
      concurrency: 1,
      config: cfg,
      logger: createLogger({ silent: true }),
      processor: () => async () => 'done',
    });
  }

  it('serves Prometheus text (not 404) with Redis up, and with Redis stopped: ferry_redis_up 0, own metrics, no Redis-backed series; promtool-clean both times', async function () {
    requirePromtool(this);
    redis = await startRedis();
    const port = await freePort();
    const handle = await start(config(redis.url, port), 'lookup');
    open.push(handle);
    await handle.ctx.metrics.inc('ferry_blobs_total', { result: 'exists' }, 4);
    const url = `http://127.0.0.1:${port}/metrics`;

    const up = await fetch(url);
    assert.equal(up.status, 200);
    assert.match(up.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const upText = await up.text();
    assert.match(upText, /^ferry_redis_up 1$/m);
    assert.match(upText, /^ferry_worker_process_cpu_seconds_total /m);
    assert.match(upText, /^ferry_blobs_total\{result="exists"\} 4$/m);
    assert.match(upText, /^ferry_queue_jobs\{queue="lookup",state="waiting"\} 0$/m);
    assert.match(upText, /^ferry_pushes\{status="queued"\} 0$/m);
    assert.deepEqual(badValues(upText), []);
    await assertPromtoolClean(upText, 'a worker with Redis up');

    await redis.stop();
    const down = await fetch(url);
    assert.equal(down.status, 200);
    const downText = await down.text();
    assert.match(downText, /^ferry_redis_up 0$/m);
    assert.match(downText, /^ferry_worker_process_cpu_seconds_total /m);
    const names = seriesNames(downText);
    for (const n of ['ferry_blobs_total', 'ferry_queue_jobs', 'ferry_pushes'])
      assert.ok(!names.has(n), `${n} left out`);
    assert.deepEqual(badValues(downText), []);
    await assertPromtoolClean(downText, 'a worker with Redis down');

    const ready = await fetch(`http://127.0.0.1:${port}/readyz`);
    assert.equal(ready.status, 503, 'not ready while Redis is down');
  });

  it('roles in one process share FERRY_HEALTH_PORT: ready when all are, served until the last closes', async () => {
    redis = await startRedis();
    const port = await freePort();
    const cfg = config(redis.url, port);
    const lookup = await start(cfg, 'lookup');
    open.push(lookup);
    const upload = await start(cfg, 'upload'); // the same port: no EADDRINUSE
    open.push(upload);
    const base = `http://127.0.0.1:${port}`;
    assert.equal((await fetch(`${base}/readyz`)).status, 200);
    const text = await (await fetch(`${base}/metrics`)).text();
    assert.equal(text.match(/^# TYPE ferry_redis_up gauge$/gm)?.length, 1, 'one exposition');

    await lookup.close();
    assert.equal((await fetch(`${base}/metrics`)).status, 200, 'still served for upload');
    assert.equal((await fetch(`${base}/readyz`)).status, 200);
    await upload.close();
    await assert.rejects(fetch(`${base}/healthz`), 'closed with the last role');
  });
});
