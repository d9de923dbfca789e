import type { RedisConnection } from './connection';
import { EventHub, EventReader, isEventId, parseEntry } from './event-hub';
import { claimIdempotencyKey, type IdempotencyResult } from './idempotency';
import { Keys } from './keys';
import { Metrics } from './metrics';
import { listPushes } from './push-list';
import {
  APPEND,
  BUDGET,
  CREATE,
  LAYER_ATTRS,
  LAYER_UPDATE,
  PROGRESS,
  TRANSITION,
} from './push-scripts';
import { createFields, layerFields, layerPrefix, layoutToLayers, parseState } from './push-state';
import { assertPushId } from './queues';
import {
  PUSH_STATUSES,
  type LayerKey,
  type LayerPatch,
  type LayerState,
  type PushError,
  type PushEvent,
  type PushLayout,
  type PushRequest,
  type PushResult,
  type TargetResult,
  type PushState,
  type PushStatus,
  type PushSummary,
  type SourcePin,
  type StoredEvent,
} from './types';

export { EventReader, isEventId } from './event-hub';
export { layoutToLayers } from './push-state';
export type { IdempotencyResult } from './idempotency';

// The push's Redis layout and its Lua scripts: push-scripts.ts. Field encoding: push-state.ts.
// Followers of events: event-hub.ts. Listing: push-list.ts. Idempotency keys: idempotency.ts.

export interface PushStoreOptions {
  /** FERRY_QUEUE_PREFIX */
  prefix: string;
  /** FERRY_STATE_TTL, seconds. */
  ttlSeconds: number;
  /** Defaults to a Metrics on the same connection and prefix. */
  metrics?: Metrics;
}

export interface CreatePushOptions {
  /** Initialises every layer as pending. */
  layout?: PushLayout;
}

/** Where a push stands with its retry budget (measured on Redis' clock). */
export interface BudgetReading {
  /** ms since the push's last progress (bytes accepted, a job finished). */
  idleMs: number;
  /** The last transient failure recorded, if any. */
  lastCause?: PushError;
}

export interface TransitionResult {
  /** True when the status changed (or was set again where allowed). */
  ok: boolean;
  /** The status before the call; undefined when the push does not exist. */
  previous?: PushStatus;
  /** Stream id of the event the transition appended. */
  eventId?: string;
}

/** A push's state and events in Redis; shared by the API (reads, create, cancel) and the workers (updates). */
export class PushStore {
  readonly keys: Keys;
  readonly ttlSeconds: number;
  readonly metrics: Metrics;
  private readonly hub: EventHub;

  constructor(
    readonly redis: RedisConnection,
    opts: PushStoreOptions,
  ) {
    this.keys = new Keys(opts.prefix);
    if (!Number.isInteger(opts.ttlSeconds) || opts.ttlSeconds < 1) {
      throw new Error(`state TTL must be a positive integer of seconds, got ${opts.ttlSeconds}`);
    }
    this.ttlSeconds = opts.ttlSeconds;
    this.metrics = opts.metrics ?? new Metrics(redis, opts.prefix);
    this.hub = new EventHub(redis);
  }

  private indexKeys(): string[] {
    return PUSH_STATUSES.map((s) => this.keys.index(s));
  }

  /** Creates a queued push (appending a `status: queued` event). False when the id exists already. */
  async create(id: string, request: PushRequest, opts: CreatePushOptions = {}): Promise<boolean> {
    assertPushId(id);
    const now = new Date();
    const fields = createFields(id, request, now, opts.layout);
    const event: PushEvent = { type: 'status', status: 'queued', at: now.toISOString() };
    const r = await CREATE.run(
      this.redis,
      [this.keys.push(id), this.keys.events(id), this.keys.index('queued'), this.keys.index('all')],
      [this.ttlSeconds, now.getTime(), JSON.stringify(event), id, ...fields],
    );
    return r === 1;
  }

  /** The whole state of a push, or undefined when unknown or expired. */
  async get(id: string): Promise<PushState | undefined> {
    if (!/^[A-Za-z0-9_-]{1,100}$/.test(id)) return undefined;
    const raw = await this.redis.hgetall(this.keys.push(id));
    if (!raw.status) return undefined;
    return parseState(raw);
  }

  /** The newest pushes first, optionally only those in one status. Drops index entries whose state expired. */
  async list(opts: { status?: PushStatus; limit?: number } = {}): Promise<PushSummary[]> {
    return listPushes(this.redis, this.keys, this.ttlSeconds, opts);
  }

  private async transition(
    id: string,
    from: readonly PushStatus[],
    to: PushStatus,
    event: PushEvent | undefined,
    fields: Record<string, string>,
  ): Promise<TransitionResult> {
    assertPushId(id);
    const args: (string | number)[] = [
      this.ttlSeconds,
      from.join(','),
      to,
      event ? JSON.stringify(event) : '',
      id,
    ];
    for (const [k, v] of Object.entries(fields)) args.push(k, v);
    const [code, previous, eventId] = (await TRANSITION.run(
      this.redis,
      [this.keys.push(id), this.keys.events(id), ...this.indexKeys()],
      args,
    )) as [number, string, string];
    return {
      ok: code === 1,
      previous: code === -1 ? undefined : (previous as PushStatus),
      eventId: eventId || undefined,
    };
  }

  /**
   * Sets a non-final status: 'running' (from queued; records startedAt) or
   * 'queued'. A final push is never reopened (ok: false). Appends a status
   * event only when the status changes: safe to call from every job.
   */
  async setStatus(id: string, status: 'queued' | 'running'): Promise<TransitionResult> {
    // One round trip even for the first job of a push (no read first: its lookup is often the only one).
    const at = new Date().toISOString();
    // The script changes nothing (and appends no event) when the status is already
    // `status`, so of several workers racing here exactly one records startedAt and the event.
    const fields: Record<string, string> = status === 'running' ? { startedAt: at } : {};
    return this.transition(
      id,
      ['queued', 'running'],
      status,
      { type: 'status', status, at },
      fields,
    );
  }

  /**
   * Ends a push: succeeded with its result, or failed with an error. Appends
   * the final status event (after which SSE streams end) and counts it in the
   * metrics. ok: false when the push was final already (e.g. cancelled).
   */
  async finish(
    id: string,
    outcome: PushResult | { error: PushError; targets?: TargetResult[] },
  ): Promise<TransitionResult> {
    const at = new Date().toISOString();
    const fields: Record<string, string> = { finishedAt: at };
    if (outcome.targets) fields.targets = JSON.stringify(outcome.targets);
    let event: PushEvent;
    let status: PushStatus;
    if ('error' in outcome) {
      status = 'failed';
      const error = { code: outcome.error.code, message: outcome.error.message };
      fields.error = JSON.stringify(error);
      event = {
        type: 'status',
        status,
        error,
        ...(outcome.targets ? { targets: outcome.targets } : {}),
        at,
      };
    } else {
      status = 'succeeded';
      fields.manifest = JSON.stringify(outcome.manifest);
      if (outcome.manifests) fields.manifests = JSON.stringify(outcome.manifests);
      if (outcome.signatures) fields.signatures = JSON.stringify(outcome.signatures);
      event = {
        type: 'status',
        status,
        manifest: outcome.manifest,
        ...(outcome.manifests ? { manifests: outcome.manifests } : {}),
        ...(outcome.targets ? { targets: outcome.targets } : {}),
        at,
      };
    }
    const r = await this.transition(id, ['queued', 'running'], status, event, fields);
    if (r.ok) await this.countFinished(id, status);
    return r;
  }

  /** Marks a queued or running push cancelled (final event included). ok: false when already final or unknown. */
  async cancel(id: string): Promise<TransitionResult> {
    const at = new Date().toISOString();
    const error = { code: 'FERRY_CANCELLED', message: 'the push was cancelled' };
    const r = await this.transition(
      id,
      ['queued', 'running'],
      'cancelled',
      { type: 'status', status: 'cancelled', error, at },
      { finishedAt: at, error: JSON.stringify(error) },
    );
    if (r.ok) await this.countFinished(id, 'cancelled');
    return r;
  }

  private async countFinished(id: string, status: PushStatus): Promise<void> {
    try {
      const created = Number(await this.redis.hget(this.keys.push(id), 'createdMs'));
      await this.metrics.inc('ferry_pushes_total', { status });
      if (created > 0) {
        await this.metrics.observe('ferry_push_duration_seconds', (Date.now() - created) / 1000);
      }
    } catch {
      // metrics are best effort: the push state is what counts
    }
  }

  /** True when the push was cancelled — or its state is gone (expired, never existed): stop working on it. */
  async isCancelled(id: string): Promise<boolean> {
    const status = await this.redis.hget(this.keys.push(id), 'status');
    return status === null || status === 'cancelled';
  }

  /** The status alone (cheap), or undefined. */
  async status(id: string): Promise<PushStatus | undefined> {
    return (
      ((await this.redis.hget(this.keys.push(id), 'status')) as PushStatus | null) ?? undefined
    );
  }

  /**
   * A docker:// push's `resolve` job pinned the source (in a worker: the API
   * holds no registry credentials): the pin goes into the recorded request, so
   * every later reader (the coordinator, GET, a retried job) sees the same
   * digest, and the layout's layers are set pending. Only the resolve job
   * writes here, and it writes the same pin when it runs again.
   */
  async recordPin(id: string, pin: SourcePin, layout: PushLayout): Promise<void> {
    assertPushId(id);
    const key = this.keys.push(id);
    const raw = await this.redis.hget(key, 'request');
    if (raw === null) throw new Error(`push ${id} is unknown`);
    const request = { ...(JSON.parse(raw) as PushRequest), pin };
    const multi = this.redis.multi();
    multi.hset(key, 'request', JSON.stringify(request), 'layout', JSON.stringify(layout));
    const fields = layerFields(layoutToLayers(layout));
    if (fields.length) multi.hset(key, ...fields);
    multi.expire(key, this.ttlSeconds);
    await multi.exec();
  }

  /**
   * Sets the layer list (every layer's state as given, e.g. all pending from a
   * layout). Layers not named keep their fields. No event.
   */
  async setLayers(id: string, layers: LayerState[] | PushLayout): Promise<void> {
    assertPushId(id);
    const list = Array.isArray(layers) ? layers : layoutToLayers(layers);
    const key = this.keys.push(id);
    const multi = this.redis.multi();
    if (!Array.isArray(layers)) multi.hset(key, 'layout', JSON.stringify(layers));
    const fields = layerFields(list);
    if (fields.length) multi.hset(key, ...fields);
    multi.expire(key, this.ttlSeconds);
    await multi.exec();
  }

  /**
   * Updates some attributes of one layer atomically (one HSET per attribute —
   * no read-modify-write) and appends a `layer` event carrying the layer's
   * whole state after the update (unless opts.event is false). Returns the
   * event id, '' without an event, or undefined when the push is unknown.
   * Throttle bytesSent updates (e.g. every few MB or 500 ms). `addBytesSent`
   * adds to the layer's bytesSent instead (every attempt's bytes, on any worker).
   */
  async updateLayer(
    id: string,
    key: LayerKey,
    patch: LayerPatch,
    opts: { event?: boolean; addBytesSent?: number } = {},
  ): Promise<string | undefined> {
    const r = await this.updateLayers(id, [{ key, patch, addBytesSent: opts.addBytesSent }], opts);
    return r?.[0];
  }

  /**
   * updateLayer for several layers in one Redis call (one script, each layer's
   * event in order). Returns the event ids, or undefined when the push is unknown.
   */
  async updateLayers(
    id: string,
    updates: { key: LayerKey; patch: LayerPatch; addBytesSent?: number }[],
    opts: { event?: boolean } = {},
  ): Promise<string[] | undefined> {
    assertPushId(id);
    if (updates.length === 0) return [];
    const args: (string | number)[] = [
      this.ttlSeconds,
      opts.event === false ? '0' : '1',
      new Date().toISOString(),
    ];
    for (const { key, patch, addBytesSent } of updates) {
      const pairs: string[] = [];
      for (const a of LAYER_ATTRS) {
        if (patch[a] !== undefined) pairs.push(a, JSON.stringify(patch[a]));
      }
      if (addBytesSent !== undefined) {
        if (!Number.isSafeInteger(addBytesSent) || addBytesSent < 0) {
          throw new Error(`addBytesSent must be a non-negative integer, got ${addBytesSent}`);
        }
        if (patch.bytesSent !== undefined) throw new Error('bytesSent and addBytesSent together');
        pairs.push('+bytesSent', String(addBytesSent));
      }
      args.push(layerPrefix(key), key.imageIndex, key.index, pairs.length / 2, ...pairs);
    }
    const r = await LAYER_UPDATE.run(this.redis, [this.keys.push(id), this.keys.events(id)], args);
    return r === null ? undefined : (r as string[]);
  }

  /**
   * Records progress of the push (bytes the registry accepted, a job
   * finished): its retry budget counts again from now (Redis' clock).
   * False for an unknown push.
   */
  async touchProgress(id: string): Promise<boolean> {
    assertPushId(id);
    return (await PROGRESS.run(this.redis, [this.keys.push(id)], [])) === 1;
  }

  /**
   * How long the push has gone without progress, and its last transient
   * cause; records `cause` as the new last cause first when given.
   * Undefined for an unknown (or expired) push.
   */
  async budget(id: string, cause?: PushError): Promise<BudgetReading | undefined> {
    assertPushId(id);
    const arg = cause ? JSON.stringify({ code: cause.code, message: cause.message }) : '';
    const [exists, idleMs, last] = (await BUDGET.run(this.redis, [this.keys.push(id)], [arg])) as [
      number,
      number,
      string,
    ];
    if (exists !== 1) return undefined;
    let lastCause: PushError | undefined;
    try {
      lastCause = last ? (JSON.parse(last) as PushError) : undefined;
    } catch {
      lastCause = undefined;
    }
    return { idleMs: Number(idleMs), ...(lastCause ? { lastCause } : {}) };
  }

  /** Appends an event (a worker's manifest/tag/signature/log). Returns its stream id, or undefined for an unknown push. */
  async appendEvent(id: string, event: PushEvent): Promise<string | undefined> {
    assertPushId(id);
    const e = { ...event, at: event.at ?? new Date().toISOString() };
    const r = await APPEND.run(
      this.redis,
      [this.keys.push(id), this.keys.events(id)],
      [this.ttlSeconds, JSON.stringify(e)],
    );
    return r === null ? undefined : (r as string);
  }

  /**
   * Events after afterId (exclusive; none = from the start), oldest first, at
   * most `count`. With blockMs > 0 and nothing new, waits up to blockMs on the
   * shared follower connection (see eventReader).
   */
  async readEvents(
    id: string,
    afterId?: string,
    blockMs = 0,
    count = 1000,
  ): Promise<StoredEvent[]> {
    if (blockMs > 0) return this.hub.read(this.keys.events(id), afterId, blockMs, count);
    if (afterId !== undefined && !isEventId(afterId))
      throw new Error(`bad event id ${JSON.stringify(afterId)}`);
    const start = afterId === undefined || afterId === '0' ? '-' : `(${afterId}`;
    const rows = await this.redis.xrange(this.keys.events(id), start, '+', 'COUNT', count);
    return rows.map(parseEntry).filter((e): e is StoredEvent => e !== undefined);
  }

  /**
   * A follower of one push's events. Every follower of this store shares one
   * blocking Redis connection (EventHub), so thousands of SSE streams cost one
   * connection.
   */
  eventReader(id: string): EventReader {
    return this.hub.reader(this.keys.events(id));
  }

  /** Ends every follower's wait and closes the shared follower connection. */
  close(): void {
    this.hub.close();
  }

  /**
   * Maps an Idempotency-Key to a push id for the state TTL. The first caller's
   * id wins; later callers get it back with created: false. The fingerprint
   * (e.g. a hash of the request) tells a reused key with another body apart.
   */
  async idempotent(key: string, id: string, fingerprint = ''): Promise<IdempotencyResult> {
    return claimIdempotencyKey(this.redis, this.keys, this.ttlSeconds, key, id, fingerprint);
  }

  /** Seconds left before the push's state expires (-2 unknown, -1 no TTL). */
  async ttl(id: string): Promise<{ state: number; events: number }> {
    const [state, events] = await Promise.all([
      this.redis.ttl(this.keys.push(id)),
      this.redis.ttl(this.keys.events(id)),
    ]);
    return { state, events };
  }
}
