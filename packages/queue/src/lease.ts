import type { Redis } from 'ioredis';
import { Keys } from './keys';
import { Script } from './script';

// KEYS: lease hash, token counter. ARGV: owner, ttlMs, counterTtlSeconds
// Returns the fencing token (a fresh, larger one for each new holder; the same for the current owner).
const ACQUIRE = new Script(`
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return false end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('HGET', KEYS[1], 'token'))
end
local token = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return token
`);

// KEYS: lease hash. ARGV: owner, token, ttlMs. 1 when still ours (extended).
const RENEW = new Script(`
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'token') == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
`);

// KEYS: lease hash. ARGV: owner, token. 1 when released, 0 when it was not ours any more.
const RELEASE = new Script(`
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'token') == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`);

export interface LeaseHolder {
  owner: string;
  token: number;
  /** Milliseconds left. */
  ttlMs: number;
}

export interface LeaseOptions {
  /** FERRY_QUEUE_PREFIX */
  prefix: string;
  /** How long the token counter of an idle key is kept (tokens only grow while it exists). Default 30 days. */
  counterTtlSeconds?: number;
}

/**
 * An exclusive, expiring lease per key (e.g. `<registry>/<digest>`: one upload
 * of a blob to a registry at a time across the cluster), with a fencing token
 * that grows with every new holder: work done under an older token can be
 * recognised as stale (check isCurrent before committing). A holder that dies
 * loses the lease after ttlMs and another may take it over.
 */
export class Lease {
  private readonly keys: Keys;
  private readonly counterTtl: number;

  constructor(
    private readonly redis: Redis,
    opts: LeaseOptions,
  ) {
    this.keys = new Keys(opts.prefix);
    this.counterTtl = opts.counterTtlSeconds ?? 30 * 24 * 3600;
  }

  /** The fencing token when ownerId now holds the lease (new or already held), or null when someone else does. */
  async acquire(key: string, ownerId: string, ttlMs: number): Promise<number | null> {
    if (!(ttlMs >= 1)) throw new Error(`lease ttl must be >= 1 ms, got ${ttlMs}`);
    const r = await ACQUIRE.run(
      this.redis,
      [this.keys.lease(key), this.keys.leaseToken(key)],
      [ownerId, Math.ceil(ttlMs), this.counterTtl],
    );
    return r === null ? null : Number(r);
  }

  /** Extends the lease; false when it is no longer ownerId's with this token. */
  async renew(key: string, ownerId: string, token: number, ttlMs: number): Promise<boolean> {
    return (
      (await RENEW.run(this.redis, [this.keys.lease(key)], [ownerId, token, Math.ceil(ttlMs)])) ===
      1
    );
  }

  /** Releases only if ownerId still holds it with this token. */
  async release(key: string, ownerId: string, token: number): Promise<boolean> {
    return (await RELEASE.run(this.redis, [this.keys.lease(key)], [ownerId, token])) === 1;
  }

  /** The current holder, or null when free. */
  async holder(key: string): Promise<LeaseHolder | null> {
    const k = this.keys.lease(key);
    const [[, fields], [, ttl]] = (await this.redis.multi().hgetall(k).pttl(k).exec()) as [
      [unknown, Record<string, string>],
      [unknown, number],
    ];
    if (!fields.owner) return null;
    return { owner: fields.owner, token: Number(fields.token), ttlMs: ttl };
  }

  /** True when token is the token of the lease's current holder. */
  async isCurrent(key: string, token: number): Promise<boolean> {
    return (await this.redis.hget(this.keys.lease(key), 'token')) === String(token);
  }
}
