/** Many small pushes through REST at once (the many-pushes and scaling benchmarks). */
import { Redis } from 'ioredis';
import { api, submit, type Endpoint, type StatusIndex } from './ferry-serve';

export async function pool<T>(
  items: T[],
  width: number,
  f: (x: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) await f(items[next++]!);
    }),
  );
}

/** Redis commands the harness's own completion polls cause (subtracted from the per-push count). */
export const pollCost = { polls: 0, rows: 0, zcards: 0 };

/**
 * Submits every source at once (`submits` requests in flight), pushing source i to
 * HOST/small:img<i>-<run>, and waits for all; seconds from the first submit to the
 * last push's finishedAt.
 *
 * Completion is watched by counting the stack's status indexes in Redis (ZCARD,
 * from this process): listing 1,000 pushes through the API every 200 ms would
 * cost the measured process ~5,000 HMGETs and a megabyte of JSON a second.
 * The API is asked once at the end, for the finishedAt of every push.
 */
export async function ferryMany(
  serve: Endpoint & { index: StatusIndex },
  sources: string[],
  host: string,
  run: number,
  submits: number,
): Promise<number> {
  const redis = new Redis(serve.index.redisUrl, { lazyConnect: false });
  const card = (status: string) => {
    pollCost.zcards += 1;
    return redis.zcard(`${serve.index.prefix}:pushes:${status}`);
  };
  try {
    const base = { ok: await card('succeeded'), failed: await card('failed') };
    const t0 = Date.now();
    const ids = new Set<string>();
    await pool([...sources.keys()], submits, async (i) => {
      ids.add(await submit(serve, sources[i]!, `${host}/small:img${i}-${run}`));
    });
    const submitted = Date.now();
    for (;;) {
      if ((await card('failed')) > base.failed) break;
      if ((await card('succeeded')) - base.ok >= ids.size) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const last = await finishedAt(serve, ids);
    process.stderr.write(
      `  submitted ${sources.length} in ${((submitted - t0) / 1000).toFixed(2)} s\n`,
    );
    return (last - t0) / 1000;
  } finally {
    redis.disconnect();
  }
}

/** The last finishedAt of these pushes (all succeeded), or an error naming a failed one. */
async function finishedAt(serve: Endpoint, ids: Set<string>): Promise<number> {
  let last = 0;
  for (;;) {
    const done = await api<{ pushes: { id: string; finishedAt?: string }[] }>(
      serve,
      'GET',
      `/v1/pushes?status=succeeded&limit=1000`,
    );
    pollCost.polls += 1;
    pollCost.rows += done.body.pushes.length;
    const mine = done.body.pushes.filter((p) => ids.has(p.id));
    if (mine.length === ids.size) {
      for (const p of mine) last = Math.max(last, Date.parse(p.finishedAt!));
      break;
    }
    const failed = await api<{ pushes: { id: string }[] }>(
      serve,
      'GET',
      `/v1/pushes?status=failed&limit=1000`,
    );
    pollCost.polls += 1;
    pollCost.rows += failed.body.pushes.length;
    const bad = failed.body.pushes.filter((p) => ids.has(p.id));
    if (bad.length) throw new Error(`${bad.length} pushes failed, e.g. ${bad[0]!.id}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return last;
}
