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
 */
import { hostname } from 'node:os';
import { DelayedError, type Job } from 'bullmq';
import type { FerryConfig } from '@ferry/config';
import { zlibIdentity, type Layer } from '@ferry/image-source';
import type { Logger } from '@ferry/log';
import { QUEUE_NAMES, type QueueContext, type UploadJob } from '@ferry/queue';
import type { BlobSource, RegistryClient, RepoRef } from '@ferry/registry-client';
import {
  assertActive,
  blobLeaseKey,
  currentLayerJob,
  LeaseLostError,
  PushRequests,
  findInRegistry,
  markPresent,
  CancelledError,
  createRegistryClient,
  layerOf,
  SourceCache,
  startWorker,
  targetRepo,
  type LayerOutcome,
  type RoleHandle,
} from '@ferry/runtime';

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
}

const PROGRESS_EVERY_MS = 500;

export function uploadProcessor(deps: UploadDeps) {
  const { ctx, client, sources } = deps;
  const requests = deps.requests ?? new PushRequests(ctx.store);
  const leaseMs = deps.leaseMs ?? 30_000;
  const waitMs = deps.waitMs ?? 1_000;
  const owner = `${hostname()}-${process.pid}`;

  return async (job: Job<UploadJob>, token?: string): Promise<LayerOutcome> => {
    const d = await currentLayerJob<UploadJob>(job.data, requests);
    await assertActive(ctx, d.pushId);
    const repo = targetRepo(d.target);
    const layer = await layerOf(sources, d);
    const key = { imageIndex: d.imageIndex, index: d.layerIndex };
    const base = { imageIndex: d.imageIndex, layerIndex: d.layerIndex, mediaType: layer.mediaType };
    const diffId = layer.diffId ?? d.diffId;
    const leaseKey = blobLeaseKey(
      repo.registry,
      layer.digest,
      diffId,
      d.gzipLevel,
      zlibIdentity(d.gzipLevel),
    );
    // The session an earlier attempt of this blob into this repository left open, if any.
    const sessionKey = `${ctx.queues.prefix}:upload-session:${leaseKey}:${repo.repository}`;
    // Unique per run of the job: a stalled run and its successor never share the lease.
    const leaseOwner = `${owner}-${job.id}-${token ?? job.attemptsMade}`;
    /** A session left open by an earlier attempt is cancelled once the blob needs no upload. */
    const dropEarlierSession = async () => {
      const earlier = await ctx.connection.get(sessionKey);
      if (!earlier) return;
      await client.cancelUpload(repo, earlier).catch(() => undefined);
      await ctx.connection.del(sessionKey);
    };

    /** The blob is in the target already, or can be mounted there: no bytes to send. */
    const presentOrMount = async (): Promise<LayerOutcome | undefined> => {
      let digest = layer.digest;
      if (!digest && diffId) {
        digest = (await ctx.blobs.lookupCompressed(diffId, d.gzipLevel, zlibIdentity(d.gzipLevel)))
          ?.digest;
      }
      if (!digest) return undefined;
      const found = await findInRegistry(ctx, client, repo, digest, { logger: deps.logger });
      if (!found) return undefined;
      await dropEarlierSession();
      await markPresent(ctx, d.pushId, key, repo, found);
      return { ...base, ...found, diffId };
    };

    const fence = await ctx.uploadLease.acquire(leaseKey, leaseOwner, leaseMs);
    if (fence === null) {
      const found = await presentOrMount();
      if (found) return found;
      // Another worker is uploading this blob: wait without holding a slot, looking
      // again less often the longer it takes (1 s, 2 s, 4 s … up to 30 s).
      const waits = (d.waits ?? 0) + 1;
      await job.updateData({ ...d, waits });
      const delay =
        Math.min(30_000, waitMs * 2 ** Math.min(waits - 1, 5)) * (1 + Math.random() / 2);
      await job.moveToDelayed(Date.now() + Math.floor(delay), token);
      throw new DelayedError();
    }

    let renewFailed = false;
    const renew = setInterval(
      () => {
        ctx.uploadLease
          .renew(leaseKey, leaseOwner, fence, leaseMs)
          .then((ok) => {
            if (!ok) renewFailed = true;
          })
          .catch(() => undefined);
      },
      Math.max(100, Math.floor(leaseMs / 3)),
    );
    try {
      // The holder before us may have finished it.
      const found = await presentOrMount();
      if (found) return found;
      return await upload(
        deps,
        job,
        repo,
        layer,
        key,
        base,
        diffId,
        leaseKey,
        sessionKey,
        () => renewFailed,
      );
    } finally {
      clearInterval(renew);
      await ctx.uploadLease.release(leaseKey, leaseOwner, fence).catch(() => undefined);
    }
  };
}

async function upload(
  deps: UploadDeps,
  job: Job<UploadJob>,
  repo: RepoRef,
  layer: Layer,
  key: { imageIndex: number; index: number },
  base: { imageIndex: number; layerIndex: number; mediaType: string },
  knownDiffId: string | undefined,
  leaseKey: string,
  sessionKey: string,
  leaseLost: () => boolean,
): Promise<LayerOutcome> {
  const { ctx, client, logger } = deps;
  const d = job.data;
  const earlier = (await ctx.connection.get(sessionKey)) ?? undefined;
  const attemptsLeft = job.attemptsMade + 1 < (job.opts.attempts ?? 1);
  const rememberSession = (location: string | undefined) => {
    const op = location
      ? ctx.connection.set(sessionKey, location, 'EX', 24 * 3600)
      : ctx.connection.del(sessionKey);
    void op.catch(() => undefined);
  };
  const started = Date.now();
  await ctx.store.updateLayer(d.pushId, key, {
    state: 'uploading',
    bytesSent: 0,
    ...(layer.digest ? { digest: layer.digest } : {}),
    ...(layer.size !== undefined ? { size: layer.size } : {}),
  });
  let diffId = knownDiffId;
  let lastReport = 0;
  let reported = 0;
  const abort = new AbortController();
  let cancelledCheck = 0;
  const source: BlobSource = {
    size: layer.size,
    digest: layer.digest,
    open: async (offset: number) => {
      const s = await layer.open(offset);
      const done = s.done.then((r) => {
        diffId = r.diffId;
        return { digest: r.digest, size: r.size };
      });
      // The client may abandon a stream (a cut, a retry) without awaiting its end.
      done.catch(() => undefined);
      return { stream: s.stream, done };
    },
  };
  const result = await client
    .uploadBlob(repo, source, {
      chunkSize: deps.chunkSize,
      signal: abort.signal,
      resumeSession: earlier,
      onSession: rememberSession,
      // A retry (maybe on another worker) resumes the session from the registry's offset.
      keepSessionOnFailure: attemptsLeft,
      onProgress: (bytesSent) => {
        const now = Date.now();
        if (now - lastReport < PROGRESS_EVERY_MS) return;
        lastReport = now;
        reported = bytesSent;
        void ctx.store
          .updateLayer(d.pushId, key, { state: 'uploading', bytesSent })
          .catch(() => undefined);
        void job.updateProgress({ bytesSent }).catch(() => undefined);
        if (now - cancelledCheck > 2_000) {
          cancelledCheck = now;
          void ctx.store
            .isCancelled(d.pushId)
            .then((c) => {
              if (c || leaseLost()) abort.abort();
            })
            .catch(() => undefined);
        }
      },
    })
    .catch(async (err: unknown) => {
      if (abort.signal.aborted) {
        if (await ctx.store.isCancelled(d.pushId)) throw new CancelledError(d.pushId);
        // The blob lease was lost (this worker stalled): let a retry look again.
        throw new LeaseLostError(leaseKey);
      }
      throw err;
    });
  void reported;
  await ctx.blobs.recordBlob(repo.registry, repo.repository, result.digest);
  if (!layer.digest && diffId) {
    await ctx.blobs.cacheCompressed(
      diffId,
      d.gzipLevel,
      zlibIdentity(d.gzipLevel),
      result.digest,
      result.size,
    );
  }
  await ctx.store.updateLayer(d.pushId, key, {
    state: result.mountedFrom ? 'mounted' : 'uploaded',
    digest: result.digest,
    size: result.size,
    bytesSent: result.bytesSent,
    ...(result.mountedFrom ? { mountedFrom: result.mountedFrom } : {}),
  });
  await ctx.metrics
    .inc('ferry_blobs_total', { result: result.mountedFrom ? 'mounted' : 'uploaded' })
    .catch(() => undefined);
  await ctx.metrics.inc('ferry_bytes_uploaded_total', {}, result.bytesSent).catch(() => undefined);
  await ctx.metrics
    .observe('ferry_blob_upload_duration_seconds', (Date.now() - started) / 1000)
    .catch(() => undefined);
  logger.info(
    `pushed ${result.digest} (${result.size} bytes, ${result.bytesSent} sent, ${result.restarts} restarts, ${result.resumes} resumes) to ${repo.repository}`,
  );
  return {
    ...base,
    state: result.mountedFrom ? 'mounted' : 'uploaded',
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
  const sources = new SourceCache(config, log);
  return startWorker<UploadJob, LayerOutcome>({
    role: 'upload',
    queueName: QUEUE_NAMES.upload,
    concurrency: config.uploadConcurrency,
    config,
    logger: log,
    processor: (ctx) =>
      uploadProcessor({
        ctx,
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
