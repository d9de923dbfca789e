/**
 * lookup-worker: one job per layer. Finds the layer's digest (stated by the
 * source, or — for layers Ferry compresses — the uncompressed tar's diffID
 * mapped through the compressed-digest cache), asks the target repository
 * whether it has the blob (at most FERRY_LOOKUP_CONCURRENCY checks per
 * registry across the cluster), tries a cross-repository mount from
 * repositories Ferry pushed it to, and otherwise adds an upload job to the
 * same flow before completing.
 */
import type { Job } from 'bullmq';
import type { FerryConfig } from '@ferry/config';
import {
  parseSource,
  snapshotKey,
  zlibIdentity,
  type Layer,
  type OpenedSource,
} from '@ferry/image-source';
import { canonicalJson, sha256Digest } from '@ferry/manifest';
import type { Logger } from '@ferry/log';
import {
  addLayerChildren,
  addUploadChild,
  JOB_VERSION,
  QUEUE_NAMES,
  type BlobRecord,
  type LookupJob,
  type QueueContext,
  type SourcePin,
  type UploadJob,
} from '@ferry/queue';
import type { RegistryClient } from '@ferry/registry-client';
import {
  CancelledError,
  currentLayerJob,
  isPermanent,
  PermanentError,
  sourceRefOf,
  tagSource,
  type OpenedImages,
  type SourceRef,
  type TagsSnapshot,
  targetsOf,
  type TargetLayer,
  createRegistryClient,
  findInRegistry,
  markPresentMany,
  type ConfigOutcome,
  type FoundBlob,
  type PresentMark,
  type PermitLane,
  withPermitLanes,
  layerOf,
  PushRequests,
  pushLayoutOf,
  SourceCache,
  sharedSourceCache,
  startWorker,
  targetRepo,
  type LayerOutcome,
  type RoleHandle,
} from '@ferry/runtime';

export interface LookupDeps {
  ctx: QueueContext;
  client: RegistryClient;
  sources: SourceCache;
  requests: PushRequests;
  logger: Logger;
  /** How long to wait for a lookup permit before giving the job back (transient). */
  permitTimeoutMs?: number;
  /** Layers a job of a whole image looks up at once (FERRY_LOOKUP_CONCURRENCY; default 5). */
  parallel?: number;
}

/** The blob's candidate digest: stated by the source, or suggested by the compressed-digest cache. */
async function candidateDigest(ctx: QueueContext, d: LookupJob, layer: Layer) {
  let digest = layer.digest;
  let size = layer.size;
  let diffId = layer.diffId;
  // The uncompressed tar's size of a layer Ferry compresses: the upload shows progress over it.
  let total: number | undefined;
  if (!digest) {
    const r = await layer.diffIdOnly();
    diffId = r.diffId;
    if (r.uncompressedSize >= 0) total = r.uncompressedSize;
    const cached = await ctx.blobs.lookupCompressed(diffId, d.gzipLevel, zlibIdentity(d.gzipLevel));
    if (cached) {
      digest = cached.digest;
      size = cached.size;
    }
  }
  return { digest, size, diffId, total };
}

/**
 * HEAD, else a cross-repository mount, in one target (recorded by the
 * caller). A permanent error is that target's alone when the push fans out
 * (the others go on); with one target it fails the job, as before.
 */
async function lookInTarget(
  deps: LookupDeps,
  target: string,
  digest: string,
  size: number | undefined,
  mountFrom: string[],
  fanOut: boolean,
  beforeWrite: Promise<void>,
  lane?: PermitLane,
): Promise<FoundBlob | FailedTarget | undefined> {
  const { ctx, client, logger } = deps;
  const repo = targetRepo(target);
  try {
    const found = await findInRegistry(ctx, client, repo, digest, {
      permitTimeoutMs: deps.permitTimeoutMs,
      sizeHint: size,
      logger,
      mountFrom,
      lane,
      beforeWrite,
    });
    if (!found) return undefined;
    // One line per job says it at info (summarize); per layer at debug.
    logger.debug(
      found.state === 'exists'
        ? `layer ${digest} already exists in ${repo.registry}/${repo.repository}, skipping`
        : `layer ${digest} mounted from ${found.mountedFrom} into ${repo.registry}/${repo.repository}`,
    );
    return found;
  } catch (err) {
    if (!fanOut || !isPermanent(err)) throw err;
    const e = err as { code?: string; message: string };
    logger.warn(`target ${target}: layer ${digest}: ${e.message}`);
    return {
      state: 'failed',
      error: { code: e.code ?? 'FERRY_REGISTRY_ERROR', message: e.message },
    };
  }
}

/** Repositories of the target's registry that hold the blob for sure: a docker:// source's own. */
function sourceMounts(opened: OpenedSource, target: string): string[] {
  const src = opened.registrySource;
  if (!src) return [];
  return src.registry === targetRepo(target).registry ? [src.repository] : [];
}

/** A target that refused the layer for good (fan-out): that target's failure alone. */
interface FailedTarget {
  state: 'failed';
  error: { code: string; message: string };
}

export function lookupProcessor(deps: LookupDeps) {
  const { ctx, requests } = deps;
  return async (job: Job<LookupJob>): Promise<LayerOutcome> => {
    const d = await currentLayerJob<LookupJob>(job.data, requests);
    // One round trip: marks the push running, and says if it has ended (cancelled, failed). The
    // existence checks (reads) start meanwhile; nothing is written before it has answered.
    const running = ctx.store.setStatus(d.pushId, 'running').then((r) => {
      if (!r.ok && r.previous !== 'running') {
        throw new CancelledError(d.pushId, r.previous ?? 'cancelled');
      }
    });
    running.catch(() => undefined);
    if (d.resolve) {
      await running;
      return resolveSource(deps, d);
    }
    const n = d.layers ?? 1;
    if (!Number.isInteger(n) || n < 1) {
      throw new PermanentError('FERRY_BAD_JOB', `lookup job ${job.id}: bad layer count ${n}`);
    }
    // Blobs found present are recorded together when the job's layers are done (one round trip).
    const scope: JobScope = { marks: [], running };
    const blobs: BlobRecord[] = [];
    try {
      if (d.layers === undefined) {
        const one = await lookUpLayer(deps, job, d, scope);
        summarize(deps, d, [one]);
        return one;
      }
      const layers: LayerOutcome[] = new Array(n);
      let config: ConfigOutcome | undefined;
      const tasks: LaneTask[] = Array.from({ length: n }, (_, i) => async (lane) => {
        const one = { ...d, layerIndex: d.layerIndex + i, layers: undefined };
        layers[i] = await lookUpLayer(deps, job, one, scope, lane);
      });
      // The image's config is looked for beside its layers (it never fails the job).
      tasks.push(async (lane) => {
        config = await lookConfig(deps, d, blobs, running, lane);
      });
      await inLanes(deps, targetRepo(d.target).registry, tasks);
      summarize(deps, d, layers, config);
      return { ...layers[0], layers, ...(config ? { config } : {}) };
    } finally {
      await running;
      await markPresentMany(ctx, d.pushId, scope.marks, blobs);
    }
  };
}

/** What the layers of one lookup job share. */
interface JobScope {
  /** Blobs found present in every target, recorded together when the job's layers are done. */
  marks: PresentMark[];
  /** The push was marked running (rejects when it has ended): awaited before any write. */
  running: Promise<void>;
}

/**
 * One info line per lookup job (docker push said "layer already exists,
 * skipping" per layer; a whole image's job says it once for its layers):
 * how its layers stand in its targets.
 */
function summarize(
  deps: LookupDeps,
  d: LookupJob,
  outcomes: LayerOutcome[],
  config?: ConfigOutcome,
): void {
  const count = new Map<string, number>();
  for (const o of outcomes) {
    for (const t of Object.values(o.targets ?? { _: o })) {
      count.set(t.state, (count.get(t.state) ?? 0) + 1);
    }
  }
  const words: Record<string, string> = {
    exists: 'already exist, skipping',
    mounted: 'mounted',
    upload: 'to upload',
    foreign: 'foreign (left as references)',
    failed: 'failed',
  };
  const parts = [...count].map(([state, n]) => `${n} ${words[state] ?? state}`);
  const configs = config ? Object.values(config.targets) : [];
  if (configs.length) parts.push(`config ${[...new Set(configs)].join('/')}`);
  const which =
    d.layers === undefined
      ? `layer ${d.layerIndex} of image ${d.imageIndex}`
      : `${outcomes.length} layers of image ${d.imageIndex}`;
  const targets = targetsOf(d).map((t) => {
    const r = targetRepo(t);
    return `${r.registry}/${r.repository}`;
  });
  const line = `push ${d.pushId}: ${which} in ${targets.join(', ')}: ${parts.join(', ')}`;
  // Written once the job's completion is on its way (the line is off the push's path).
  setImmediate(() => deps.logger.info(line));
}

/**
 * A whole image's stated config blob, looked for in every target as a layer
 * is (HEAD, else a mount), so the coordinator need not look again before the
 * manifest. Where it was found goes to `found` (the job records it with its
 * layers). A target that cannot be checked now is left out of the answer
 * (the coordinator looks there itself); never throws.
 */
async function lookConfig(
  deps: LookupDeps,
  d: LookupJob,
  found: BlobRecord[],
  beforeWrite: Promise<void>,
  lane?: PermitLane,
): Promise<ConfigOutcome | undefined> {
  const { ctx, client, sources, logger } = deps;
  try {
    const opened = await sources.open(sourceRefOf(d));
    const bytes = opened.images[d.imageIndex]?.configBytes;
    if (!bytes) return undefined;
    const digest = sha256Digest(bytes);
    const targets: ConfigOutcome['targets'] = {};
    for (const target of targetsOf(d)) {
      const repo = targetRepo(target);
      try {
        const f = await findInRegistry(ctx, client, repo, digest, {
          permitTimeoutMs: deps.permitTimeoutMs,
          sizeHint: bytes.length,
          logger,
          mountFrom: sourceMounts(opened, target),
          lane,
          beforeWrite,
        });
        targets[target] = f ? f.state : 'missing';
        if (f) found.push({ ...repo, digest });
      } catch (err) {
        logger.debug(`config ${digest} in ${target} left to the coordinator: ${errorText(err)}`);
      }
    }
    return { digest, targets };
  } catch (err) {
    logger.debug(`config of image ${d.imageIndex} left to the coordinator: ${errorText(err)}`);
    return undefined;
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Layers a lookup job of a whole image looks up at once (FERRY_LOOKUP_CONCURRENCY by default). */
const DEFAULT_PARALLEL = 5;

/**
 * One piece of a whole image's lookup, run in a lane: its calls to the first
 * target's registry go through the lane's permit.
 */
type LaneTask = (lane: PermitLane) => Promise<void>;

/** A lookup that has fewer lanes than it wants asks for more at most this often (one Redis call). */
const GROW_EVERY_MS = 25;

/**
 * Runs the tasks in at most `parallel` lanes, one lookup permit of
 * `registry` each, all taken in one call and given back in one (as many as
 * are free; the cluster-wide cap holds). One that started with fewer lanes
 * than it wanted (other lookups held the permits) asks for more between
 * tasks, while tasks are left, so it grows once the others give theirs back
 * instead of running its layers one by one to the end. Waits for every task
 * before answering: a failure is thrown only once no task is still at work
 * (a permanent one before a transient one), so a retried job never races its
 * previous try.
 */
async function inLanes(deps: LookupDeps, registry: string, tasks: LaneTask[]): Promise<void> {
  const failures: unknown[] = [];
  let next = 0;
  const want = Math.min(Math.max(1, deps.parallel ?? DEFAULT_PARALLEL), tasks.length);
  await withPermitLanes(
    deps.ctx,
    registry,
    want,
    deps.permitTimeoutMs ?? 120_000,
    async (lanes, more) => {
      // One per lane opened.
      const running: Promise<void>[] = [];
      let asking = false;
      let askedAt = Date.now();
      const grow = async (): Promise<void> => {
        const n = Math.min(want - running.length, tasks.length - next);
        if (n <= 0 || asking || Date.now() - askedAt < GROW_EVERY_MS) return;
        asking = true;
        askedAt = Date.now();
        try {
          for (const lane of await more(n)) start(lane);
        } catch {
          // Redis did not answer: go on with the lanes held (the job's own calls will tell).
        } finally {
          asking = false;
        }
      };
      const start = (lane: PermitLane): void => {
        running.push(
          (async () => {
            while (next < tasks.length) {
              const i = next++;
              await tasks[i](lane).catch((err: unknown) => failures.push(err));
              await grow();
            }
          })(),
        );
      };
      lanes.forEach(start);
      // Lanes opened while waiting are waited for too.
      for (let i = 0; i < running.length; i++) await running[i];
    },
  );
  if (failures.length > 0) throw failures.find((e) => isPermanent(e)) ?? failures[0];
}

/**
 * One layer: HEAD in every target, else a mount, else an upload job added to
 * the flow. A layer present in every target is left in the scope's marks for
 * the job to record; one handed to an upload is recorded before the hand-off.
 */
async function lookUpLayer(
  deps: LookupDeps,
  job: Job<LookupJob>,
  d: LookupJob,
  scope: JobScope,
  lane?: PermitLane,
): Promise<LayerOutcome> {
  const { ctx, sources } = deps;
  const opened = await sources.open(sourceRefOf(d));
  const layer = await layerOf(sources, d);
  const key = { imageIndex: d.imageIndex, index: d.layerIndex };
  const base = { imageIndex: d.imageIndex, layerIndex: d.layerIndex, mediaType: layer.mediaType };
  const targets = targetsOf(d);

  if (layer.foreign) {
    // Left as a reference, as skopeo does: the manifest names it, no registry gets its bytes.
    await scope.running;
    await ctx.store.updateLayer(d.pushId, key, {
      state: 'exists',
      ...(layer.digest ? { digest: layer.digest } : {}),
      ...(layer.size !== undefined ? { size: layer.size } : {}),
    });
    await ctx.store.appendEvent(d.pushId, {
      type: 'log',
      level: 'info',
      message: `layer ${layer.digest ?? layer.index} is a foreign (non-distributable) layer: left as a reference, not copied`,
    });
    const foreign: TargetLayer = { state: 'foreign', digest: layer.digest, size: layer.size };
    return {
      ...base,
      ...foreign,
      diffId: layer.diffId,
      targets: Object.fromEntries(targets.map((t) => [t, foreign])),
    };
  }

  // 1. The candidate digest; 2. HEAD in every target; 3. else a mount from where it is known.
  const { digest, size, diffId, total } = await candidateDigest(ctx, d, layer);
  const per: Record<string, TargetLayer> = {};
  const missing: string[] = [];
  const present: PresentMark[] = [];
  for (const target of targets) {
    const found = digest
      ? await lookInTarget(
          deps,
          target,
          digest,
          size,
          sourceMounts(opened, target),
          targets.length > 1,
          scope.running,
          lane,
        )
      : undefined;
    if (!found) missing.push(target);
    else per[target] = found;
    if (found && found.state !== 'failed') present.push({ key, repo: targetRepo(target), found });
  }
  if (missing.length === 0) {
    scope.marks.push(...present);
    return { ...base, ...per[targets[0]], diffId, targets: per };
  }
  await scope.running;
  await markPresentMany(ctx, d.pushId, present);

  // 4. Missing somewhere: one upload job for every target that lacks it, added before this job completes.
  const upload: UploadJob = {
    v: JOB_VERSION,
    pushId: d.pushId,
    imageIndex: d.imageIndex,
    layerIndex: d.layerIndex,
    source: d.source,
    target: missing[0],
    gzipLevel: d.gzipLevel,
    ...(d.platform !== undefined ? { platform: d.platform } : {}),
    ...(d.dirOptions ? { dirOptions: d.dirOptions } : {}),
    ...(d.pin ? { pin: d.pin } : {}),
    ...(diffId ? { diffId } : {}),
    // A fan-out's upload job names its targets even when one lacks the blob: its failure is that target's alone.
    ...(targets.length > 1 ? { targets: missing } : {}),
  };
  for (const t of missing) per[t] = { state: 'upload', digest: layer.digest, size: layer.size };
  // Written before the hand-off: the upload job may finish (and write its state) at once.
  await ctx.store.updateLayer(
    d.pushId,
    key,
    {
      state: 'pending',
      ...(layer.digest ? { digest: layer.digest } : {}),
      ...(layer.size !== undefined ? { size: layer.size } : {}),
      ...(total !== undefined ? { total } : {}),
    },
    { event: false },
  );
  await addUploadChild(ctx.queues, job, upload);
  const head = per[targets[0]];
  return { ...base, ...head, digest: head.digest ?? layer.digest, diffId, targets: per };
}

/**
 * cosign's signature, attestation and SBOM tags, and the OCI 1.1 referrers fallback tag
 * (`sha256-<hex>`): they follow their images, never copied as images.
 */
const COSIGN_TAG = /^sha256-[0-9a-f]{64}(\.(sig|att|sbom))?$/;

/**
 * `--all-tags`: every tag of the source repository, each resolved to the
 * manifest digest it names now, as one pin (like skopeo sync, as one push).
 */
async function pinAllTags(deps: LookupDeps, ref: SourceRef): Promise<SourcePin> {
  const spec = parseSource(ref.source);
  if (spec.transport !== 'docker') {
    throw new PermanentError('FERRY_BAD_SOURCE', `--all-tags needs a docker:// source`);
  }
  const repo = { registry: spec.registry, repository: spec.repository };
  const tags = (await deps.client.listTags(repo)).filter((t) => !COSIGN_TAG.test(t)).sort();
  if (tags.length === 0) {
    throw new PermanentError('FERRY_SOURCE_NOT_FOUND', `${ref.source} has no tags to copy`);
  }
  const pinned: TagsSnapshot['tags'] = [];
  for (const tag of tags) {
    const opened = await deps.sources.open({
      ...ref,
      source: tagSource(spec.registry, spec.repository, tag),
    });
    pinned.push({ tag, snapshot: opened.snapshot });
  }
  const snapshot: TagsSnapshot = { kind: 'registry-tags', ...repo, tags: pinned };
  return {
    key: sha256Digest(canonicalJson(snapshot)),
    snapshot: snapshot as unknown as Record<string, unknown>,
  };
}

/**
 * The first job of a docker:// push: reads the source registry (this worker
 * holds its credentials; the API does not), resolves the tag to a digest,
 * records that pin and the layout in the push state, and adds one lookup job
 * per layer to the flow. The push copies that digest even if the tag moves.
 */
async function resolveSource(deps: LookupDeps, d: LookupJob): Promise<LayerOutcome> {
  const { ctx, sources, logger } = deps;
  const known = await deps.requests.get(d.pushId);
  const { pin: _none, ...unpinned } = sourceRefOf(d);
  let pin: SourcePin | undefined = known?.pin;
  let opened: OpenedImages | undefined;
  if (!pin && !known?.allTags) {
    // Opened once: the snapshot of this opening is the pin, and its images the layout.
    opened = await sources.open(unpinned);
    pin = {
      key: snapshotKey(opened.snapshot),
      snapshot: { ...opened.snapshot } as Record<string, unknown>,
    };
  }
  pin ??= await pinAllTags(deps, unpinned);
  opened ??= await sources.open({ ...sourceRefOf(d), pin });
  const layout = pushLayoutOf(opened.images);
  await ctx.store.recordPin(d.pushId, pin, layout);
  deps.requests.forget(d.pushId);
  const top = opened.parts
    ? `${opened.parts.length} tags`
    : (opened.indexDigest ?? opened.images[0]?.manifestDigest ?? '');
  logger.info(`push ${d.pushId}: ${d.source} is ${top}`);
  await ctx.store.appendEvent(d.pushId, {
    type: 'log',
    level: 'info',
    message: `source ${d.source} resolved to ${top}`,
  });
  await addLayerChildren(
    ctx.queues,
    d.pushId,
    {
      source: d.source,
      target: d.target,
      pin,
      ...(d.targets ? { targets: d.targets } : {}),
      ...(d.platform !== undefined ? { platform: d.platform } : {}),
    },
    layout,
    d.gzipLevel,
  );
  return { imageIndex: 0, layerIndex: -1, state: 'resolved', mediaType: '', digest: top };
}

/** Starts the lookup role. */
export async function start(config: FerryConfig, logger: Logger): Promise<RoleHandle> {
  const log = logger.child({ role: 'lookup' });
  const client = createRegistryClient(config, log);
  const sources = sharedSourceCache(config, log);
  const handle = await startWorker<LookupJob, LayerOutcome>({
    role: 'lookup',
    queueName: QUEUE_NAMES.lookup,
    // Each job holds a registry permit only for its HEAD; the cluster-wide cap is the semaphore.
    concurrency: Math.max(config.lookupConcurrency * 2, 4),
    config,
    logger: log,
    processor: (ctx) =>
      lookupProcessor({
        ctx,
        client,
        sources,
        requests: new PushRequests(ctx.store),
        logger: log,
        parallel: config.lookupConcurrency,
      }),
    closables: [{ name: 'registry client', close: () => client.close() }],
  });
  return handle;
}
