/**
 * upload-worker: one job per missing blob. Streams source → tar → gzip →
 * SHA-256 → registry with constant memory and no temp files; the digest sent
 * with the final PUT is the one computed from the bytes that went out.
 *
 * One upload of a blob to a registry at a time across the cluster: a Redis
 * lease (with a fencing token) keyed by the blob — its digest when the source
 * states one, else its content (diffID + compression settings). A job that
 * finds the lease taken does not hold a worker slot: it moves itself to
 * delayed and looks again later, when it usually finds the blob present
 * (or mounts it from the repository the other push wrote it to).
 *
 * The lease is kept (renewed) while the upload runs; a renewal that fails or is
 * refused stops the upload at once — also while it sleeps in a back-off — and
 * the fencing token is checked right before the final PUT and inside the Lua
 * script that publishes the result (blob index, compressed-digest cache).
 */
import { hostname } from 'node:os';
import { DelayedError, type Job } from 'bullmq';
import type { FerryConfig } from '@ferry/config';
import { zlibIdentity, type Layer, type OpenedSource } from '@ferry/image-source';
import type { Logger } from '@ferry/log';
import { QUEUE_NAMES, type LeaseRef, type QueueContext, type UploadJob } from '@ferry/queue';
import type { BlobSource, RegistryClient, RepoRef, UploadResult } from '@ferry/registry-client';
import {
  assertActive,
  isPermanent,
  blobLeaseKey,
  CancelledError,
  createRegistryClient,
  currentLayerJob,
  findInRegistry,
  PermanentError,
  sourceRefOf,
  targetsOf,
  type TargetLayer,
  layerOf,
  LeaseLostError,
  markPresent,
  PushRequests,
  type RetryBudget,
  SourceCache,
  sharedSourceCache,
  startWorker,
  targetRepo,
  type LayerOutcome,
  type RoleHandle,
} from '@ferry/runtime';
import { LayerTee } from './tee';

export interface UploadDeps {
  ctx: QueueContext;
  client: RegistryClient;
  sources: SourceCache;
  /** Version-1 payloads: their push's request, read back from the push state. */
  requests?: PushRequests;
  logger: Logger;
  chunkSize: number;
  /** Lease time; renewed every third of it while the upload runs. */
  leaseMs?: number;
  /** How long a job waits (delayed, no slot held) before looking at a leased blob again. */
  waitMs?: number;
  /** How often a running upload asks whether its push was cancelled. Default 2 s. */
  cancelCheckMs?: number;
  /**
   * The push's retry budget (the worker wrapper's): asked on a transient
   * failure whether the job will be retried, so a session is kept only then.
   */
  budget?: RetryBudget;
}

const PROGRESS_EVERY_MS = 500;
/** Upload progress renews the push's retry budget at most this often. */
const BUDGET_PROGRESS_EVERY_MS = 5_000;

/** One upload job's blob, as every step below sees it. */
/** A layer stream's read counter and total (dir: layers; absent for blobs passed through). */
type LayerReadProgress = Pick<
  Awaited<ReturnType<Layer['open']>>,
  'uncompressedRead' | 'uncompressedTotal'
>;

/** A branch of a layer read shared by the targets of a fan-out. */
interface SharedRead {
  tee: LayerTee<Awaited<ReturnType<Layer['open']>>>;
  branch: number;
}

interface BlobJob {
  d: UploadJob;
  job: Job<UploadJob>;
  repo: RepoRef;
  layer: Layer;
  key: { imageIndex: number; index: number };
  base: { imageIndex: number; layerIndex: number; mediaType: string };
  diffId: string | undefined;
  leaseKey: string;
  sessionKey: string;
  /** Repositories of the target's registry that hold the blob for sure (a docker:// source's own). */
  mountFrom: string[];
}

export function uploadProcessor(deps: UploadDeps) {
  const { ctx, sources } = deps;
  const requests = deps.requests ?? new PushRequests(ctx.store);
  const leaseMs = deps.leaseMs ?? 30_000;
  const owner = `${hostname()}-${process.pid}`;

  return async (job: Job<UploadJob>, token?: string): Promise<LayerOutcome> => {
    const d = await currentLayerJob<UploadJob>(job.data, requests);
    const targets = targetsOf(d);
    const active = await assertActive(ctx, d.pushId).then(
      () => undefined,
      (e: unknown) => e,
    );
    if (active !== undefined) {
      // The push ended (failed elsewhere, cancelled) while this job waited: close its sessions.
      for (const t of targets) await dropSessionOfEnded(deps, d, targetRepo(t));
      throw active;
    }
    const opened = await sources.open(sourceRefOf(d));
    const layer = await layerOf(sources, d);
    const diffId = layer.diffId ?? d.diffId;
    const blobs = targets.map((t) => blobJobOf(deps, d, job, layer, diffId, t, opened));
    // A job of a fan-out push carries `targets` (maybe one): a permanent failure is per target then.
    const fanOut = d.targets !== undefined && d.targets.length > 0;
    const per: Record<string, TargetLayer> = {};

    // The blob may be in a target already (another push put it there), or mountable. A
    // first attempt with one target skips this look: its lookup has just looked, and
    // uploadAll looks again once the lease is held where Ferry may have put it since.
    const todo: BlobJob[] = [];
    const fresh = !fanOut && job.attemptsMade === 0 && !d.waits;
    for (const b of blobs) {
      const found = fresh ? undefined : await presentOrMount(deps, b);
      if (found) per[b.d.target] = targetLayerOf(found);
      else todo.push(b);
    }
    // One upload per registry; a second target in the same registry mounts from the first.
    // A target whose registry's upload failed for good (that repository refused, say) is not
    // failed with it: it leads a round of its own, so a failure stays the one target's.
    // The diffID the upload computed from the bytes it read (dir: layers), for the config.
    let computed: string | undefined;
    let round = todo;
    while (round.length > 0) {
      const leaders = new Map<string, BlobJob>();
      for (const b of round) if (!leaders.has(b.repo.registry)) leaders.set(b.repo.registry, b);
      const ups = [...leaders.values()];
      const held = await acquireLeases(deps, ups, job, token, owner, leaseMs);
      if (!held) return waitForOtherUpload(deps, ups[0], token, fanOut);
      try {
        computed = (await uploadAll(deps, ups, held, fanOut, per, fresh)) ?? computed;
      } finally {
        await releaseLeases(ctx, held);
      }
      const next: BlobJob[] = [];
      for (const b of round) {
        if (per[b.d.target]) continue;
        const leader = leaders.get(b.repo.registry)!;
        if (per[leader.d.target]?.state === 'failed') {
          next.push(b);
          continue;
        }
        const found = await presentOrMount(deps, b, [leader.repo.repository]);
        per[b.d.target] = found
          ? targetLayerOf(found)
          : {
              state: 'failed',
              error: {
                code: 'FERRY_LAYER_MISSING',
                message: `${b.layer.description} could not be mounted into ${b.d.target}`,
              },
            };
      }
      round = next;
    }
    const head = per[targets[0]];
    if (!fanOut && head.state === 'failed')
      throw new PermanentError(
        head.error?.code ?? 'FERRY_LAYER_MISSING',
        head.error?.message ?? 'upload failed',
      );
    return {
      ...blobs[0].base,
      ...head,
      diffId: computed ?? diffId,
      targets: fanOut ? per : undefined,
    };
  };
}

/** How the layer stands in one target, from an upload's (or a HEAD's) outcome. */
function targetLayerOf(o: LayerOutcome): TargetLayer {
  return {
    state: o.state as TargetLayer['state'],
    ...(o.digest !== undefined ? { digest: o.digest } : {}),
    ...(o.size !== undefined ? { size: o.size } : {}),
    ...(o.mountedFrom !== undefined ? { mountedFrom: o.mountedFrom } : {}),
  };
}

/** One target's view of the job's blob. */
function blobJobOf(
  deps: UploadDeps,
  d: UploadJob,
  job: Job<UploadJob>,
  layer: Layer,
  diffId: string | undefined,
  target: string,
  opened: OpenedSource,
): BlobJob {
  const repo = targetRepo(target);
  const src = opened.registrySource;
  const leaseKey = blobLeaseKey(
    repo.registry,
    layer.digest,
    diffId,
    d.gzipLevel,
    zlibIdentity(d.gzipLevel),
  );
  return {
    d: { ...d, target },
    job,
    repo,
    layer,
    key: { imageIndex: d.imageIndex, index: d.layerIndex },
    base: { imageIndex: d.imageIndex, layerIndex: d.layerIndex, mediaType: layer.mediaType },
    diffId,
    leaseKey,
    // The session an earlier attempt of this blob into this repository left open, if any.
    sessionKey: deps.ctx.uploadLease.keys.uploadSession(leaseKey, repo.repository),
    mountFrom: src && src.registry === repo.registry ? [src.repository] : [],
  };
}

interface HeldLease {
  lease: LeaseRef;
  keeper: { stop(): void; signal: AbortSignal };
}

/**
 * The upload lease of the blob in every registry to upload to, or null (all
 * given back) when another worker holds one: the job then waits and looks again.
 */
async function acquireLeases(
  deps: UploadDeps,
  ups: BlobJob[],
  job: Job<UploadJob>,
  token: string | undefined,
  owner: string,
  leaseMs: number,
): Promise<HeldLease[] | null> {
  const { ctx } = deps;
  const held: HeldLease[] = [];
  try {
    for (const b of ups) {
      // Unique per run of the job: a stalled run and its successor never share the lease.
      const lease: LeaseRef = {
        key: b.leaseKey,
        owner: `${owner}-${job.id}-${token ?? job.attemptsMade}`,
        token: 0,
      };
      const fence = await ctx.uploadLease.acquire(b.leaseKey, lease.owner, leaseMs);
      if (fence === null) {
        await releaseLeases(ctx, held);
        return null;
      }
      lease.token = fence;
      held.push({ lease, keeper: ctx.uploadLease.keep(b.leaseKey, lease.owner, fence, leaseMs) });
    }
    return held;
  } catch (err) {
    // Redis failed half way: nothing stays held (a kept lease would block this blob until restart).
    await releaseLeases(ctx, held);
    throw err;
  }
}

/** Stops keeping the leases and gives them back (best effort: a lease not given back expires). */
async function releaseLeases(ctx: QueueContext, held: HeldLease[]): Promise<void> {
  for (const h of held) {
    h.keeper.stop();
    await ctx.uploadLease.release(h.lease.key, h.lease.owner, h.lease.token).catch(() => undefined);
  }
}

/**
 * Uploads the blob to every registry in `ups` (one read of the layer shared by
 * all, see LayerTee), each under its lease. With several targets, a permanent
 * failure is that target's alone; a transient one fails the job (its retry
 * finds the finished targets present).
 */
async function uploadAll(
  deps: UploadDeps,
  ups: BlobJob[],
  held: HeldLease[],
  fanOut: boolean,
  per: Record<string, TargetLayer>,
  fresh = false,
): Promise<string | undefined> {
  const tee =
    ups.length > 1 ? new LayerTee((offset) => ups[0].layer.open(offset), ups.length) : undefined;
  const settled = await Promise.allSettled(
    ups.map(async (b, i) => {
      try {
        // The holder before us may have finished it. (A first attempt asks the registry only when
        // Ferry's blob index knows the blob in that registry: an upload is recorded there before
        // its lease is let go, so with no record no Ferry upload finished since the lookup looked.)
        const digest = await digestOf(deps, b);
        const look =
          !fresh ||
          (digest !== undefined &&
            (await deps.ctx.blobs.reposWithBlob(b.repo.registry, digest)).length > 0);
        const found = look ? await presentOrMount(deps, b, [], digest) : undefined;
        if (found) return found;
        const shared = tee ? { tee, branch: i } : undefined;
        return await upload(deps, b, held[i].lease, held[i].keeper.signal, shared);
      } finally {
        tee?.leave(i);
      }
    }),
  );
  let transient: unknown;
  let diffId: string | undefined;
  settled.forEach((r, i) => {
    const t = ups[i].d.target;
    if (r.status === 'fulfilled') {
      per[t] = targetLayerOf(r.value);
      diffId ??= r.value.diffId;
      return;
    }
    if (!fanOut || !isPermanent(r.reason) || r.reason instanceof CancelledError) {
      transient ??= r.reason;
      return;
    }
    const e = r.reason as { code?: string; message: string };
    deps.logger.warn(`target ${t}: ${ups[i].layer.description}: ${e.message}`);
    per[t] = {
      state: 'failed',
      error: { code: e.code ?? 'FERRY_REGISTRY_ERROR', message: e.message },
    };
  });
  if (transient !== undefined) throw transient;
  return diffId;
}

/** The session key of a job's blob (its lease key + repository), as upload() keeps it. */
function sessionKeyOf(ctx: QueueContext, d: UploadJob, repo: RepoRef, layer: Layer): string {
  const leaseKey = blobLeaseKey(
    repo.registry,
    layer.digest,
    layer.diffId ?? d.diffId,
    d.gzipLevel,
    zlibIdentity(d.gzipLevel),
  );
  return ctx.uploadLease.keys.uploadSession(leaseKey, repo.repository);
}

/** Best effort: cancels the session an earlier attempt of this job kept, once its push has ended. */
async function dropSessionOfEnded(deps: UploadDeps, d: UploadJob, repo: RepoRef): Promise<void> {
  try {
    const layer = await layerOf(deps.sources, d);
    const sessionKey = sessionKeyOf(deps.ctx, d, repo, layer);
    const earlier = await deps.ctx.connection.get(sessionKey);
    if (!earlier) return;
    await deps.client.cancelUpload(repo, earlier).catch(() => undefined);
    await deps.ctx.connection.del(sessionKey);
  } catch {
    // the source is gone or changed: the registry purges abandoned sessions in the end
  }
}

/** A session left open by an earlier attempt is cancelled once the blob needs no upload. */
async function dropEarlierSession(deps: UploadDeps, b: BlobJob): Promise<void> {
  const earlier = await deps.ctx.connection.get(b.sessionKey);
  if (!earlier) return;
  await deps.client.cancelUpload(b.repo, earlier).catch(() => undefined);
  await deps.ctx.connection.del(b.sessionKey);
}

/** The blob's digest (stated, or from the compressed-digest cache), if known. */
async function digestOf(deps: UploadDeps, b: BlobJob): Promise<string | undefined> {
  if (b.layer.digest) return b.layer.digest;
  if (!b.diffId) return undefined;
  const level = b.d.gzipLevel;
  return (await deps.ctx.blobs.lookupCompressed(b.diffId, level, zlibIdentity(level)))?.digest;
}

/** The blob is in the target already, or can be mounted there: no bytes to send. */
async function presentOrMount(
  deps: UploadDeps,
  b: BlobJob,
  mountFrom: string[] = [],
  known?: string,
): Promise<LayerOutcome | undefined> {
  const { ctx, client } = deps;
  const digest = known ?? (await digestOf(deps, b));
  if (!digest) return undefined;
  const found = await findInRegistry(ctx, client, b.repo, digest, {
    logger: deps.logger,
    mountFrom: [...mountFrom, ...b.mountFrom],
  });
  if (!found) return undefined;
  await dropEarlierSession(deps, b);
  await markPresent(ctx, b.d.pushId, b.key, b.repo, found);
  return { ...b.base, ...found, diffId: b.diffId };
}

/**
 * Another worker is uploading this blob: wait without holding a slot, looking
 * again less often the longer it takes (1 s, 2 s, 4 s … up to 30 s).
 */
async function waitForOtherUpload(
  deps: UploadDeps,
  b: BlobJob,
  token: string | undefined,
  fanOut = false,
): Promise<LayerOutcome> {
  // A fan-out job looks at every target again when it runs next (one present is not all present).
  const found = fanOut ? undefined : await presentOrMount(deps, b);
  if (found) return found;
  const waits = (b.d.waits ?? 0) + 1;
  // The job's own data (every target), not this target's view of it.
  await b.job.updateData({ ...b.job.data, waits });
  const waitMs = deps.waitMs ?? 1_000;
  const delay = Math.min(30_000, waitMs * 2 ** Math.min(waits - 1, 5)) * (1 + Math.random() / 2);
  await b.job.moveToDelayed(Date.now() + Math.floor(delay), token);
  throw new DelayedError();
}

/** The layer as the registry client reads it: every (re)open regenerates and hashes the bytes. */
function blobSourceOf(
  layer: Layer,
  onDiffId: (diffId: string) => void,
  onOpen: (s: LayerReadProgress) => void = () => undefined,
  shared?: SharedRead,
): BlobSource {
  return {
    size: layer.size,
    digest: layer.digest,
    open: async (offset: number) => {
      const opened = shared
        ? await shared.tee.openBranch(shared.branch, offset)
        : await layer.open(offset).then((s) => ({ s, stream: s.stream, shared: false }));
      const s = opened.s;
      onOpen(s);
      const done = s.done.then((r) => {
        onDiffId(r.diffId);
        return { digest: r.digest, size: r.size };
      });
      // The client may abandon a stream (a cut, a retry) without awaiting its end.
      done.catch(() => undefined);
      // The layer's read buffers come back once copied, unless fan-out branches share them.
      return { stream: opened.stream, done, ...(opened.shared ? {} : { release: s.release }) };
    },
  };
}

/**
 * Progress into the push state at most every PROGRESS_EVERY_MS — bytesSent
 * added to the layer's (every attempt's bytes count, on any worker) — the
 * push's retry budget renewed when the upload gets further into the blob than
 * before (at most every BUDGET_PROGRESS_EVERY_MS), and a cancel check every
 * cancelCheckMs. flush() writes what is not written yet.
 */
function progressReporter(deps: UploadDeps, b: BlobJob, cancel: AbortController) {
  const { ctx } = deps;
  let lastReport = 0;
  let lastCheck = 0;
  let lastBudget = 0;
  let sent = 0;
  let written = 0;
  let furthest = 0;
  let advanced = false;
  /** The open stream's read counter (dir: layers): bytesRead goes with each report. */
  let stream: LayerReadProgress | undefined;
  let totalWritten = false;
  const checkEvery = deps.cancelCheckMs ?? 2_000;
  const write = (patch: { state?: 'uploading' }): Promise<unknown> => {
    const delta = sent - written;
    written = sent;
    if (delta === 0 && !patch.state) return Promise.resolve();
    void ctx.metrics.inc('ferry_bytes_uploaded_total', {}, delta).catch(() => undefined);
    const read = stream?.uncompressedRead?.();
    const total = totalWritten ? undefined : stream?.uncompressedTotal;
    if (total !== undefined) totalWritten = true;
    return ctx.store.updateLayer(
      b.d.pushId,
      b.key,
      {
        ...patch,
        ...(read !== undefined ? { bytesRead: read } : {}),
        // The lookup records the total when it hashed the tar (diffId); else the listing's here.
        ...(total !== undefined && b.diffId === undefined ? { total } : {}),
      },
      { addBytesSent: delta },
    );
  };
  const report = (bytesSent: number, position = 0) => {
    sent = bytesSent;
    if (position > furthest) {
      furthest = position;
      advanced = true;
    }
    const now = Date.now();
    if (cancel.signal.aborted || now - lastReport < PROGRESS_EVERY_MS) return;
    lastReport = now;
    void write({ state: 'uploading' }).catch(() => undefined);
    void b.job.updateProgress({ bytesSent }).catch(() => undefined);
    if (advanced && now - lastBudget >= BUDGET_PROGRESS_EVERY_MS) {
      lastBudget = now;
      advanced = false;
      void ctx.store.touchProgress(b.d.pushId).catch(() => undefined);
    }
    if (now - lastCheck < checkEvery) return;
    lastCheck = now;
    void ctx.store
      .isCancelled(b.d.pushId)
      .then((c) => {
        if (c) cancel.abort();
      })
      .catch(() => undefined);
  };
  return {
    report,
    /** A (re)opened layer stream: its read counter from now on. */
    opened: (s: LayerReadProgress) => {
      stream = s;
    },
    /** Writes the bytes sent since the last report (the upload ended, either way). */
    flush: () => write({}).catch(() => undefined),
  };
}

/** Streams the layer into an upload session (resuming an earlier attempt's), under the lease. */
async function upload(
  deps: UploadDeps,
  b: BlobJob,
  lease: LeaseRef,
  leaseLost: AbortSignal,
  shared?: SharedRead,
): Promise<LayerOutcome> {
  const { ctx, client } = deps;
  const { d, layer } = b;
  const earlier = (await ctx.connection.get(b.sessionKey)) ?? undefined;
  const rememberSession = (location: string | undefined) => {
    const op = location
      ? ctx.connection.set(b.sessionKey, location, 'EX', 24 * 3600)
      : ctx.connection.del(b.sessionKey);
    void op.catch(() => undefined);
  };
  const started = Date.now();
  // bytesSent is not reset: it adds up every attempt's bytes (what went on the wire).
  await ctx.store.updateLayer(d.pushId, b.key, {
    state: 'uploading',
    ...(layer.digest ? { digest: layer.digest } : {}),
    ...(layer.size !== undefined ? { size: layer.size } : {}),
  });
  let diffId = b.diffId;
  const cancel = new AbortController();
  const progress = progressReporter(deps, b, cancel);
  let result: UploadResult;
  try {
    result = await client.uploadBlob(
      b.repo,
      blobSourceOf(layer, (x) => (diffId = x), progress.opened, shared),
      {
        chunkSize: deps.chunkSize,
        // Stops on a cancel, and on a lost lease — also in the middle of a back-off.
        signal: AbortSignal.any([cancel.signal, leaseLost]),
        resumeSession: earlier,
        onSession: rememberSession,
        // A transient failure keeps the session: the retry (maybe on another worker) resumes it
        // from the registry's offset; uploadFailure cancels it when the push's budget is spent.
        // An abort (cancel, lost lease) cancels it.
        keepSessionOnFailure: true,
        beforeCommit: async () => {
          if (!(await ctx.uploadLease.check(lease.key, lease.owner, lease.token))) {
            throw new LeaseLostError(lease.key);
          }
        },
        onProgress: progress.report,
      },
    );
  } catch (err) {
    await progress.flush();
    throw await uploadFailure(deps, b, err, cancel.signal, leaseLost);
  }
  await progress.flush();
  // Published only while the lease is still ours (checked inside the Lua script that writes).
  const published = await ctx.blobs.recordUpload({
    lease,
    registry: b.repo.registry,
    repository: b.repo.repository,
    digest: result.digest,
    ...(!layer.digest && diffId
      ? {
          compressed: {
            diffId,
            level: d.gzipLevel,
            zlib: zlibIdentity(d.gzipLevel),
            size: result.size,
          },
        }
      : {}),
  });
  if (!published) throw new LeaseLostError(lease.key);
  return finishUpload(deps, b, result, diffId, started);
}

/** The error an upload ends with: cancelled (layer marked so), a lost lease, or the client's own. */
async function uploadFailure(
  deps: UploadDeps,
  b: BlobJob,
  err: unknown,
  cancelled: AbortSignal,
  leaseLost: AbortSignal,
): Promise<unknown> {
  const { ctx } = deps;
  if (cancelled.aborted || (await ctx.store.isCancelled(b.d.pushId).catch(() => false))) {
    // The client cancelled the registry session (DELETE) on the abort.
    await ctx.connection.del(b.sessionKey).catch(() => undefined);
    await ctx.store.updateLayer(b.d.pushId, b.key, { state: 'cancelled' }).catch(() => undefined);
    return new CancelledError(b.d.pushId);
  }
  // The blob lease was lost (this worker stalled, Redis lost it): a retry looks again.
  if (leaseLost.aborted) return new LeaseLostError(b.leaseKey);
  await dropSessionIfFinal(deps, b, err);
  return err;
}

/**
 * The client kept the session on a transient failure for the retry; when
 * there will be none — the push's retry budget is spent (the wrapper gets the
 * same decision) — it is cancelled here.
 */
async function dropSessionIfFinal(deps: UploadDeps, b: BlobJob, err: unknown): Promise<void> {
  if (!deps.budget || isPermanent(err)) return;
  const decision = await deps.budget.decide(b.job, err).catch(() => undefined);
  if (!decision || decision.retry) return;
  await dropEarlierSession(deps, b).catch(() => undefined);
}

/** Records a finished upload in the push state and the metrics. */
async function finishUpload(
  deps: UploadDeps,
  b: BlobJob,
  result: UploadResult,
  diffId: string | undefined,
  started: number,
): Promise<LayerOutcome> {
  const { ctx, logger } = deps;
  const state = result.mountedFrom ? 'mounted' : 'uploaded';
  // bytesSent was added up as the bytes went out (progressReporter), every attempt included.
  await ctx.store.updateLayer(b.d.pushId, b.key, {
    state,
    digest: result.digest,
    size: result.size,
    ...(result.mountedFrom ? { mountedFrom: result.mountedFrom } : {}),
  });
  await ctx.metrics.inc('ferry_blobs_total', { result: state }).catch(() => undefined);
  await ctx.metrics
    .observe('ferry_blob_upload_duration_seconds', (Date.now() - started) / 1000)
    .catch(() => undefined);
  logger.info(
    `pushed ${result.digest} (${result.size} bytes, ${result.bytesSent} sent, ${result.restarts} restarts, ${result.resumes} resumes) to ${b.repo.repository}`,
  );
  return {
    ...b.base,
    state,
    digest: result.digest,
    size: result.size,
    diffId,
    mountedFrom: result.mountedFrom,
  };
}

/** Starts the upload role. */
export async function start(config: FerryConfig, logger: Logger): Promise<RoleHandle> {
  const log = logger.child({ role: 'upload' });
  const client = createRegistryClient(config, log);
  const sources = sharedSourceCache(config, log);
  return startWorker<UploadJob, LayerOutcome>({
    role: 'upload',
    queueName: QUEUE_NAMES.upload,
    concurrency: config.uploadConcurrency,
    config,
    logger: log,
    processor: (ctx, { budget }) =>
      uploadProcessor({
        ctx,
        budget,
        client,
        sources,
        logger: log,
        chunkSize: config.uploadChunkSize,
        // The blob lease lapses as fast as the job lock: a dead uploader blocks nobody for long.
        leaseMs: config.jobLockTimeout * 1000,
      }),
    closables: [{ name: 'registry client', close: () => client.close() }],
  });
}
