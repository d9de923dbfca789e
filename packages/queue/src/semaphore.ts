import { randomUUID } from 'node:crypto';
import type { RedisConnection } from './connection';
import { startKeeper, type Keeper } from './keeper';
import { Keys } from './keys';
import { Script } from './script';

// KEYS: the semaphore's sorted set (member = holder id, score = lease expiry, ms on Redis' clock)
// ARGV: limit, leaseMs, holder
const ACQUIRE = new Script(
  'ferrySemaphoreAcquire',
  `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
`,
);

// KEYS: the sorted set. ARGV: limit, leaseMs, then new holders. Grants as many as the limit leaves
// free, in order; returns how many.
const ACQUIRE_MANY = new Script(
  'ferrySemaphoreAcquireMany',
  `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local free = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[1])
local n = 0
for i = 3, #ARGV do
  if n >= free then break end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i])
  n = n + 1
end
if n > 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2) end
return n
`,
);

// KEYS: the sorted set. ARGV: leaseMs, holder. 1 when still held (and extended), 0 when lost.
const RENEW = new Script(
  'ferrySemaphoreRenew',
  `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not score or tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
`,
);

// KEYS: the sorted set. Count of live holders.
const COUNT = new Script(
  'ferrySemaphoreCount',
  `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
`,
);

export interface SemaphoreOptions {
  /** FERRY_QUEUE_PREFIX */
  prefix: string;
  /** Names this semaphore family, e.g. 'lookup'. */
  name: string;
  /** Permits per key, e.g. FERRY_LOOKUP_CONCURRENCY. */
  limit: number;
  /** A permit not renewed within this time frees itself (its holder died). Default 30 s. */
  leaseMs?: number;
}

export interface AcquireOptions {
  /** Give up after this long (0 = one try). Default 60 s. */
  timeoutMs?: number;
  /** First delay between tries; grows to 8x with jitter. Default 25 ms. */
  pollMs?: number;
  signal?: AbortSignal;
  /** Holder id to acquire as (default: a fresh one). */
  holder?: string;
}

export interface Permit {
  readonly key: string;
  readonly holder: string;
  /** Extends the lease; false when it lapsed (another holder may have the slot now). */
  renew(): Promise<boolean>;
  /** Frees the slot. Idempotent. */
  release(): Promise<void>;
}

/**
 * The permit handed to a `use` callback: it may let the permit go while it
 * sleeps (between retries, through a Retry-After) and take it back after.
 */
export interface PermitControl {
  readonly key: string;
  readonly holder: string;
  /** True while the permit is held: acquired, not released, not lapsed. */
  readonly held: boolean;
  /**
   * Aborts when the current holding lapsed (a renewal failed, was refused, or
   * did not succeed within leaseMs); pass it to the registry call made under
   * the permit. Each reacquire starts a fresh signal: read it after reacquiring.
   * Releasing does not abort it.
   */
  readonly signal: AbortSignal;
  /** Frees the slot now (others may take it); the callback must reacquire before its next call. */
  release(): Promise<void>;
  /** Takes a slot again (no-op while held); throws SemaphoreTimeoutError when none comes in time. */
  reacquire(opts?: AcquireOptions): Promise<void>;
  /** release, wait ms (or until signal aborts), reacquire: a back-off that holds no permit. */
  pause(ms: number, signal?: AbortSignal): Promise<void>;
}

export class SemaphoreTimeoutError extends Error {
  readonly code = 'FERRY_SEMAPHORE_TIMEOUT';
  /** Waiting longer may succeed: a retry of the job tries again. */
  readonly transient = true;
  constructor(name: string, key: string, ms: number) {
    super(`no ${name} permit for ${key} within ${ms} ms`);
    this.name = 'SemaphoreTimeoutError';
  }
}

/**
 * A counting semaphore shared by every process on one Redis: at most `limit`
 * holders per key (e.g. per registry) at once. Each permit is a lease: a
 * holder that dies without releasing frees its slot after leaseMs. Expiry is
 * measured on Redis' clock, so machines' clocks need not agree.
 */
export class Semaphore {
  private readonly keys: Keys;
  readonly name: string;
  readonly limit: number;
  readonly leaseMs: number;

  constructor(
    private readonly redis: RedisConnection,
    opts: SemaphoreOptions,
  ) {
    if (!Number.isInteger(opts.limit) || opts.limit < 1)
      throw new Error(`semaphore limit must be >= 1, got ${opts.limit}`);
    if (!/^[A-Za-z0-9_-]+$/.test(opts.name))
      throw new Error(`bad semaphore name ${JSON.stringify(opts.name)}`);
    this.keys = new Keys(opts.prefix);
    this.name = opts.name;
    this.limit = opts.limit;
    this.leaseMs = opts.leaseMs ?? 30_000;
    if (!(this.leaseMs >= 10))
      throw new Error(`semaphore lease must be >= 10 ms, got ${this.leaseMs}`);
  }

  /** Callers of acquire() in this process sleeping between tries, by key: woken by a local release. */
  private readonly sleepers = new Map<string, Set<() => void>>();

  /** Local releases per key so far: a waiter that saw one since its try does not sleep. */
  private readonly releases = new Map<string, number>();

  /** Wakes this process's waiters for key at once (a slot just came free here). */
  private wake(key: string): void {
    this.releases.set(key, (this.releases.get(key) ?? 0) + 1);
    const set = this.sleepers.get(key);
    if (!set) return;
    this.sleepers.delete(key);
    for (const w of set) w();
  }

  /** Sleeps up to ms, or less when a permit of key is released in this process. */
  private sleep(key: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      let set = this.sleepers.get(key);
      if (!set) this.sleepers.set(key, (set = new Set()));
      const done = () => {
        clearTimeout(timer);
        set.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      set.add(done);
    });
  }

  /** A Permit handle for a holder id (no Redis call). */
  permit(key: string, holder: string): Permit {
    const k = this.keys.semaphore(this.name, key);
    let released = false;
    return {
      key,
      holder,
      renew: async () => (await RENEW.run(this.redis, [k], [this.leaseMs, holder])) === 1,
      release: async () => {
        if (released) return;
        released = true;
        await this.redis.zrem(k, holder);
        // Waiters in this process try again now rather than at their next poll; others poll.
        this.wake(key);
      },
    };
  }

  /** One attempt: a permit, or null when all `limit` are held. */
  async tryAcquire(key: string, holder: string = randomUUID()): Promise<Permit | null> {
    const ok = await ACQUIRE.run(
      this.redis,
      [this.keys.semaphore(this.name, key)],
      [this.limit, this.leaseMs, holder],
    );
    return ok === 1 ? this.permit(key, holder) : null;
  }

  /** As many of `holders` as there are free permits of key, in one call (none when all are held). */
  async tryAcquireMany(key: string, holders: string[]): Promise<Permit[]> {
    if (holders.length === 0) return [];
    const n = (await ACQUIRE_MANY.run(
      this.redis,
      [this.keys.semaphore(this.name, key)],
      [this.limit, this.leaseMs, ...holders],
    )) as number;
    return holders.slice(0, n).map((h) => this.permit(key, h));
  }

  /** Frees several permits of key in one call (their holders' ids) and wakes this process' waiters. */
  private async releaseMany(key: string, holders: string[]): Promise<void> {
    if (holders.length === 0) return;
    await this.redis.zrem(this.keys.semaphore(this.name, key), ...holders);
    this.wake(key);
  }

  /** Waits for a permit, polling with backoff; null on timeout or abort. */
  async acquire(key: string, opts: AcquireOptions = {}): Promise<Permit | null> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const base = opts.pollMs ?? 25;
    const deadline = Date.now() + timeoutMs;
    const holder = opts.holder ?? randomUUID();
    for (let attempt = 0; ; attempt++) {
      if (opts.signal?.aborted) return null;
      const seen = this.releases.get(key) ?? 0;
      const p = await this.tryAcquire(key, holder);
      if (p) return p;
      const left = deadline - Date.now();
      if (left <= 0) return null;
      // A slot came free here while we asked: ask again at once (the wake-up found no sleeper).
      if ((this.releases.get(key) ?? 0) !== seen) continue;
      const delay = Math.min(
        left,
        base * Math.min(8, 2 ** Math.min(attempt, 3)) * (0.5 + Math.random()),
      );
      await this.sleep(key, delay);
    }
  }

  /**
   * Runs fn holding a permit, renewing it every leaseMs/3 while fn runs, and
   * releases it after. fn gets a PermitControl to release the permit while it
   * sleeps and reacquire it after, and a signal that aborts when the permit
   * lapsed. Throws SemaphoreTimeoutError when no permit comes in time.
   */
  async use<T>(
    key: string,
    fn: (permit: PermitControl) => Promise<T>,
    opts: AcquireOptions = {},
  ): Promise<T> {
    const control = new HeldPermit(this, key, opts);
    await control.reacquire();
    try {
      return await fn(control);
    } finally {
      // Not awaited: the caller goes on at once (a permit whose release is lost expires).
      void control.release().catch(() => undefined);
    }
  }

  /**
   * Like `use`, for up to `want` holders at once: takes as many permits as
   * are free in one call (waiting as `use` does only when none is), runs fn
   * with one PermitControl each, and gives all back in one call after. Each
   * control is released, reacquired and lapses on its own as in `use`.
   *
   * fn's `more(n)` takes up to n of the permits not granted at the start, as
   * many as are free now, in one call without waiting (none when all are
   * held): a caller that started with fewer than it wanted grows when others
   * give theirs back. What it grants is held, renewed and given back with the rest.
   */
  async useMany<T>(
    key: string,
    want: number,
    fn: (permits: PermitControl[], more: (n: number) => Promise<PermitControl[]>) => Promise<T>,
    opts: AcquireOptions = {},
  ): Promise<T> {
    const controls = Array.from(
      { length: Math.min(Math.max(1, want), this.limit) },
      () => new HeldPermit(this, key, opts),
    );
    const granted = await this.tryAcquireMany(
      key,
      controls.map((c) => c.holder),
    );
    granted.forEach((p, i) => controls[i].adopt(p));
    if (granted.length === 0) await controls[0].reacquire();
    const held = controls.slice(0, Math.max(1, granted.length));
    const spare = controls.slice(held.length);
    let done = false;
    const more = async (n: number): Promise<PermitControl[]> => {
      const asked = spare.splice(0, Math.max(0, Math.min(n, spare.length)));
      if (asked.length === 0) return [];
      let got: Permit[] = [];
      try {
        got = await this.tryAcquireMany(
          key,
          asked.map((c) => c.holder),
        );
      } finally {
        // What was not granted may be asked for again.
        spare.unshift(...asked.slice(got.length));
      }
      if (done) {
        // fn has answered already (it did not wait for this call): give them straight back.
        void this.releaseMany(
          key,
          got.map((p) => p.holder),
        ).catch(() => undefined);
        return [];
      }
      const added = asked.slice(0, got.length);
      got.forEach((p, i) => added[i].adopt(p));
      held.push(...added);
      return added;
    };
    try {
      return await fn([...held], more);
    } finally {
      done = true;
      // Not awaited, as in use(): one call for them all.
      const holders = held.flatMap((c) => c.detach() ?? []);
      void this.releaseMany(key, holders).catch(() => undefined);
    }
  }

  /** How many permits of key are held now. */
  async count(key: string): Promise<number> {
    return (await COUNT.run(this.redis, [this.keys.semaphore(this.name, key)], [])) as number;
  }
}

/** The PermitControl of one `use` call: one holder id, held, released and reacquired. */
class HeldPermit implements PermitControl {
  readonly holder = randomUUID();
  private permit: Permit | null = null;
  private keeper: Keeper | null = null;
  private lastSignal: AbortSignal = new AbortController().signal;

  constructor(
    private readonly sem: Semaphore,
    readonly key: string,
    private readonly opts: AcquireOptions,
  ) {}

  get held(): boolean {
    return this.permit !== null && !this.keeper?.lost;
  }

  get signal(): AbortSignal {
    return this.keeper?.signal ?? this.lastSignal;
  }

  async reacquire(opts: AcquireOptions = this.opts): Promise<void> {
    if (this.held) return;
    this.stopKeeping();
    const permit = await this.sem.acquire(this.key, { ...opts, holder: this.holder });
    if (!permit) {
      throw new SemaphoreTimeoutError(this.sem.name, this.key, opts.timeoutMs ?? 60_000);
    }
    this.adopt(permit);
  }

  /** Holds a permit taken for this holder (renewed from now on). */
  adopt(permit: Permit): void {
    this.stopKeeping();
    this.permit = permit;
    this.keeper = startKeeper(() => permit.renew(), {
      intervalMs: this.sem.leaseMs / 3,
      ttlMs: this.sem.leaseMs,
      what: `${this.sem.name} permit for ${this.key}`,
      code: 'FERRY_PERMIT_LOST',
    });
  }

  async release(): Promise<void> {
    const permit = this.permit;
    this.stopKeeping();
    if (permit) await permit.release();
  }

  /** Stops keeping the permit without freeing it; its holder id when one was held (the caller frees it). */
  detach(): string | undefined {
    const had = this.permit !== null;
    this.stopKeeping();
    return had ? this.holder : undefined;
  }

  async pause(ms: number, signal?: AbortSignal): Promise<void> {
    await this.release();
    await sleep(ms, signal);
    await this.reacquire();
  }

  private stopKeeping(): void {
    if (this.keeper) {
      this.keeper.stop();
      this.lastSignal = this.keeper.signal;
    }
    this.keeper = null;
    this.permit = null;
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
