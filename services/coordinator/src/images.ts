/**
 * Building and pushing one source's images into one repository: config blobs
 * (HEAD-then-mount, else a monolithic PUT), each image manifest by digest —
 * kept byte for byte when nothing about it changes (an OCI layout's stored
 * manifest, a docker:// copy), else built from the layer results — and the
 * index above them when a multi-platform source is pushed whole.
 */
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
import type { QueueContext, TaggedManifest } from '@ferry/queue';
import { bufferBlobSource, type RegistryClient, type RepoRef } from '@ferry/registry-client';
import { findInRegistry, PermanentError, type LayerOutcome } from '@ferry/runtime';
import type { CoordinatorDeps } from './index';

export const MANIFEST_FAMILY: Record<string, ManifestFormat> = {
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
    // A whole image's lookup: where it found the config (`<image>/config`; see configState).
    const c = v && typeof v === 'object' ? v.config : undefined;
    if (!c || typeof c.digest !== 'string' || !c.targets) continue;
    const state = target !== undefined ? c.targets[target] : Object.values(c.targets)[0];
    if (state) {
      out.set(configKey(v.imageIndex), {
        imageIndex: v.imageIndex,
        layerIndex: -1,
        mediaType: '',
        digest: c.digest,
        state: state === 'missing' ? 'upload' : state,
      });
    }
  }
  // A lookup job of a whole image answers for each of its layers.
  const each = Object.values(values).flatMap((v) =>
    v && typeof v === 'object' && Array.isArray(v.layers) ? v.layers : [v],
  );
  for (const v of each) {
    if (!v || typeof v !== 'object' || typeof v.imageIndex !== 'number') continue;
    if (v.state === 'resolved' || v.layerIndex < 0) continue;
    const t = target !== undefined ? v.targets?.[target] : undefined;
    // A fan-out job's result that does not name this target (an upload for other targets) says nothing of it.
    if (target !== undefined && !t) continue;
    const r: LayerOutcome = t ? { ...v, ...t, targets: undefined } : v;
    const k = `${v.imageIndex}/${v.layerIndex}`;
    const prev = out.get(k);
    if (!prev || prev.state === 'upload') out.set(k, r);
  }
  return out;
}

/** Where layerResults keeps what a lookup found of an image's config blob. */
export function configKey(imageIndex: number): string {
  return `${imageIndex}/config`;
}

/**
 * What the lookup found of this config blob in the target: 'present' (it
 * HEADed or mounted it), 'missing' (HEAD and mounts found nothing), or
 * undefined — not looked for, or another config than the one to push.
 */
function configState(
  results: Map<string, LayerOutcome>,
  imageIndex: number,
  config: Canonical,
): 'present' | 'missing' | undefined {
  const r = results.get(configKey(imageIndex));
  if (!r || r.digest !== config.digest) return undefined;
  if (r.state === 'exists' || r.state === 'mounted') return 'present';
  return r.state === 'upload' ? 'missing' : undefined;
}

export interface PushedImage {
  manifest: Canonical;
  platform?: SourceImage['platform'];
}

/**
 * Puts a config blob unless the repository has it or can mount it (the shared
 * HEAD-then-mount) — or at once when the lookup just found it missing there.
 */
async function pushBlobIfMissing(
  ctx: QueueContext,
  client: RegistryClient,
  repo: RepoRef,
  c: Canonical,
  logger: Logger,
  knownMissing = false,
): Promise<void> {
  const found = knownMissing
    ? undefined
    : await findInRegistry(ctx, client, repo, c.digest, { sizeHint: c.size, logger });
  if (found) {
    if (found.state === 'mounted')
      logger.info(`config ${c.digest} mounted from ${found.mountedFrom}`);
    return;
  }
  await client.uploadBlob(repo, bufferBlobSource(c.bytes, c.digest), { monolithic: true });
}

/** Config + manifest of one image, built from the layer results (or kept as stored when nothing changed). */
export function assembleImage(
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

/**
 * Each image's config blob and manifest, by digest. With byTag (one image, no
 * index, nothing to sign or copy before the tags) the manifest is left to the
 * tag PUTs: the first of them stores it, one registry request less.
 */
export async function pushImages(
  deps: CoordinatorDeps,
  pushId: string,
  repo: RepoRef,
  opened: OpenedSource,
  results: Map<string, LayerOutcome>,
  format: ManifestFormat,
  byTag = false,
): Promise<{ pushed: PushedImage[]; keptAll: boolean; unstored?: PushedImage }> {
  const { ctx, client, logger } = deps;
  const pushed: PushedImage[] = [];
  let keptAll = true;
  // Redis writes overlap the registry requests; all of them are done before this returns.
  const writes: Promise<unknown>[] = [];
  for (const [i, image] of opened.images.entries()) {
    const { config, manifest } = assembleImage(image, i, results, format);
    if (!image.manifestBytes || manifest.digest !== image.manifestDigest) keptAll = false;
    // The lookup of the whole image looked for its config beside the layers (and recorded it).
    const known = configState(results, i, config);
    if (known !== 'present') {
      await pushBlobIfMissing(ctx, client, repo, config, logger, known === 'missing');
      writes.push(ctx.blobs.recordBlob(repo.registry, repo.repository, config.digest));
    }
    const one: PushedImage = { manifest, platform: image.platform };
    pushed.push(one);
    if (byTag && opened.images.length === 1 && !opened.indexBytes) {
      await Promise.all(writes);
      return { pushed, keptAll, unstored: one };
    }
    await client.putManifest(repo, manifest.digest, manifest.bytes, manifest.mediaType);
    writes.push(manifestEvent(deps, pushId, manifest, image.platform));
  }
  await Promise.all(writes);
  return { pushed, keptAll };
}

/** The `manifest` event of a manifest the registry now holds. */
export function manifestEvent(
  deps: CoordinatorDeps,
  pushId: string,
  manifest: Canonical,
  platform?: SourceImage['platform'],
): Promise<unknown> {
  return deps.ctx.store.appendEvent(pushId, {
    type: 'manifest',
    digest: manifest.digest,
    mediaType: manifest.mediaType,
    size: manifest.size,
    ...(platform ? { platform: formatPlatform(platform) } : {}),
  });
}

/** What the tags will name: the one manifest, or the index of a multi-platform (or stored-index) source. */
export async function pushTop(
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
