import assert from 'node:assert/strict';
import { startRedis, type RedisHandle } from '../../../test/helpers/redis';
import { assertPromtoolClean, badValues, requirePromtool } from '../../../test/helpers/promtool';
import { AUTH, makeApi, makeSourceRoot, type TestApi } from './helpers';

/** Series names (without labels) in an exposition. */
function seriesNames(text: string): Set<string> {
  return new Set(
    text
      .split('\n')
      .filter((l) => l && !l.startsWith('#'))
      .map((l) => l.split(/[{\s]/)[0]!),
  );
}

const REDIS_BACKED = [
  'ferry_pushes_total',
  'ferry_blobs_total',
  'ferry_bytes_uploaded_total',
  'ferry_push_duration_seconds_count',
  'ferry_pushes',
  'ferry_queue_jobs',
];

describe('api /metrics: Redis up and down, promtool check metrics', function () {
  let redis: RedisHandle | undefined;
  let api: TestApi | undefined;

  before(function () {
    requirePromtool(this);
  });
  afterEach(async () => {
    await api?.close();
    await redis?.stop();
  });

  it('answers 200 with promtool-clean text while Redis is up, and after it stops: own metrics, ferry_redis_up 0, Redis-backed series left out', async () => {
    redis = await startRedis();
    const src = makeSourceRoot();
    api = await makeApi(redis.url, src.root);
    await api.store.metrics.inc('ferry_pushes_total', { status: 'succeeded' });
    await api.store.metrics.inc('ferry_blobs_total', { result: 'uploaded' }, 3);
    await api.store.metrics.inc('ferry_bytes_uploaded_total', {}, 4096);
    await api.store.metrics.observe('ferry_push_duration_seconds', 12.5);
    await api.store.metrics.observe('ferry_blob_upload_duration_seconds', 0.3);

    const up = await api.app.inject({ method: 'GET', url: '/metrics', headers: AUTH });
    assert.equal(up.statusCode, 200, up.body);
    assert.match(String(up.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    assert.match(up.body, /^ferry_redis_up 1$/m);
    assert.match(up.body, /^ferry_api_process_cpu_seconds_total /m);
    assert.match(up.body, /^ferry_api_nodejs_heap_size_used_bytes /m);
    for (const name of REDIS_BACKED) assert.ok(seriesNames(up.body).has(name), name);
    assert.deepEqual(badValues(up.body), [], 'no NaN or Inf values');
    await assertPromtoolClean(up.body, 'the API with Redis up');

    await redis.stop();
    const started = Date.now();
    const down = await api.app.inject({ method: 'GET', url: '/metrics', headers: AUTH });
    assert.equal(down.statusCode, 200, down.body);
    assert.ok(Date.now() - started < 5_000, 'answers within the read timeout');
    assert.match(down.body, /^ferry_redis_up 0$/m);
    assert.match(down.body, /^ferry_api_process_cpu_seconds_total /m);
    const names = seriesNames(down.body);
    for (const name of REDIS_BACKED) assert.ok(!names.has(name), `${name} left out`);
    assert.doesNotMatch(down.body, /^# (HELP|TYPE) ferry_(pushes|queue_jobs|blobs)/m);
    assert.deepEqual(badValues(down.body), [], 'no NaN or Inf values');
    await assertPromtoolClean(down.body, 'the API with Redis down');

    // Still a protected route while Redis is down.
    const noToken = await api.app.inject({ method: 'GET', url: '/metrics' });
    assert.equal(noToken.statusCode, 401);
  });

  it('a counter value that is not a number in Redis is left out, never NaN', async () => {
    redis = await startRedis();
    const src = makeSourceRoot();
    api = await makeApi(redis.url, src.root);
    await api.store.metrics.inc('ferry_blobs_total', { result: 'exists' }, 1);
    await api.conn.hset(
      api.store.keys.metrics(),
      JSON.stringify(['ferry_blobs_total', 'v', { result: 'mounted' }]),
      'nan',
    );
    const res = await api.app.inject({ method: 'GET', url: '/metrics', headers: AUTH });
    assert.equal(res.statusCode, 200);
    assert.match(res.body, /^ferry_blobs_total\{result="exists"\} 1$/m);
    assert.doesNotMatch(res.body, /result="mounted"/);
    assert.deepEqual(badValues(res.body), []);
    await assertPromtoolClean(res.body, 'the API with a bad value in Redis');
  });
});
