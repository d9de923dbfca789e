import type { Layer, SourceImage } from '@ferry/image-source';
import type { Logger } from '@ferry/log';
import {
  parseReference,
  type CallOptions,
  type RegistryClient,
  type RepoRef,
} from '@ferry/registry-client';
import { isPermanent, PermanentError } from './errors';
import {
  JOB_VERSION,
  jobVersion,
  type LayerJob,
  type BlobRecord,
  type PermitControl,
  type PushLayout,
  type PushRequest,
  type PushStore,
  type QueueContext,
} from '@ferry/queue';
import type { SourceCache, SourceRef } from './clients';

/** How one layer stands in one target registry. */
export interface TargetLayer {
  /**
   * 'upload': handed to an upload job; 'foreign': a foreign / non-distributable layer left as
   * a reference (never copied); 'failed': a permanent error for this target alone (fan-out).
   */
  state: 'exists' | 'mounted' | 'uploaded' | 'upload' | 'foreign' | 'failed';
  digest?: string;
  size?: number;
  mountedFrom?: string;
  error?: { code: string; message: string };
}

/** What lookup and upload jobs return: the coordinator reads it with getChildrenValues(). */
export interface LayerOutcome {
  imageIndex: number;
  layerIndex: number;
  /** The first target's: 'upload' from a lookup that handed the layer to an upload job. */
  state: 'exists' | 'mounted' | 'uploaded' | 'upload' | 'foreign' | 'failed' | 'resolved';
  digest?: string;
  size?: number;
  diffId?: string;
  mediaType: string;
  mountedFrom?: string;
  /** Per target (fan-out; version-3 jobs): how the layer stands there. */
  targets?: Record<string, TargetLayer>;
  /** A lookup job of several layers (version 4): each layer's outcome; the fields above are the first's. */
  layers?: LayerOutcome[];
  /**
   * A whole image's lookup job: where it found the image's stated config
   * blob (per target; a target it could not check is left out, and the
   * coordinator looks there itself).
   */
  config?: ConfigOutcome;
}

/** The config blob of an image as a lookup found it in each target it checked. */
export interface ConfigOutcome {
  digest: string;
  targets: Record<string, 'exists' | 'mounted' | 'missing'>;
}

/**
 * The flow's layout of opened images: their layer counts, and one lookup job
 * per image when every layer states its digest (a lookup that must hash a
 * layer keeps a job of its own, so that work spreads over the workers).
 */
export function pushLayoutOf(images: readonly SourceImage[]): PushLayout {
  const stated = images.every((i) => i.layers.every((l) => l.digest !== undefined));
  return {
    images: images.map((i) => ({ layers: i.layers.length })),
    ...(stated ? { lookupPerImage: true } : {}),
  };
}

/** host[:port] + repository of a push target. */
export function targetRepo(target: string): RepoRef {
  const ref = parseReference(target);
  return { registry: ref.registry, repository: ref.repository };
}

/** Every target a layer job serves (fan-out), `target` first. */
export function targetsOf(job: Pick<LayerJob, 'target' | 'targets'>): string[] {
  return job.targets && job.targets.length > 0 ? job.targets : [job.target];
}

/** The layer a job names, from the (cached) opened source. */
export async function layerOf(sources: SourceCache, job: LayerJob): Promise<Layer> {
  const opened = await sources.open(sourceRefOf(job));
  const image = opened.images[job.imageIndex];
  const layer = image?.layers[job.layerIndex];
  if (!layer) {
    // Only an unpinned (version-1) job can get here: a pinned source that changed fails to open.
    throw new PermanentError(
      'FERRY_SOURCE_CHANGED',
      `${job.source} has no layer ${job.layerIndex} in image ${job.imageIndex} any more`,
    );
  }
  return layer;
}

/** How a layer job reads its source. */
export function sourceRefOf(job: LayerJob): SourceRef {
  return {
    source: job.source,
    gzipLevel: job.gzipLevel,
    ...(job.pin ? { pin: job.pin } : {}),
    ...(job.platform !== undefined ? { platform: job.platform } : {}),
    ...(job.dirOptions ? { dirOptions: job.dirOptions } : {}),
  };
}

/**
 * A layer job in the current payload shape. Version 1 (no `v`) carried no
 * platform, options or pin: they are read back from the push state.
 */
export async function currentLayerJob<T extends LayerJob>(
  data: T | Omit<T, 'v'>,
  requests: PushRequests,
): Promise<T> {
  const version = jobVersion(data);
  if (version === JOB_VERSION) return data as T;
  // Version 2 is version 3 with one target and no resolve job; version 3 is version 4 of one layer.
  if (version === 2 || version === 3) return { ...data, v: JOB_VERSION } as T;
  if (version !== 1) {
    throw new PermanentError(
      'FERRY_JOB_VERSION',
      `job payload version ${String((data as { v?: unknown }).v)} is not one this worker knows`,
    );
  }
  const request = await requests.get(data.pushId);
  return {
    ...data,
    v: JOB_VERSION,
    ...(request?.platform !== undefined ? { platform: request.platform } : {}),
    ...(request?.dirOptions ? { dirOptions: request.dirOptions } : {}),
    ...(request?.pin ? { pin: request.pin } : {}),
  } as T;
}

/**
 * The upload lease key of a blob: by digest when the source states one, else
 * by content — the uncompressed tar's digest (which already differs with the
 * dir: options, since owners and mtimes are in the tar) and every setting that
 * decides the compressed bytes (gzip level, zlib identity).
 */
export function blobLeaseKey(
  registry: string,
  digest: string | undefined,
  diffId: string | undefined,
  gzipLevel: number,
  zlibIdentity: string,
): string {
  if (digest) return `${registry}/${digest}`;
  return `${registry}/diff/${diffId ?? 'unknown'}/gzip-${gzipLevel}/zlib-${zlibIdentity}`;
}

/** The request of a push, read once per process from the push state (job data holds only references). */
export class PushRequests {
  private readonly cache = new Map<string, { at: number; value: PushRequest | undefined }>();
  constructor(
    private readonly store: PushStore,
    private readonly ttlMs = 60_000,
  ) {}

  /** Drops what is cached for a push (its request changed: a docker:// source was pinned). */
  forget(pushId: string): void {
    this.cache.delete(pushId);
  }

  async get(pushId: string): Promise<PushRequest | undefined> {
    const now = Date.now();
    const hit = this.cache.get(pushId);
    if (hit && now - hit.at < this.ttlMs) return hit.value;
    const state = await this.store.get(pushId);
    const value = state?.request;
    this.cache.set(pushId, { at: now, value });
    if (this.cache.size > 1000) {
      for (const [k, e] of this.cache) if (now - e.at >= this.ttlMs) this.cache.delete(k);
    }
    return value;
  }
}

/**
 * Records a blob that needs no upload — already in the target (`exists`) or
 * mounted from another repository — in the push state, the blob index and the
 * metrics.
 */
export async function markPresent(
  ctx: QueueContext,
  pushId: string,
  key: { imageIndex: number; index: number },
  repo: RepoRef,
  found: FoundBlob,
): Promise<void> {
  await markPresentMany(ctx, pushId, [{ key, repo, found }]);
}

/** A blob a lookup found in a target: what markPresentMany records. */
export interface PresentMark {
  key: { imageIndex: number; index: number };
  repo: RepoRef;
  found: FoundBlob;
}

/**
 * Records blobs found present (exists / mounted): each layer's state and
 * event (in layer order), the blob index, the counters — three writes sent
 * together however many layers, one round trip.
 */
export async function markPresentMany(
  ctx: QueueContext,
  pushId: string,
  marks: readonly PresentMark[],
  /** Other blobs found present (an image's config) for the blob index, in the same call. */
  blobs: readonly BlobRecord[] = [],
): Promise<void> {
  if (marks.length === 0 && blobs.length === 0) return;
  const counts = new Map<string, number>();
  for (const m of marks) counts.set(m.found.state, (counts.get(m.found.state) ?? 0) + 1);
  // Events in layer order, whatever order the lookups finished in.
  const ordered = [...marks].sort(
    (a, b) => a.key.imageIndex - b.key.imageIndex || a.key.index - b.key.index,
  );
  await Promise.all([
    ctx.store.updateLayers(
      pushId,
      ordered.map(({ key, found }) => ({
        key,
        patch: {
          state: found.state,
          digest: found.digest,
          ...(found.size !== undefined ? { size: found.size } : {}),
          // bytesSent stays: what earlier attempts sent went on the wire (it counts every attempt).
          ...(found.mountedFrom ? { mountedFrom: found.mountedFrom } : {}),
        },
      })),
    ),
    ctx.blobs.recordBlobs([
      ...marks.map(({ repo, found }) => ({
        registry: repo.registry,
        repository: repo.repository,
        digest: found.digest,
      })),
      ...blobs,
    ]),
    ...[...counts].map(([result, n]) =>
      ctx.metrics.inc('ferry_blobs_total', { result }, n).catch(() => undefined),
    ),
  ]);
}

export interface FoundBlob {
  state: 'exists' | 'mounted';
  digest: string;
  size?: number;
  mountedFrom?: string;
}

/**
 * Runs one registry call under the registry's cluster-wide lookup permit. The
 * permit is given back while the call sleeps (a back-off, a Retry-After) and
 * taken again after; if it lapses (its renewal failed) the call is stopped and
 * the job retried, so a lapsed holder never runs past the limit.
 */
export function underPermit<T>(
  ctx: QueueContext,
  registry: string,
  fn: (call: CallOptions) => Promise<T>,
  timeoutMs: number,
): Promise<T> {
  return ctx.lookupSemaphore.use(registry, (permit) => callUnder(permit, fn), { timeoutMs });
}

/** A registry's lookup permit held across several calls (one lane of a whole image's lookup). */
export interface PermitLane {
  readonly registry: string;
  /** Runs one registry call under the lane's permit (taken again first if it was let go). */
  run<T>(fn: (call: CallOptions) => Promise<T>): Promise<T>;
}

/**
 * Holds up to `want` lookup permits of `registry` — as many as are free,
 * taken in one call (waiting only when none is) — while `fn` makes its calls
 * through them, one lane per permit; all are given back in one call after.
 * A call may still give its lane's permit back while it sleeps. `more(n)`
 * opens up to n more lanes, as many as permits are free now (one call, no
 * waiting): a lookup that started when few were free grows when others end.
 */
export function withPermitLanes<T>(
  ctx: QueueContext,
  registry: string,
  want: number,
  timeoutMs: number,
  fn: (lanes: PermitLane[], more: (n: number) => Promise<PermitLane[]>) => Promise<T>,
): Promise<T> {
  const laneOf = (permit: PermitControl): PermitLane => ({
    registry,
    run: async (call) => {
      await permit.reacquire();
      return callUnder(permit, call);
    },
  });
  return ctx.lookupSemaphore.useMany(
    registry,
    want,
    (permits, more) => fn(permits.map(laneOf), async (n) => (await more(n)).map(laneOf)),
    { timeoutMs },
  );
}

/** One registry call under a held permit: stopped when the permit lapses, given back while it sleeps. */
async function callUnder<T>(
  permit: PermitControl,
  fn: (call: CallOptions) => Promise<T>,
): Promise<T> {
  const stop = new AbortController();
  const watch = () => {
    const signal = permit.signal;
    if (signal.aborted) stop.abort(signal.reason);
    else signal.addEventListener('abort', () => stop.abort(signal.reason), { once: true });
  };
  watch();
  try {
    return await fn({
      signal: stop.signal,
      permit: {
        release: () => permit.release(),
        acquire: async () => {
          await permit.reacquire();
          watch();
        },
      },
    });
  } catch (err) {
    // The call was stopped because the permit lapsed: say that (transient), not "aborted".
    if (stop.signal.aborted && stop.signal.reason instanceof Error) throw stop.signal.reason;
    throw err;
  }
}

/**
 * Is the blob in the target repository already (HEAD), or can it be mounted
 * from a repository of the same registry that Ferry pushed it to? Every
 * request runs under the registry's cluster-wide lookup permit (underPermit).
 * A mount the registry refuses (no pull right, blob gone) is forgotten and the
 * next candidate tried; undefined means the blob must be uploaded.
 */
export async function findInRegistry(
  ctx: QueueContext,
  client: RegistryClient,
  repo: RepoRef,
  digest: string,
  opts: {
    permitTimeoutMs?: number;
    sizeHint?: number;
    logger?: Logger;
    /** Repositories of the same registry known to hold the blob (a docker:// source's), tried first. */
    mountFrom?: string[];
    /** A permit of the registry already held (a lookup lane): its calls go through it. */
    lane?: PermitLane;
    /** Awaited before anything is written (a mount): the push was checked to be still running. */
    beforeWrite?: Promise<void>;
  } = {},
): Promise<FoundBlob | undefined> {
  const timeoutMs = opts.permitTimeoutMs ?? 120_000;
  const lane = opts.lane?.registry === repo.registry ? opts.lane : undefined;
  const checked = <T>(fn: (call: CallOptions) => Promise<T>) =>
    lane ? lane.run(fn) : underPermit(ctx, repo.registry, fn, timeoutMs);
  const have = await checked((call) => client.blobExists(repo, digest, call));
  if (have) return { state: 'exists', digest, size: have.size };
  await opts.beforeWrite;
  const known = await ctx.blobs.reposWithBlob(repo.registry, digest);
  const candidates = [...new Set([...(opts.mountFrom ?? []), ...known.slice(0, 3)])].filter(
    (r) => r !== repo.repository,
  );
  for (const from of candidates) {
    let mounted = false;
    try {
      mounted = await checked((call) => client.mountBlob(repo, digest, from, call));
    } catch (err) {
      if (!isPermanent(err)) throw err;
      opts.logger?.info(`mount of ${digest} from ${from} refused: ${(err as Error).message}`);
    }
    if (!mounted) {
      await ctx.blobs.forgetBlob(repo.registry, from, digest);
      continue;
    }
    const got = await checked((call) => client.blobExists(repo, digest, call));
    return { state: 'mounted', digest, size: got?.size ?? opts.sizeHint, mountedFrom: from };
  }
  return undefined;
}
