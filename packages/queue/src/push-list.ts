import type { RedisConnection } from './connection';
import type { Keys } from './keys';
import type { PushStatus, PushSummary } from './types';

/** The newest pushes first, optionally only those in one status. Drops index entries whose state expired. */
export async function listPushes(
  redis: RedisConnection,
  keys: Keys,
  ttlSeconds: number,
  opts: { status?: PushStatus; limit?: number } = {},
): Promise<PushSummary[]> {
  const limit = Math.max(1, Math.min(opts.limit ?? 50, 1000));
  const index = keys.index(opts.status ?? 'all');
  const cutoff = Date.now() - ttlSeconds * 1000;
  await redis.zremrangebyscore(index, '-inf', `(${cutoff}`);
  const ids = await redis.zrevrange(index, 0, limit - 1);
  if (ids.length === 0) return [];
  const pipe = redis.pipeline();
  for (const id of ids) {
    pipe.hmget(keys.push(id), 'status', 'source', 'target', 'createdAt', 'finishedAt');
  }
  const rows = (await pipe.exec()) ?? [];
  const out: PushSummary[] = [];
  const gone: string[] = [];
  rows.forEach(([err, row], i) => {
    const [status, source, target, createdAt, finishedAt] = (row ?? []) as (string | null)[];
    if (err || !status) {
      gone.push(ids[i]);
      return;
    }
    out.push({
      id: ids[i],
      status: status as PushStatus,
      source: source ?? '',
      target: target ?? '',
      createdAt: createdAt ?? '',
      ...(finishedAt ? { finishedAt } : {}),
    });
  });
  if (gone.length) await redis.zrem(index, ...gone);
  return out;
}
