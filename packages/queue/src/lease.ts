import type { RedisConnection } from './connection';
import { startKeeper, type Keeper } from './keeper';
import { Keys } from './keys';
import { Script } from './script';

// KEYS: lease hash, token counter. ARGV: owner, ttlMs, counterTtlSeconds
// Returns the fencing token (a fresh, larger one for each new holder; the same for the current owner).
const ACQUIRE = new Script(
  'ferryLeaseAcquire',
  `
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
`,
);

/** Lua: true when KEYS[1] (a lease hash) is held by ARGV[1] with token ARGV[2]. Shared by scripts that commit under a lease. */
export const LEASE_HELD_LUA = `
local function leaseHeld(key, owner, token)
  return redis.call('HGET', key, 'owner') == owner and redis.call('HGET', key, 'token') == token
end
`;

// KEYS: lease hash. ARGV: owner, token, ttlMs. 1 when still ours (extended).
const RENEW = new Script(
  'ferryLeaseRenew',
  `${LEASE_HELD_LUA}
if leaseHeld(KEYS[1], ARGV[1], ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
`,
);

// KEYS: lease hash. ARGV: owner, token. 1 when released, 0 when it was not ours any more.
const RELEASE = new Script(
  'ferryLeaseRelease',
  `${LEASE_HELD_LUA}
if leaseHeld(KEYS[1], ARGV[1], ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`,
);

// KEYS: lease hash, then the keys the writes touch. ARGV: owner, token, then one
// command per write: argc, then each word tagged 'k<KEYS index>' or 'v<value>'.
// Runs the writes only while the lease is held.
const COMMIT = new Script(
  'ferryLeaseCommit',
  `${LEASE_HELD_LUA}
if not leaseHeld(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local cmd = {}
  for j = 1, n do
    local a = ARGV[i + j]
    if string.sub(a, 1, 1) == 'k' then cmd[j] = KEYS[tonumber(string.sub(a, 2))]
    else cmd[j] = string.sub(a, 2) end
  end
  redis.call(unpack(cmd))
  i = i + n + 1
end
return 1
`,
);

/** One Redis write made by Lease.commit: a command name and its arguments. */
export interface LeaseWrite {
  /** Keys the command touches, in order; refer to them in args as `{ key: i }` (0-based). */
  keys: string[];
  /** The command and its words, e.g. ['SET', { key: 0 }, value, 'EX', 60] */
  command: readonly (string | number | { key: number })[];
}

export interface LeaseHolder {
  owner: string;
  token: number;
  /** Milliseconds left. */
  ttlMs: number;
}

/** Identifies one holding of a lease: what conditional writes are fenced by. */
export interface LeaseRef {
  key: string;
  owner: string;
  token: number;
}

export interface LeaseOptions {
  /** FERRY_QUEUE_PREFIX */
  prefix: string;
  /** How long the token counter of an idle key is kept (tokens only grow while it exists). Default 30 days. */
  counterTtlSeconds?: number;
}

export interface KeepOptions {
  /** Called once when the lease is lost (renewal refused, failed, or not answered within ttlMs). */
  onLost?: (err: Error) => void;
}

/**
 * An exclusive, expiring lease per key (e.g. `<registry>/<digest>`: one upload
 * of a blob to a registry at a time across the cluster), with a fencing token
 * that grows with every new holder. Work done under an older token is stale:
 * `check` right before an irreversible step (the final PUT), and make the
 * writes that publish its result with `commit` (or BlobIndex.recordUpload),
 * which checks the token inside the same script. A holder that dies loses the
 * lease after ttlMs and another may take it over; `keep` renews it and says
 * when it was lost.
 */
export class Lease {
  readonly keys: Keys;
  private readonly counterTtl: number;

  constructor(
    private readonly redis: RedisConnection,
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
    const r = await RENEW.run(
      this.redis,
      [this.keys.lease(key)],
      [ownerId, token, Math.ceil(ttlMs)],
    );
    return r === 1;
  }

  /** Releases only if ownerId still holds it with this token. */
  async release(key: string, ownerId: string, token: number): Promise<boolean> {
    return (await RELEASE.run(this.redis, [this.keys.lease(key)], [ownerId, token])) === 1;
  }

  /** True when ownerId holds the lease with this token now: the check right before a final PUT. */
  async check(key: string, ownerId: string, token: number): Promise<boolean> {
    const [owner, t] = await this.redis.hmget(this.keys.lease(key), 'owner', 'token');
    return owner === ownerId && t === String(token);
  }

  /**
   * Makes `writes` atomically, only while ownerId holds the lease with this
   * token (checked inside the same Lua script: no check-then-write race).
   * False, and nothing written, when the lease was lost.
   */
  async commit(
    key: string,
    ownerId: string,
    token: number,
    writes: LeaseWrite[],
  ): Promise<boolean> {
    const keys = [this.keys.lease(key)];
    const args: (string | number)[] = [ownerId, token];
    for (const w of writes) {
      const base = keys.length + 1; // KEYS is 1-based in Lua
      keys.push(...w.keys);
      args.push(w.command.length);
      for (const a of w.command) {
        args.push(typeof a === 'object' ? `k${base + a.key}` : `v${a}`);
      }
    }
    return (await COMMIT.run(this.redis, keys, args)) === 1;
  }

  /**
   * Renews the lease every ttlMs/3 until stopped. A renewal that fails, is
   * refused, or does not succeed within ttlMs marks the keeper lost, aborts
   * its signal (reason: a LostError) and calls onLost.
   */
  keep(key: string, ownerId: string, token: number, ttlMs: number, opts: KeepOptions = {}): Keeper {
    if (!(ttlMs >= 3)) throw new Error(`lease ttl must be >= 3 ms, got ${ttlMs}`);
    return startKeeper(() => this.renew(key, ownerId, token, ttlMs), {
      intervalMs: ttlMs / 3,
      ttlMs,
      what: `lease ${key}`,
      onLost: opts.onLost,
    });
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

  /** True when token is the token of the lease's current holder (prefer check, which also names the owner). */
  async isCurrent(key: string, token: number): Promise<boolean> {
    return (await this.redis.hget(this.keys.lease(key), 'token')) === String(token);
  }
}
