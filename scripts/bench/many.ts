/** Many small pushes through REST at once (the many-pushes and scaling benchmarks). */
import { api, submit, type Endpoint } from './ferry-serve';

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
export const pollCost = { polls: 0, rows: 0 };

/**
 * Submits every source at once (`submits` requests in flight), pushing source i to
 * HOST/small:img<i>-<run>, and waits for all; seconds from the first submit to the
 * last push's finishedAt.
 */
export async function ferryMany(
  serve: Endpoint,
  sources: string[],
  host: string,
  run: number,
  submits: number,
): Promise<number> {
  const t0 = Date.now();
  const ids = new Set<string>();
  await pool([...sources.keys()], submits, async (i) => {
    ids.add(await submit(serve, sources[i]!, `${host}/small:img${i}-${run}`));
  });
  const submitted = Date.now();
  // Completion from the status index (one request per poll, however many pushes).
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
  process.stderr.write(
    `  submitted ${sources.length} in ${((submitted - t0) / 1000).toFixed(2)} s\n`,
  );
  return (last - t0) / 1000;
}
