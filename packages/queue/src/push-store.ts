import type { Redis } from 'ioredis';
import { Keys } from './keys';
import { Metrics } from './metrics';
import { assertPushId } from './queues';
import { Script } from './script';
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
  type PushState,
  type PushStatus,
  type PushSummary,
  type StoredEvent,
} from './types';

/*
 * Layout of one push in Redis (all under the queue prefix P):
 *   P:push:<id>          hash: id, status, source, target, tags, request, createdAt,
 *                        createdMs, startedAt, finishedAt, manifest, manifests,
 *                        signatures, error, layout — JSON values except the plain strings —
 *                        and one field per layer attribute: layer:<img>:<n>:<attr>
 *                        (state, digest, size, bytesSent, mountedFrom), so two workers
 *                        updating two layers (or two attributes) never overwrite each other.
 *   P:push:<id>:events   stream of progress events, field "e" = JSON; the entry id is the SSE id.
 *   P:pushes:<status>    sorted sets (score = createdMs) for listing; P:pushes:all too.
 * Every write refreshes the TTL of the hash and the stream.
 */

const LAYER_ATTRS = ['state', 'digest', 'size', 'bytesSent', 'mountedFrom'] as const;
const EVENT_MAXLEN = 10_000;

const CREATE = new Script(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ${EVENT_MAXLEN}, '*', 'e', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
`);

// KEYS: hash, events, index:queued..cancelled (5)
// ARGV: ttl, allowedFrom (comma list), to, event JSON ('' = none), pushId, field/value pairs...
const TRANSITION = new Script(`
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {-1, '', ''} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. cur .. ',', 1, true) then return {0, cur, ''} end
local to = ARGV[3]
if cur == to then return {1, cur, ''} end
redis.call('HSET', KEYS[1], 'status', to)
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local names = {'queued', 'running', 'succeeded', 'failed', 'cancelled'}
if cur ~= to then
  local score = redis.call('HGET', KEYS[1], 'createdMs') or '0'
  for i, n in ipairs(names) do
    if n == cur then redis.call('ZREM', KEYS[2 + i], ARGV[5]) end
    if n == to then redis.call('ZADD', KEYS[2 + i], score, ARGV[5]) end
  end
end
local eid = ''
if ARGV[4] ~= '' then
  eid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ${EVENT_MAXLEN}, '*', 'e', ARGV[4])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return {1, cur, eid}
`);

// KEYS: hash, events. ARGV: ttl, field prefix, imageIndex, index, emit ('1'/'0'), at, attr/value pairs
const LAYER_UPDATE = new Script(`
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local p = ARGV[2]
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], p .. ARGV[i], ARGV[i + 1]) end
local eid = ''
if ARGV[5] == '1' then
  local names = {${LAYER_ATTRS.map((a) => `'${a}'`).join(', ')}}
  local json = '{"type":"layer","imageIndex":' .. ARGV[3] .. ',"index":' .. ARGV[4]
  for _, n in ipairs(names) do
    local v = redis.call('HGET', KEYS[1], p .. n)
    if not v then
      if n == 'state' then v = '"pending"' elseif n == 'bytesSent' then v = '0' end
    end
    if v then json = json .. ',"' .. n .. '":' .. v end
  end
  json = json .. ',"at":"' .. ARGV[6] .. '"}'
  eid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ${EVENT_MAXLEN}, '*', 'e', json)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return eid
`);

// KEYS: hash, events. ARGV: ttl, event JSON
const APPEND = new Script(`
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local eid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ${EVENT_MAXLEN}, '*', 'e', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return eid
`);

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

export interface IdempotencyResult {
  /** The push id the key stands for: the existing one, or the one just offered. */
  id: string;
  /** True when this call stored the mapping (the caller should create the push). */
  created: boolean;
  /** False when the key was first used with a different request fingerprint. */
  sameRequest: boolean;
}

export interface TransitionResult {
  /** True when the status changed (or was set again where allowed). */
  ok: boolean;
  /** The status before the call; undefined when the push does not exist. */
  previous?: PushStatus;
  /** Stream id of the event the transition appended. */
  eventId?: string;
}

const EVENT_ID = /^\d{1,20}(-\d{1,20})?$/;

/** True for a stream entry id usable as Last-Event-ID ("0" = from the start). */
export function isEventId(s: string): boolean {
  return EVENT_ID.test(s);
}

/** A push's state and events in Redis; shared by the API (reads, create, cancel) and the workers (updates). */
export class PushStore {
  readonly keys: Keys;
  readonly ttlSeconds: number;
  readonly metrics: Metrics;

  constructor(
    readonly redis: Redis,
    opts: PushStoreOptions,
  ) {
    this.keys = new Keys(opts.prefix);
    if (!Number.isInteger(opts.ttlSeconds) || opts.ttlSeconds < 1) {
      throw new Error(`state TTL must be a positive integer of seconds, got ${opts.ttlSeconds}`);
    }
    this.ttlSeconds = opts.ttlSeconds;
    this.metrics = opts.metrics ?? new Metrics(redis, opts.prefix);
  }

  private indexKeys(): string[] {
    return PUSH_STATUSES.map((s) => this.keys.index(s));
  }

  /** Creates a queued push (appending a `status: queued` event). False when the id exists already. */
  async create(id: string, request: PushRequest, opts: CreatePushOptions = {}): Promise<boolean> {
    assertPushId(id);
    const now = new Date();
    const fields: string[] = [
      'id',
      id,
      'status',
      'queued',
      'source',
      request.source,
      'target',
      request.target,
      'tags',
      JSON.stringify(request.tags),
      'request',
      JSON.stringify(request),
      'createdAt',
      now.toISOString(),
      'createdMs',
      String(now.getTime()),
    ];
    if (opts.layout) {
      fields.push('layout', JSON.stringify(opts.layout));
      fields.push(...this.layerFields(layoutToLayers(opts.layout)));
    }
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
    const limit = Math.max(1, Math.min(opts.limit ?? 50, 1000));
    const index = this.keys.index(opts.status ?? 'all');
    const cutoff = Date.now() - this.ttlSeconds * 1000;
    await this.redis.zremrangebyscore(index, '-inf', `(${cutoff}`);
    const ids = await this.redis.zrevrange(index, 0, limit - 1);
    if (ids.length === 0) return [];
    const pipe = this.redis.pipeline();
    for (const id of ids) {
      pipe.hmget(this.keys.push(id), 'status', 'source', 'target', 'createdAt', 'finishedAt');
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
    if (gone.length) await this.redis.zrem(index, ...gone);
    return out;
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
    // Cheap check first: every lookup job of a push calls this.
    if ((await this.redis.hget(this.keys.push(id), 'status')) === status) {
      return { ok: true, previous: status };
    }
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
  async finish(id: string, outcome: PushResult | { error: PushError }): Promise<TransitionResult> {
    const at = new Date().toISOString();
    const fields: Record<string, string> = { finishedAt: at };
    let event: PushEvent;
    let status: PushStatus;
    if ('error' in outcome) {
      status = 'failed';
      const error = { code: outcome.error.code, message: outcome.error.message };
      fields.error = JSON.stringify(error);
      event = { type: 'status', status, error, at };
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

  private layerFields(layers: LayerState[]): string[] {
    const out: string[] = [];
    for (const l of layers) {
      const p = layerPrefix(l);
      for (const a of LAYER_ATTRS) {
        if (l[a] !== undefined) out.push(p + a, JSON.stringify(l[a]));
      }
    }
    return out;
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
    const fields = this.layerFields(list);
    if (fields.length) multi.hset(key, ...fields);
    multi.expire(key, this.ttlSeconds);
    await multi.exec();
  }

  /**
   * Updates some attributes of one layer atomically (one HSET per attribute —
   * no read-modify-write) and appends a `layer` event carrying the layer's
   * whole state after the update (unless opts.event is false). Returns the
   * event id, '' without an event, or undefined when the push is unknown.
   * Throttle bytesSent updates (e.g. every few MB or 500 ms).
   */
  async updateLayer(
    id: string,
    key: LayerKey,
    patch: LayerPatch,
    opts: { event?: boolean } = {},
  ): Promise<string | undefined> {
    assertPushId(id);
    const pairs: string[] = [];
    for (const a of LAYER_ATTRS) {
      if (patch[a] !== undefined) pairs.push(a, JSON.stringify(patch[a]));
    }
    const r = await LAYER_UPDATE.run(
      this.redis,
      [this.keys.push(id), this.keys.events(id)],
      [
        this.ttlSeconds,
        layerPrefix(key),
        key.imageIndex,
        key.index,
        opts.event === false ? '0' : '1',
        new Date().toISOString(),
        ...pairs,
      ],
    );
    return r === null ? undefined : (r as string);
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
   * most `count`. With blockMs > 0 and nothing new, waits up to blockMs on a
   * connection of its own (use eventReader for a long-lived follower).
   */
  async readEvents(
    id: string,
    afterId?: string,
    blockMs = 0,
    count = 1000,
  ): Promise<StoredEvent[]> {
    if (blockMs > 0) {
      const reader = this.eventReader(id);
      try {
        return await reader.read(afterId, blockMs, count);
      } finally {
        reader.close();
      }
    }
    if (afterId !== undefined && !isEventId(afterId))
      throw new Error(`bad event id ${JSON.stringify(afterId)}`);
    const start = afterId === undefined || afterId === '0' ? '-' : `(${afterId}`;
    const rows = await this.redis.xrange(this.keys.events(id), start, '+', 'COUNT', count);
    return rows.map(parseEntry).filter((e): e is StoredEvent => e !== undefined);
  }

  /** A follower of one push's events on its own connection (XREAD BLOCK does not share a connection). */
  eventReader(id: string): EventReader {
    return new EventReader(this.redis, this.keys.events(id));
  }

  /**
   * Maps an Idempotency-Key to a push id for the state TTL. The first caller's
   * id wins; later callers get it back with created: false. The fingerprint
   * (e.g. a hash of the request) tells a reused key with another body apart.
   */
  async idempotent(key: string, id: string, fingerprint = ''): Promise<IdempotencyResult> {
    const k = this.keys.idempotency(key);
    const set = await this.redis.set(
      k,
      JSON.stringify({ id, fingerprint }),
      'EX',
      this.ttlSeconds,
      'NX',
    );
    if (set === 'OK') return { id, created: true, sameRequest: true };
    const raw = await this.redis.get(k);
    if (raw === null) return this.idempotent(key, id, fingerprint); // expired in between
    const stored = JSON.parse(raw) as { id: string; fingerprint: string };
    return { id: stored.id, created: false, sameRequest: stored.fingerprint === fingerprint };
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

export class EventReader {
  private readonly conn: Redis;
  private closed = false;

  constructor(
    redis: Redis,
    private readonly key: string,
  ) {
    // A connection of its own that waits through reconnects instead of failing a blocked read.
    this.conn = redis.duplicate({
      maxRetriesPerRequest: null,
      enableOfflineQueue: true,
      lazyConnect: false,
    });
    this.conn.on('error', () => undefined);
  }

  /** Events after afterId, waiting up to blockMs (0 = do not wait) when there are none yet. */
  async read(afterId: string | undefined, blockMs: number, count = 1000): Promise<StoredEvent[]> {
    if (this.closed) return [];
    if (afterId !== undefined && !isEventId(afterId))
      throw new Error(`bad event id ${JSON.stringify(afterId)}`);
    const from = afterId ?? '0';
    const res =
      blockMs > 0
        ? await this.conn.xread('COUNT', count, 'BLOCK', blockMs, 'STREAMS', this.key, from)
        : await this.conn.xread('COUNT', count, 'STREAMS', this.key, from);
    if (!res) return [];
    const [, entries] = res[0];
    return entries.map(parseEntry).filter((e): e is StoredEvent => e !== undefined);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.conn.disconnect();
  }
}

function parseEntry([id, fields]: [string, string[]]): StoredEvent | undefined {
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

function layerPrefix(k: LayerKey): string {
  if (
    !Number.isInteger(k.imageIndex) ||
    k.imageIndex < 0 ||
    !Number.isInteger(k.index) ||
    k.index < 0
  ) {
    throw new Error(`bad layer key ${JSON.stringify(k)}`);
  }
  return `layer:${k.imageIndex}:${k.index}:`;
}

/** Every layer of a layout, pending. */
export function layoutToLayers(layout: PushLayout): LayerState[] {
  const out: LayerState[] = [];
  layout.images.forEach((img, imageIndex) => {
    for (let index = 0; index < img.layers; index++) {
      out.push({ imageIndex, index, state: 'pending', bytesSent: 0 });
    }
  });
  return out;
}

function parseJson<T>(s: string | undefined): T | undefined {
  if (s === undefined) return undefined;
  try {
    return JSON.parse(s) as T;
  } catch {
    return undefined;
  }
}

function parseState(raw: Record<string, string>): PushState {
  const layers = new Map<string, LayerState>();
  for (const [field, value] of Object.entries(raw)) {
    const m = /^layer:(\d+):(\d+):(\w+)$/.exec(field);
    if (!m) continue;
    const k = `${m[1]}:${m[2]}`;
    let l = layers.get(k);
    if (!l) {
      l = { imageIndex: Number(m[1]), index: Number(m[2]), state: 'pending', bytesSent: 0 };
      layers.set(k, l);
    }
    const v = parseJson<unknown>(value);
    if (v !== undefined && (LAYER_ATTRS as readonly string[]).includes(m[3])) {
      (l as unknown as Record<string, unknown>)[m[3]] = v;
    }
  }
  const state: PushState = {
    id: raw.id,
    status: raw.status as PushStatus,
    source: raw.source,
    target: raw.target,
    tags: parseJson<string[]>(raw.tags) ?? [],
    request: parseJson<PushRequest>(raw.request) as PushRequest,
    layers: [...layers.values()].sort((a, b) => a.imageIndex - b.imageIndex || a.index - b.index),
    createdAt: raw.createdAt,
  };
  for (const f of ['manifest', 'manifests', 'signatures', 'error'] as const) {
    const v = parseJson<never>(raw[f]);
    if (v !== undefined) (state as unknown as Record<string, unknown>)[f] = v;
  }
  for (const f of ['startedAt', 'finishedAt'] as const) {
    if (raw[f]) state[f] = raw[f];
  }
  return state;
}
