import type { RedisConnection } from './connection';
import type { Keys } from './keys';

export interface IdempotencyResult {
  /** The push id the key stands for: the existing one, or the one just offered. */
  id: string;
  /** True when this call stored the mapping (the caller should create the push). */
  created: boolean;
  /** False when the key was first used with a different request fingerprint. */
  sameRequest: boolean;
}

/**
 * Maps an Idempotency-Key to a push id for ttlSeconds. The first caller's id
 * wins; later callers get it back with created: false. The fingerprint (e.g.
 * a hash of the request) tells a reused key with another body apart.
 */
export async function claimIdempotencyKey(
  redis: RedisConnection,
  keys: Keys,
  ttlSeconds: number,
  key: string,
  id: string,
  fingerprint = '',
): Promise<IdempotencyResult> {
  const k = keys.idempotency(key);
  for (;;) {
    const set = await redis.set(k, JSON.stringify({ id, fingerprint }), 'EX', ttlSeconds, 'NX');
    if (set === 'OK') return { id, created: true, sameRequest: true };
    const raw = await redis.get(k);
    if (raw === null) continue; // expired in between
    const stored = JSON.parse(raw) as { id: string; fingerprint: string };
    return { id: stored.id, created: false, sameRequest: stored.fingerprint === fingerprint };
  }
}
