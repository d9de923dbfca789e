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
import { zlibIdentity } from '@ferry/image-source';
import type { Logger } from '@ferry/log';
import {
  addUploadChild,
  JOB_VERSION,
  QUEUE_NAMES,
  type LookupJob,
  type QueueContext,
  type UploadJob,
} from '@ferry/queue';
import type { RegistryClient } from '@ferry/registry-client';
import {
  assertActive,
  currentLayerJob,
  createRegistryClient,
  findInRegistry,
  markPresent,
  layerOf,
  PushRequests,
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
}

export function lookupProcessor(deps: LookupDeps) {
  const { ctx, client, sources, requests, logger } = deps;
  return async (job: Job<LookupJob>): Promise<LayerOutcome> => {
    const d = await currentLayerJob<LookupJob>(job.data, requests);
    await assertActive(ctx, d.pushId);
    await ctx.store.setStatus(d.pushId, 'running');
    const repo = targetRepo(d.target);
    const layer = await layerOf(sources, d);
    const key = { imageIndex: d.imageIndex, index: d.layerIndex };
    const base = { imageIndex: d.imageIndex, layerIndex: d.layerIndex, mediaType: layer.mediaType };

    // 1. The candidate digest: stated by the source, or suggested by the cache.
    let digest = layer.digest;
    let size = layer.size;
    let diffId = layer.diffId;
    // The uncompressed tar's size of a layer Ferry compresses: the upload shows progress over it.
    let total: number | undefined;
    if (!digest) {
      const r = await layer.diffIdOnly();
      diffId = r.diffId;
      if (r.uncompressedSize >= 0) total = r.uncompressedSize;
      const cached = await ctx.blobs.lookupCompressed(
        diffId,
        d.gzipLevel,
        zlibIdentity(d.gzipLevel),
      );
      if (cached) {
        digest = cached.digest;
        size = cached.size;
      }
    }

    if (digest) {
      // 2. HEAD on the target; 3. else a cross-repository mount from where Ferry pushed it before.
      const found = await findInRegistry(ctx, client, repo, digest, {
        permitTimeoutMs: deps.permitTimeoutMs,
        sizeHint: size,
        logger,
      });
      if (found) {
        logger.info(
          found.state === 'exists'
            ? `layer ${digest} already exists in ${repo.repository}, skipping`
            : `layer ${digest} mounted from ${found.mountedFrom} into ${repo.repository}`,
        );
        await markPresent(ctx, d.pushId, key, repo, found);
        return { ...base, ...found, diffId };
      }
    }

    // 4. Missing: hand it to an upload job in the same flow, before this job completes.
    const upload: UploadJob = {
      v: JOB_VERSION,
      pushId: d.pushId,
      imageIndex: d.imageIndex,
      layerIndex: d.layerIndex,
      source: d.source,
      target: d.target,
      gzipLevel: d.gzipLevel,
      ...(d.platform !== undefined ? { platform: d.platform } : {}),
      ...(d.dirOptions ? { dirOptions: d.dirOptions } : {}),
      ...(d.pin ? { pin: d.pin } : {}),
      ...(diffId ? { diffId } : {}),
    };
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
    return { ...base, state: 'upload', digest: layer.digest, size: layer.size, diffId };
  };
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
      lookupProcessor({ ctx, client, sources, requests: new PushRequests(ctx.store), logger: log }),
    closables: [{ name: 'registry client', close: () => client.close() }],
  });
  return handle;
}
