import {
  blockingDuplicate,
  isCluster,
  nodeFor,
  waitReady,
  type RedisConnection,
} from './connection';
import { keySlot } from './keys';
import type { PushEvent, StoredEvent } from './types';

const EVENT_ID = /^\d{1,20}(-\d{1,20})?$/;

/** True for a stream entry id usable as Last-Event-ID ("0" = from the start). */
export function isEventId(s: string): boolean {
  return EVENT_ID.test(s);
}

function assertEventId(s: string | undefined): void {
  if (s !== undefined && !isEventId(s)) throw new Error(`bad event id ${JSON.stringify(s)}`);
}

/** Orders stream ids ("ms-seq", or "ms" meaning "ms-0"). */
function compareIds(a: string, b: string): number {
  const [am, as = '0'] = a.split('-');
  const [bm, bs = '0'] = b.split('-');
  const d = BigInt(am) - BigInt(bm) || BigInt(as) - BigInt(bs);
  return d < 0n ? -1 : d > 0n ? 1 : 0;
}

export function parseEntry([id, fields]: [string, string[]]): StoredEvent | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (fields[i] === 'e') {
      try {
        return { id, event: JSON.parse(fields[i + 1]) as PushEvent };
      } catch {
        return undefined;
      }
    }
  }
  return undefined;
}

function parseEntries(entries: [string, string[]][]): StoredEvent[] {
  return entries.map(parseEntry).filter((e): e is StoredEvent => e !== undefined);
}

interface Waiter {
  owner?: object;
  key: string;
  after: string;
  count: number;
  timer: NodeJS.Timeout;
  settle(events: StoredEvent[] | Error): void;
}

export interface EventHubOptions {
  /** Longest single XREAD BLOCK; new followers also wake it at once. Default 10 s. */
  maxBlockMs?: number;
  /** Close the blocking connection after this long without followers. Default 10 s. */
  idleMs?: number;
}

/**
 * Followers of many event streams on ONE blocking connection: each round is a
 * single `XREAD BLOCK … STREAMS k1 k2 … id1 id2 …` over every stream someone
 * waits on, and the entries are fanned out to the waiting readers. A new
 * follower interrupts the blocked read (CLIENT UNBLOCK, sent on the shared
 * connection) so its stream joins the next round. Thousands of SSE followers
 * thus cost one Redis connection, not one each.
 *
 * On a Redis Cluster one XREAD may only name keys of one hash slot: every
 * stream the hub follows must share its hash tag (Ferry's keys all carry the
 * queue prefix's `{…}`), and a key of another slot is refused. CLIENT ID and
 * CLIENT UNBLOCK, which name no key, are sent to the master of that slot.
 */
export class EventHub {
  private conn: RedisConnection | null = null;
  /** Cluster only: the one hash slot of every stream followed. */
  private slot: number | null = null;
  private connId: number | null = null;
  private readonly waiters = new Set<Waiter>();
  private running = false;
  private blockedRound: number | null = null;
  private round = 0;
  private wakeScheduled = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly maxBlockMs: number;
  private readonly idleMs: number;

  constructor(
    private readonly redis: RedisConnection,
    opts: EventHubOptions = {},
  ) {
    this.maxBlockMs = opts.maxBlockMs ?? 10_000;
    this.idleMs = opts.idleMs ?? 10_000;
  }

  /** A follower of one stream (cheap: no connection of its own). */
  reader(key: string): EventReader {
    return new EventReader(this, key);
  }

  /** Entries of `key` after `after` (exclusive; undefined = from the start), waiting up to blockMs for some. */
  async read(
    key: string,
    after: string | undefined,
    blockMs: number,
    count: number,
    owner?: object,
  ): Promise<StoredEvent[]> {
    assertEventId(after);
    this.checkSlot(key);
    if (this.closed) return [];
    if (!(blockMs > 0)) {
      const res = await this.redis.xread('COUNT', count, 'STREAMS', key, after ?? '0');
      return res ? parseEntries(res[0][1]) : [];
    }
    return new Promise<StoredEvent[]>((resolve, reject) => {
      const waiter: Waiter = {
        owner,
        key,
        after: after ?? '0',
        count,
        timer: setTimeout(() => waiter.settle([]), blockMs),
        settle: (r) => {
          if (!this.waiters.delete(waiter)) return;
          clearTimeout(waiter.timer);
          if (r instanceof Error) reject(r);
          else resolve(r);
        },
      };
      this.waiters.add(waiter);
      this.wake();
    });
  }

  /** On a Cluster, refuses a stream outside the slot of those followed before (one XREAD, one slot). */
  private checkSlot(key: string): void {
    if (!isCluster(this.redis)) return;
    const slot = keySlot(key);
    this.slot ??= slot;
    if (slot !== this.slot) {
      throw new Error(
        `event stream ${JSON.stringify(key)} is in hash slot ${slot}, not ${this.slot}: ` +
          'every followed stream needs the same {hash tag} on a Redis Cluster',
      );
    }
  }

  /** Ends every wait (with no events) and closes the blocking connection. */
  close(): void {
    this.closed = true;
    clearTimeout(this.idleTimer);
    for (const w of [...this.waiters]) w.settle([]);
    this.conn?.disconnect();
    this.conn = null;
  }

  /** Ends the pending waits of one owner (they get no events). */
  cancel(owner: object): void {
    for (const w of [...this.waiters]) if (w.owner === owner) w.settle([]);
  }

  private wake(): void {
    clearTimeout(this.idleTimer);
    if (!this.running) {
      void this.loop();
      return;
    }
    if (this.wakeScheduled) return;
    this.wakeScheduled = true;
    setImmediate(() => {
      this.wakeScheduled = false;
      void this.unblock();
    });
  }

  /** Interrupts the blocked XREAD so the next round includes new followers. */
  private async unblock(): Promise<void> {
    const round = this.blockedRound;
    for (
      let attempt = 0;
      attempt < 50 && round !== null && this.blockedRound === round;
      attempt++
    ) {
      // 0 = the read had not reached Redis yet (it travels on another connection): try again.
      const id = this.connId;
      const node = nodeFor(this.redis, this.slot ?? 0);
      const n = id === null || !node ? 0 : await node.client('UNBLOCK', id).catch(() => 0);
      if (n === 1) return;
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  private connection(): RedisConnection {
    // Waits through reconnects instead of failing a blocked read.
    this.conn ??= blockingDuplicate(this.redis);
    return this.conn;
  }

  private async loop(): Promise<void> {
    this.running = true;
    try {
      while (!this.closed && this.waiters.size > 0) {
        await this.readRound();
        // Let readers that just got events ask again before the next round is built.
        await new Promise((r) => setImmediate(r));
      }
    } finally {
      this.running = false;
      if (!this.closed && this.waiters.size > 0) this.wake();
      else if (!this.closed) this.scheduleIdleClose();
    }
  }

  private async readRound(): Promise<void> {
    const conn = this.connection();
    let node: RedisConnection | undefined = conn;
    if (isCluster(conn)) {
      // CLIENT ID must go to the node the XREAD will block on: wait for the slot table.
      try {
        await waitReady(conn, this.maxBlockMs);
        node = nodeFor(conn, this.slot ?? 0);
      } catch {
        node = undefined;
      }
      if (this.closed) return;
    }
    const from = new Map<string, string>();
    let count = 1;
    for (const w of this.waiters) {
      const cur = from.get(w.key);
      if (cur === undefined || compareIds(w.after, cur) < 0) from.set(w.key, w.after);
      count = Math.max(count, w.count);
    }
    if (from.size === 0) return;
    const round = ++this.round;
    // Sent before the XREAD on the same node connection, so it is answered before the read blocks.
    const idReply = node ? node.client('ID') : Promise.resolve(null);
    const read = conn.xread(
      'COUNT',
      count,
      'BLOCK',
      this.maxBlockMs,
      'STREAMS',
      ...from.keys(),
      ...from.values(),
    );
    this.blockedRound = round;
    let res: [string, [string, string[]][]][] | null;
    try {
      const id = await idReply;
      this.connId = id === null ? null : Number(id);
      res = await read;
    } catch (err) {
      this.blockedRound = null;
      if (this.closed) return;
      const batch = [...this.waiters].filter((w) => from.has(w.key));
      for (const w of batch) w.settle(err as Error);
      await new Promise((r) => setTimeout(r, 100));
      return;
    }
    this.blockedRound = null;
    for (const [key, entries] of res ?? []) this.deliver(key, entries);
  }

  private deliver(key: string, entries: [string, string[]][]): void {
    for (const w of [...this.waiters]) {
      if (w.key !== key) continue;
      const mine = entries.filter(([id]) => compareIds(id, w.after) > 0).slice(0, w.count);
      if (mine.length > 0) w.settle(parseEntries(mine));
    }
  }

  private scheduleIdleClose(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.running || this.waiters.size > 0) return;
      this.conn?.disconnect();
      this.conn = null;
    }, this.idleMs);
    this.idleTimer.unref();
  }
}

/** One follower of one push's events; shares its EventHub's connection with every other follower. */
export class EventReader {
  private closed = false;

  constructor(
    private readonly hub: EventHub,
    private readonly key: string,
  ) {}

  /** Events after afterId, waiting up to blockMs (0 = do not wait) when there are none yet. */
  async read(afterId: string | undefined, blockMs: number, count = 1000): Promise<StoredEvent[]> {
    if (this.closed) return [];
    return this.hub.read(this.key, afterId, blockMs, count, this);
  }

  /** Ends a pending read (it resolves with no events); later reads return none. */
  close(): void {
    this.closed = true;
    this.hub.cancel(this);
  }
}
