/**
 * coordinator: the parent job of a push's flow. Runs once every layer is in
 * the registry. Writes the config blob (as stated by the source, or built from
 * the diffIDs of the bytes pushed), each image manifest by digest, the index
 * when a multi-platform source is pushed whole, then signs (the signing issue
 * fills that step) and only then tags, so a tag never points at an unsigned
 * image. The registry's Docker-Content-Digest is checked against the bytes sent
 * (registry-client does that on every manifest PUT).
 */
import type { Job } from 'bullmq';
import type { FerryConfig } from '@ferry/config';
import type { OpenedSource, SourceImage } from '@ferry/image-source';
import type { Logger } from '@ferry/log';
import {
  buildConfig,
  buildIndex,
  buildManifest,
  canonicalOf,
  convertLayerMediaType,
  formatPlatform,
  isIndexMediaType,
  MediaTypes,
  parseManifest,
  type Canonical,
  type Descriptor,
  type ManifestFormat,
} from '@ferry/manifest';
import {
  QUEUE_NAMES,
  type AssembleJob,
  type PushRequest,
  type TargetResult,
  type PushResult,
  type QueueContext,
  type TaggedManifest,
} from '@ferry/queue';
import {
  bufferBlobSource,
  parseReference,
  type RegistryClient,
  type RepoRef,
} from '@ferry/registry-client';
import {
  createRegistryClient,
  findInRegistry,
  finishPush,
  isPermanent,
  PermanentError,
  SourceCache,
  sharedSourceCache,
  startWorker,
  type LayerOutcome,
  type OpenedImages,
  type RoleHandle,
} from '@ferry/runtime';
import { copySignatures, signatureTag } from './copy-signatures';

export interface CoordinatorDeps {
  ctx: QueueContext;
  client: RegistryClient;
  sources: SourceCache;
  logger: Logger;
  /** FERRY_GZIP_LEVEL, for version-1 payloads that did not carry the push's level. */
  gzipLevel?: number;
}

const MANIFEST_FAMILY: Record<string, ManifestFormat> = {
  [MediaTypes.ociManifest]: 'oci',
  [MediaTypes.ociIndex]: 'oci',
  [MediaTypes.dockerManifest]: 'docker',
  [MediaTypes.dockerManifestList]: 'docker',
};

/**
 * Layer results of the flow's children for one target: an upload's result
 * wins over its lookup's hand-off. Version-3 results carry one entry per
 * target (fan-out); older ones describe the one target.
 */
export function layerResults(
  values: Record<string, LayerOutcome>,
  target?: string,
): Map<string, LayerOutcome> {
  const out = new Map<string, LayerOutcome>();
  for (const v of Object.values(values)) {
    if (!v || typeof v !== 'object' || typeof v.imageIndex !== 'number') continue;
    if (v.state === 'resolved' || v.layerIndex < 0) continue;
    const t = target !== undefined ? v.targets?.[target] : undefined;
    const r: LayerOutcome = t ? { ...v, ...t, targets: undefined } : v;
    const k = `${v.imageIndex}/${v.layerIndex}`;
    const prev = out.get(k);
    if (!prev || prev.state === 'upload') out.set(k, r);
  }
  return out;
}

interface PushedImage {
  manifest: Canonical;
  platform?: SourceImage['platform'];
}

/** Puts a config blob unless the repository has it or can mount it (the shared HEAD-then-mount). */
async function pushBlobIfMissing(
  ctx: QueueContext,
  client: RegistryClient,
  repo: RepoRef,
  c: Canonical,
  logger: Logger,
): Promise<void> {
  const found = await findInRegistry(ctx, client, repo, c.digest, { sizeHint: c.size, logger });
  if (found) {
    if (found.state === 'mounted')
      logger.info(`config ${c.digest} mounted from ${found.mountedFrom}`);
    return;
  }
  await client.uploadBlob(repo, bufferBlobSource(c.bytes, c.digest), { monolithic: true });
}

/** Config + manifest of one image, built from the layer results (or kept as stored when nothing changed). */
function assembleImage(
  image: SourceImage,
  imageIndex: number,
  results: Map<string, LayerOutcome>,
  format: ManifestFormat,
): { config: Canonical; manifest: Canonical } {
  const layers: Descriptor[] = [];
  const diffIds: string[] = [];
  image.layers.forEach((layer, i) => {
    const r = results.get(`${imageIndex}/${i}`);
    if (r?.state === 'failed') {
      const e = (r as LayerOutcome & { error?: { code: string; message: string } }).error;
      throw new PermanentError(
        e?.code ?? 'FERRY_LAYER_MISSING',
        `layer ${i} of image ${imageIndex}: ${e?.message ?? 'failed'}`,
      );
    }
    if (!r || r.state === 'upload' || !r.digest || r.size === undefined) {
      throw new PermanentError(
        'FERRY_LAYER_MISSING',
        `layer ${i} of image ${imageIndex} (${layer.description}) has no pushed blob`,
      );
    }
    if (layer.digest && layer.digest !== r.digest) {
      // The source was changed after the push was planned: never mix old layers and a new config.
      throw new PermanentError(
        'FERRY_SOURCE_CHANGED',
        `layer ${i} of image ${imageIndex} (${layer.description}) is now ${layer.digest}, but ${r.digest} was pushed`,
      );
    }
    layers.push({ mediaType: layer.mediaType, digest: r.digest, size: r.size });
    // The diffID the workers computed from the bytes they read (or, for a stated
    // config, the one it states — that config is pushed as it is).
    diffIds.push(r.diffId ?? (image.configBytes ? (layer.diffId ?? '') : ''));
  });

  let config: Canonical;
  if (image.configBytes) {
    config = canonicalOf(
      image.configBytes,
      image.configMediaType ?? (format === 'oci' ? MediaTypes.ociConfig : MediaTypes.dockerConfig),
    );
  } else {
    if (diffIds.some((x) => !x)) {
      throw new PermanentError(
        'FERRY_LAYER_MISSING',
        'a layer has no diffID to build the config from',
      );
    }
    config = buildConfig(image.configFields, diffIds, {
      history: image.layerNames?.map((n) => `ferry: layers/${n}`),
    });
  }

  // An OCI layout's stored manifest is pushed as is when nothing about it changes: digests preserved.
  if (
    image.manifestBytes &&
    image.manifestMediaType &&
    MANIFEST_FAMILY[image.manifestMediaType] === format
  ) {
    const stored = parseManifest(image.manifestBytes, image.manifestMediaType);
    const same =
      stored.config?.digest === config.digest &&
      (stored.layers ?? []).length === layers.length &&
      (stored.layers ?? []).every((l, i) => l.digest === layers[i].digest);
    if (same)
      return { config, manifest: canonicalOf(image.manifestBytes, image.manifestMediaType) };
  }
  const manifest = buildManifest(
    format,
    { mediaType: config.mediaType, digest: config.digest, size: config.size },
    layers.map((l) => ({ ...l, mediaType: convertLayerMediaType(l.mediaType, format) })),
  );
  return { config, manifest };
}

function topIndex(
  opened: OpenedSource,
  pushed: PushedImage[],
  format: ManifestFormat,
  keptAll: boolean,
): Canonical {
  if (
    keptAll &&
    opened.indexBytes &&
    opened.indexMediaType &&
    isIndexMediaType(opened.indexMediaType) &&
    MANIFEST_FAMILY[opened.indexMediaType] === format
  ) {
    const stored = parseManifest(opened.indexBytes, opened.indexMediaType);
    const digests = new Set(pushed.map((p) => p.manifest.digest));
    if ((stored.manifests ?? []).every((m) => digests.has(m.digest))) {
      return canonicalOf(opened.indexBytes, opened.indexMediaType);
    }
  }
  return buildIndex(
    format,
    pushed.map((p) => ({
      mediaType: p.manifest.mediaType,
      digest: p.manifest.digest,
      size: p.manifest.size,
      ...(p.platform ? { platform: p.platform } : {}),
    })),
  );
}

/** The API refuses signing and schema1 until the signers exist; a job carrying them anyway is not pushed unsigned. */
function refuseUnsigned(request: AssembleJob['request']): void {
  const sign = request.sign;
  const wantsSigning = sign === true || (typeof sign === 'object' && (sign.cosign || sign.pgp));
  if (request.schema1 || wantsSigning) {
    throw new PermanentError(
      'FERRY_SIGNING_NOT_CONFIGURED',
      'signing and schema1 manifests are not available on this server yet',
    );
  }
}

/** Each image's config blob and manifest, by digest. */
async function pushImages(
  deps: CoordinatorDeps,
  pushId: string,
  repo: RepoRef,
  opened: OpenedSource,
  results: Map<string, LayerOutcome>,
  format: ManifestFormat,
): Promise<{ pushed: PushedImage[]; keptAll: boolean }> {
  const { ctx, client, logger } = deps;
  const pushed: PushedImage[] = [];
  let keptAll = true;
  for (const [i, image] of opened.images.entries()) {
    const { config, manifest } = assembleImage(image, i, results, format);
    if (!image.manifestBytes || manifest.digest !== image.manifestDigest) keptAll = false;
    await pushBlobIfMissing(ctx, client, repo, config, logger);
    await ctx.blobs.recordBlob(repo.registry, repo.repository, config.digest);
    await client.putManifest(repo, manifest.digest, manifest.bytes, manifest.mediaType);
    await ctx.store.appendEvent(pushId, {
      type: 'manifest',
      digest: manifest.digest,
      mediaType: manifest.mediaType,
      size: manifest.size,
      ...(image.platform ? { platform: formatPlatform(image.platform) } : {}),
    });
    pushed.push({ manifest, platform: image.platform });
  }
  return { pushed, keptAll };
}

/** What the tags will name: the one manifest, or the index of a multi-platform (or stored-index) source. */
async function pushTop(
  deps: CoordinatorDeps,
  pushId: string,
  repo: RepoRef,
  opened: OpenedSource,
  images: { pushed: PushedImage[]; keptAll: boolean },
  format: ManifestFormat,
): Promise<{ top: Canonical; manifests: TaggedManifest[] }> {
  const { pushed, keptAll } = images;
  if (pushed.length === 1 && !opened.indexBytes) return { top: pushed[0].manifest, manifests: [] };
  const top = topIndex(opened, pushed, format, keptAll);
  await deps.client.putManifest(repo, top.digest, top.bytes, top.mediaType);
  await deps.ctx.store.appendEvent(pushId, {
    type: 'manifest',
    digest: top.digest,
    mediaType: top.mediaType,
    size: top.size,
  });
  const manifests = pushed.map((p) => ({
    digest: p.manifest.digest,
    mediaType: p.manifest.mediaType,
    size: p.manifest.size,
    ...(p.platform ? { platform: formatPlatform(p.platform) } : {}),
  }));
  return { top, manifests };
}

/** The family (oci / docker) of a copied docker:// source: its manifests are kept as they are. */
function sourceFormat(opened: OpenedSource): ManifestFormat | undefined {
  if (!opened.registrySource) return undefined;
  const mt = opened.indexMediaType ?? opened.images[0]?.manifestMediaType;
  return mt ? MANIFEST_FAMILY[mt] : undefined;
}

/** One tag's images of an --all-tags copy see the layer results from their own position. */
function shifted(results: Map<string, LayerOutcome>, first: number): Map<string, LayerOutcome> {
  if (first === 0) return results;
  const out = new Map<string, LayerOutcome>();
  for (const [k, v] of results) {
    const [img, layer] = k.split('/').map(Number);
    if (img >= first) out.set(`${img - first}/${layer}`, v);
  }
  return out;
}

/** One image (or index) of a target: config blobs, manifests by digest, copied signatures. */
async function pushOne(
  deps: CoordinatorDeps,
  pushId: string,
  request: PushRequest,
  repo: RepoRef,
  opened: OpenedSource,
  results: Map<string, LayerOutcome>,
): Promise<{ top: Canonical; manifests: TaggedManifest[] }> {
  const { ctx, client } = deps;
  const format: ManifestFormat = sourceFormat(opened) ?? request.format ?? 'oci';
  const images = await pushImages(deps, pushId, repo, opened, results, format);
  const pushed = await pushTop(deps, pushId, repo, opened, images, format);
  const { top } = pushed;
  // A copy brings the source's cosign signatures of that digest along (they sign the same bytes).
  const src = opened.registrySource;
  if (src && request.copySignatures !== false) {
    const n = await copySignatures(client, src, repo, top.digest);
    if (n > 0) {
      await ctx.store.appendEvent(pushId, {
        type: 'log',
        level: 'info',
        message: `copied ${n} cosign signature(s) of ${top.digest} (${signatureTag(top.digest)}) to ${repo.registry}/${repo.repository}`,
      });
    }
  }

  // Signing goes here (the signing issue): sign `top` before any tag points at it.

  return pushed;
}

/**
 * One target: every image pushed and signed first, then the tags — the
 * target's tag and the extra tags, or for an --all-tags copy each source tag
 * on its own image.
 */
async function pushToTarget(
  deps: CoordinatorDeps,
  pushId: string,
  request: PushRequest,
  target: string,
  opened: OpenedImages,
  results: Map<string, LayerOutcome>,
): Promise<{ result: PushResult } | { cancelled: true }> {
  const { ctx, client, logger } = deps;
  const ref = parseReference(target);
  const repo = { registry: ref.registry, repository: ref.repository };
  const parts = opened.parts ?? [{ tag: undefined, opened, first: 0 }];
  const tops: { tags: string[]; top: Canonical; manifests: TaggedManifest[] }[] = [];
  for (const part of parts) {
    const one = await pushOne(
      deps,
      pushId,
      request,
      repo,
      part.opened,
      shifted(results, part.first),
    );
    const main = ref.tag ?? 'latest';
    const tags =
      part.tag !== undefined ? [part.tag] : [main, ...request.tags.filter((t) => t !== main)];
    tops.push({ tags: [...new Set(tags)], ...one });
  }
  if (await ctx.store.isCancelled(pushId)) return { cancelled: true };
  for (const { tags, top } of tops) {
    for (const tag of tags) {
      await client.putManifest(repo, tag, top.bytes, top.mediaType);
      await ctx.store.appendEvent(pushId, { type: 'tag', tag, digest: top.digest });
    }
  }
  const { top } = tops[0];
  logger.info(
    `push ${pushId}: ${target} is ${top.digest}${tops.length > 1 ? ` (+${tops.length - 1} tags)` : ''}`,
  );
  const manifests = opened.parts
    ? tops.map((t) => ({
        tag: t.tags[0],
        digest: t.top.digest,
        mediaType: t.top.mediaType,
        size: t.top.size,
      }))
    : tops[0].manifests;
  return {
    result: {
      manifest: { digest: top.digest, mediaType: top.mediaType, size: top.size },
      ...(manifests.length ? { manifests } : {}),
    },
  };
}

/** The request with its pin: a docker:// push's is recorded by its resolve job, after the enqueue. */
async function pinnedRequest(ctx: QueueContext, data: AssembleJob): Promise<PushRequest> {
  if (data.request.pin) return data.request;
  const state = await ctx.store.get(data.pushId);
  return state?.request ?? data.request;
}

export function assembleProcessor(deps: CoordinatorDeps) {
  const { ctx, sources, logger } = deps;
  const defaultGzipLevel = deps.gzipLevel ?? 6;
  return async (job: Job<AssembleJob>): Promise<PushResult | undefined> => {
    const { pushId } = job.data;
    const status = await ctx.store.status(pushId);
    if (status !== 'queued' && status !== 'running') {
      logger.info(`push ${pushId} is ${status ?? 'gone'}; nothing assembled`);
      return undefined;
    }
    const request = await pinnedRequest(ctx, job.data);
    refuseUnsigned(request);
    // Read through the pin: a source that changed since the accept fails FERRY_SOURCE_CHANGED.
    const opened = await sources.open({
      source: request.source,
      gzipLevel: job.data.gzipLevel ?? defaultGzipLevel, // version-1 payloads carried none
      ...(request.pin ? { pin: request.pin } : {}),
      ...(request.platform !== undefined ? { platform: request.platform } : {}),
      ...(request.dirOptions ? { dirOptions: request.dirOptions } : {}),
    });
    const children = (await job.getChildrenValues<LayerOutcome>()) as Record<string, LayerOutcome>;
    const targets = request.targets?.length ? request.targets : [request.target];
    const fanOut = targets.length > 1;
    const done: TargetResult[] = [];
    let first: PushResult | undefined;
    for (const target of targets) {
      try {
        const r = await pushToTarget(
          deps,
          pushId,
          request,
          target,
          opened,
          layerResults(children, fanOut ? target : undefined),
        );
        if ('cancelled' in r) {
          logger.info(`push ${pushId} was cancelled before tagging ${target}; no tag written`);
          return undefined;
        }
        first ??= r.result;
        done.push({ target, status: 'succeeded', manifest: r.result.manifest });
      } catch (err) {
        // One target's permanent failure is its own: the others are still pushed and tagged.
        if (!fanOut || !isPermanent(err)) throw err;
        const e = err as { code?: string; message: string };
        logger.warn(`push ${pushId}: target ${target} failed: ${e.message}`);
        done.push({
          target,
          status: 'failed',
          error: { code: e.code ?? 'FERRY_PUSH_FAILED', message: e.message },
        });
      }
    }
    const failed = done.filter((t) => t.status === 'failed');
    if (failed.length > 0) {
      const error = {
        code: failed[0].error?.code ?? 'FERRY_PUSH_FAILED',
        message: `${failed.length} of ${targets.length} targets failed: ${failed.map((t) => `${t.target}: ${t.error?.message ?? ''}`).join('; ')}`,
      };
      await finishPush(ctx, pushId, { error, targets: done }, logger);
      return undefined;
    }
    const result: PushResult = { ...(first as PushResult), ...(fanOut ? { targets: done } : {}) };
    await finishPush(ctx, pushId, result, logger);
    return result;
  };
}

/** Starts the coordinator role. */
export async function start(config: FerryConfig, logger: Logger): Promise<RoleHandle> {
  const log = logger.child({ role: 'coordinator' });
  const client = createRegistryClient(config, log);
  const sources = sharedSourceCache(config, log);
  return startWorker<AssembleJob, PushResult | undefined>({
    role: 'coordinator',
    queueName: QUEUE_NAMES.assemble,
    concurrency: 4,
    config,
    logger: log,
    processor: (ctx) =>
      assembleProcessor({ ctx, client, sources, logger: log, gzipLevel: config.gzipLevel }),
    closables: [{ name: 'registry client', close: () => client.close() }],
  });
}
