/**
 * Metrics in Redis: a histogram observation is one command, and /metrics
 * reads the same cumulative buckets, sum and count as with the older layout
 * (~14 commands per observation) — also from a hash both layouts wrote to.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { Keys, Metrics, METRIC_DEFS, type HistogramName, type Labels } from '@ferry/queue';
import { startRedis, type RedisHandle } from '../../../test/helpers/redis';

/** The older layout's observe, word for word in effect: cumulative 'b' buckets and a 'c' count. */
async function observeOldLayout(
  conn: Redis,
  prefix: string,
  name: HistogramName,
  value: number,
  labels: Labels = {},
): Promise<void> {
  const key = new Keys(prefix).metrics();
  const l = Object.fromEntries(Object.entries(labels).sort(([a], [b]) => a.localeCompare(b)));
  const multi = conn.multi();
  for (const le of METRIC_DEFS[name].buckets) {
    if (value <= le) multi.hincrby(key, JSON.stringify([name, 'b', l, String(le)]), 1);
  }
  multi.hincrby(key, JSON.stringify([name, 'b', l, '+Inf']), 1);
  multi.hincrbyfloat(key, JSON.stringify([name, 's', l]), value);
  multi.hincrby(key, JSON.stringify([name, 'c', l]), 1);
  await multi.exec();
}

/** Commands this connection sends from now on (each command of a MULTI counts). */
function countCommands(conn: Redis): { names: string[] } {
  const seen = { names: [] as string[] };
  const send = conn.sendCommand.bind(conn);
  conn.sendCommand = ((cmd: { name: string }, ...rest: unknown[]) => {
    seen.names.push(cmd.name);
    return (send as (...a: unknown[]) => unknown)(cmd, ...rest);
  }) as typeof conn.sendCommand;
  return seen;
}

/** A snapshot with each metric's values in a fixed order (HGETALL's order is Redis's business). */
async function sorted(m: Metrics): Promise<unknown> {
  return (await m.snapshot()).map((s) => ({
    ...s,
    values: [...s.values].sort((a, b) => (JSON.stringify(a) < JSON.stringify(b) ? -1 : 1)),
  }));
}

const OBSERVATIONS: [HistogramName, number, Labels?][] = [
  ['ferry_blob_upload_duration_seconds', 0.05],
  ['ferry_blob_upload_duration_seconds', 0.1], // exactly on a bound: le="0.1" counts it
  ['ferry_blob_upload_duration_seconds', 0.3],
  ['ferry_blob_upload_duration_seconds', 7],
  ['ferry_blob_upload_duration_seconds', 601], // above every bound: +Inf only
  ['ferry_blob_upload_duration_seconds', 2.5, { registry: 'b', repo: 'x' }],
  ['ferry_push_duration_seconds', 12.5],
  ['ferry_push_duration_seconds', 0],
  ['ferry_push_duration_seconds', 4000],
];

describe('@ferry/queue Metrics in Redis', function () {
  this.timeout(60_000);
  let redis: RedisHandle;
  let conn: Redis;

  before(async () => {
    redis = await startRedis();
    conn = new Redis(redis.url);
  });
  after(async () => {
    conn?.disconnect();
    await redis?.stop();
  });

  it('a histogram observation is one Redis command; a counter increment one', async () => {
    const m = new Metrics(conn, `{m${randomUUID().slice(0, 8)}}`);
    await m.observe('ferry_blob_upload_duration_seconds', 0.2); // loads the script
    const seen = countCommands(conn);
    await m.observe('ferry_blob_upload_duration_seconds', 0.3);
    await m.observe('ferry_push_duration_seconds', 42, { status: 'succeeded' });
    await m.inc('ferry_blobs_total', { result: 'uploaded' });
    assert.deepEqual(seen.names, ['evalsha', 'evalsha', 'hincrbyfloat']);
  });

  it('/metrics values are the same as with the older layout, value for value', async () => {
    const oldPrefix = `{o${randomUUID().slice(0, 8)}}`;
    const m = new Metrics(conn, `{n${randomUUID().slice(0, 8)}}`);
    for (const [name, v, labels] of OBSERVATIONS) {
      await observeOldLayout(conn, oldPrefix, name, v, labels);
      await m.observe(name, v, labels);
    }
    assert.deepEqual(await sorted(m), await sorted(new Metrics(conn, oldPrefix)));
    const old = await new Metrics(conn, oldPrefix).snapshot();
    // And it says what it should: cumulative, the bound included, +Inf = count.
    const h = old.find((s) => s.name === 'ferry_blob_upload_duration_seconds')!;
    const at = (le: string) =>
      h.values.find((v) => v.labels.le === le && v.labels.registry === undefined)?.value;
    assert.deepEqual(
      ['0.1', '0.5', '5', '15', '600', '+Inf'].map(at),
      [2, 3, 3, 4, 4, 5],
      JSON.stringify(h.values),
    );
  });

  it('a hash written by both layouts (a rolling upgrade) reads as if one layout had written it all', async () => {
    const prefix = `{r${randomUUID().slice(0, 8)}}`;
    const refPrefix = `{f${randomUUID().slice(0, 8)}}`;
    const m = new Metrics(conn, prefix);
    for (const [i, [name, v, labels]] of OBSERVATIONS.entries()) {
      // The hash gets each observation from either an older or a newer role.
      if (i % 2) await m.observe(name, v, labels);
      else await observeOldLayout(conn, prefix, name, v, labels);
      await observeOldLayout(conn, refPrefix, name, v, labels);
    }
    assert.deepEqual(await sorted(m), await sorted(new Metrics(conn, refPrefix)));
  });

  it('refuses a value that is not finite (nothing written)', async () => {
    const m = new Metrics(conn, `{x${randomUUID().slice(0, 8)}}`);
    await assert.rejects(m.observe('ferry_push_duration_seconds', NaN), /not a finite value/);
    await assert.rejects(m.observe('ferry_push_duration_seconds', Infinity), /not a finite value/);
    const h = (await m.snapshot()).find((s) => s.name === 'ferry_push_duration_seconds')!;
    assert.deepEqual(h.values, []);
  });
});
