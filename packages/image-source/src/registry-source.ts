/**
 * `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` — an image in a registry, read
 * through an injected RegistryReader (the caller's client: its credentials,
 * its allowlist). Opening resolves the tag (or digest) to the top manifest and
 * verifies every manifest and config against its digest; the snapshot pins
 * them by digest, and a source opened through a snapshot fetches by digest
 * only, so a tag moved meanwhile never changes the push. Manifests, configs
 * and an index pushed whole are kept byte for byte (their digests are kept).
 */
import { createHash } from 'node:crypto';
import {
  MediaTypes,
  formatPlatform,
  isImageManifestMediaType,
  isIndexMediaType,
  parsePlatform,
  platformMatches,
  type Descriptor,
  type ParsedManifest,
} from '@ferry/manifest';
import { ErrorCodes, RegistryError } from '@ferry/registry-client';
import { SourceError, SourceErrorCodes } from './errors';
import {
  descriptorPlatform,
  invalid,
  parseOrThrow,
  platformOfConfig,
  statedDiffIds,
} from './oci-layout';
import { registryLayer, type BlobLocation } from './registry-source-blob';
import { sourceChanged, type RegistryManifestPin, type RegistrySnapshot } from './snapshot';
import type { DockerSourceSpec } from './spec';
import type { OpenOptions, OpenedSource, SourceImage } from './types';

/** What a docker:// source asks for: schema2 and OCI, never schema1 (refused when served anyway). */
export const REGISTRY_SOURCE_ACCEPT: readonly string[] = [
  MediaTypes.ociManifest,
  MediaTypes.ociIndex,
  MediaTypes.dockerManifest,
  MediaTypes.dockerManifestList,
];
/** The largest manifest or config read into memory. */
export const MAX_REGISTRY_JSON = 4 * 1024 * 1024;

const SCHEMA1_TYPES = new Set<string>([MediaTypes.dockerSchema1, MediaTypes.dockerSchema1Signed]);

const sha256 = (b: Buffer): string => 'sha256:' + createHash('sha256').update(b).digest('hex');

interface Ctx extends BlobLocation {
  spec: DockerSourceSpec;
  /** `docker://host/repo` for messages. */
  name: string;
}

function corrupt(what: string, digest: string, got: Buffer, size?: number): SourceError {
  return new SourceError(
    SourceErrorCodes.BLOB_DIGEST_MISMATCH,
    `${what}: the ${got.length} bytes received hash to ${sha256(got)}, not ${digest}` +
      (size !== undefined ? ` (${size} bytes stated)` : ''),
    digest,
  );
}

function isSchema1(mediaType: string, body: Buffer): boolean {
  if (SCHEMA1_TYPES.has(mediaType)) return true;
  try {
    return (JSON.parse(body.toString('utf8')) as { schemaVersion?: unknown }).schemaVersion === 1;
  } catch {
    return false;
  }
}

/**
 * GET a manifest by tag or digest and verify it: its sha256 against the digest
 * asked for (or, for a tag, the digest the registry states when the reader
 * reports it) and against `want` (a descriptor's digest and size).
 */
async function fetchManifest(
  ctx: Ctx,
  reference: string,
  want: { digest: string; size?: number } | undefined,
  pinned: boolean,
): Promise<{ bytes: Buffer; mediaType: string; digest: string; parsed: ParsedManifest }> {
  const what = `${ctx.name}${reference.includes(':') ? '@' : ':'}${reference}`;
  let got;
  try {
    got = await ctx.reader.getManifest(
      { registry: ctx.registry, repository: ctx.repository },
      reference,
      [...REGISTRY_SOURCE_ACCEPT],
    );
  } catch (e) {
    if (
      e instanceof RegistryError &&
      (e.code === ErrorCodes.MANIFEST_UNKNOWN || e.code === ErrorCodes.REPOSITORY_NOT_FOUND)
    ) {
      if (pinned) {
        throw sourceChanged(
          `${what}: the pinned manifest is no longer in the source registry (${e.message})`,
          'source',
        );
      }
      throw new SourceError(
        SourceErrorCodes.SOURCE_NOT_FOUND,
        `${what} not found (${e.message})`,
        'source',
        { cause: e },
      );
    }
    throw e;
  }
  const bytes = got.body;
  if (bytes.length > MAX_REGISTRY_JSON) {
    throw invalid(`${what}: manifest is larger than ${MAX_REGISTRY_JSON} bytes`, 'source');
  }
  if (isSchema1(got.mediaType, bytes)) {
    throw new SourceError(
      SourceErrorCodes.BAD_SOURCE,
      `${what} is a Docker schema1 manifest; Ferry copies Docker schema2 and OCI images only (convert it first, e.g. skopeo copy --format v2s2)`,
      'source',
    );
  }
  const digest = sha256(bytes);
  const expected = want?.digest ?? (reference.includes(':') ? reference : got.statedDigest);
  if (expected !== undefined && digest !== expected) throw corrupt(what, expected, bytes);
  if (want?.size !== undefined && bytes.length !== want.size) {
    throw corrupt(what, want.digest, bytes, want.size);
  }
  const parsed = parseOrThrow(bytes, got.mediaType || undefined, `manifest ${what}`);
  return { bytes, mediaType: parsed.mediaType, digest, parsed };
}

/** GET a small blob (a config) and verify its digest and size. */
async function fetchSmallBlob(ctx: Ctx, d: Descriptor, what: string): Promise<Buffer> {
  if (d.size > MAX_REGISTRY_JSON) {
    throw invalid(
      `${what} ${d.digest} is ${d.size} bytes; the limit is ${MAX_REGISTRY_JSON}`,
      what,
    );
  }
  const r = await ctx.reader.getBlob(
    { registry: ctx.registry, repository: ctx.repository },
    d.digest,
  );
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of r.stream) {
    n += (c as Buffer).length;
    if (n > d.size) {
      r.stream.destroy();
      throw new SourceError(
        SourceErrorCodes.BLOB_DIGEST_MISMATCH,
        `${what} ${d.digest} in ${ctx.name} is longer than its stated ${d.size} bytes`,
        d.digest,
      );
    }
    chunks.push(c as Buffer);
  }
  const bytes = Buffer.concat(chunks);
  if (sha256(bytes) !== d.digest || bytes.length !== d.size) {
    throw corrupt(`${what} in ${ctx.name}`, d.digest, bytes, d.size);
  }
  return bytes;
}

/** Opens one image manifest (already fetched and verified): its config (verified) and layers. */
async function openImage(
  ctx: Ctx,
  m: { bytes: Buffer; mediaType: string; digest: string; parsed: ParsedManifest },
  descPlatform: Descriptor['platform'],
): Promise<SourceImage> {
  const where = `${ctx.name}@${m.digest}`;
  const configDesc = m.parsed.config!;
  const layers = m.parsed.layers!;
  for (const [i, d] of [configDesc, ...layers].entries()) {
    if (!d.digest.startsWith('sha256:')) {
      throw new SourceError(
        SourceErrorCodes.UNSUPPORTED_FILE,
        `${where}: ${i === 0 ? 'the config' : `layer ${i}`} has digest ${d.digest}; Ferry copies sha256 blobs only`,
        d.digest,
      );
    }
  }
  const configBytes = await fetchSmallBlob(ctx, configDesc, `config of ${where}`);
  const diffIds = statedDiffIds(configDesc, configBytes, m.parsed, where);
  const n = layers.length;
  const platform = descriptorPlatform(descPlatform) ?? platformOfConfig(configBytes);
  const img: SourceImage = {
    layers: layers.map((d, i) => registryLayer(ctx, d, i, n, diffIds?.[i])),
    configBytes,
    configMediaType: configDesc.mediaType,
    manifestBytes: m.bytes,
    manifestMediaType: m.mediaType,
    manifestDigest: m.digest,
  };
  if (platform) img.platform = platform;
  return img;
}

function notFoundPlatform(ctx: Ctx, platform: string, have: string[]): SourceError {
  return new SourceError(
    SourceErrorCodes.PLATFORM_NOT_FOUND,
    `platform ${platform} not found in ${ctx.name}; it has ${have.join(', ') || 'no platforms'}`,
    'platform',
  );
}

/** The image-manifest entries of an index; nested indexes and other artifacts cannot be copied whole. */
function indexEntries(ctx: Ctx, digest: string, idx: ParsedManifest): Descriptor[] {
  const entries = idx.manifests ?? [];
  if (entries.length === 0)
    throw invalid(`index ${ctx.name}@${digest} lists no manifests`, 'source');
  entries.forEach((d, i) => {
    if (!isImageManifestMediaType(d.mediaType)) {
      throw new SourceError(
        SourceErrorCodes.UNSUPPORTED_FILE,
        `index ${ctx.name}@${digest}: manifests[${i}] is a ${d.mediaType}; Ferry copies indexes of image manifests only` +
          (isIndexMediaType(d.mediaType) ? ' (a nested index)' : ''),
        d.digest,
      );
    }
  });
  return entries;
}

async function openResolved(ctx: Ctx, opts: OpenOptions): Promise<OpenedSource> {
  const { spec } = ctx;
  const reference = spec.digest ?? spec.tag ?? 'latest';
  const top = await fetchManifest(ctx, reference, undefined, false);
  const images: SourceImage[] = [];
  const pins: RegistryManifestPin[] = [];
  const snapshot: RegistrySnapshot = {
    kind: 'registry',
    registry: ctx.registry,
    repository: ctx.repository,
    digest: top.digest,
    mediaType: top.mediaType,
    size: top.bytes.length,
    manifests: pins,
    index: false,
  };
  if (spec.tag !== undefined && spec.digest === undefined) snapshot.tag = spec.tag;
  const result: OpenedSource = {
    spec,
    images,
    realPath: `docker://${spec.path}`,
    registrySource: { registry: ctx.registry, repository: ctx.repository },
    snapshot,
  };
  const want = opts.platform ? parsePlatform(opts.platform) : undefined;
  if (isIndexMediaType(top.mediaType)) {
    const entries = indexEntries(ctx, top.digest, top.parsed);
    let picked = entries;
    if (want) {
      picked = entries.filter((d) => platformMatches(d.platform, want)).slice(0, 1);
      if (picked.length === 0) {
        throw notFoundPlatform(
          ctx,
          opts.platform!,
          entries.map((d) => (d.platform ? formatPlatform(d.platform) : 'unknown')),
        );
      }
    }
    for (const d of picked) {
      const m = await fetchManifest(ctx, d.digest, d, false);
      if (m.mediaType !== d.mediaType) {
        throw invalid(
          `${ctx.name}@${d.digest} is a ${m.mediaType}, but the index says ${d.mediaType}`,
          'source',
        );
      }
      images.push(await openImage(ctx, m, d.platform));
      pins.push(pinOf(d.digest, m.mediaType, m.bytes.length, d.platform));
    }
    if (!want) {
      snapshot.index = true;
      result.indexBytes = top.bytes;
      result.indexMediaType = top.mediaType;
      result.indexDigest = top.digest;
    }
    return result;
  }
  const img = await openImage(ctx, top, undefined);
  if (want && !platformMatches(img.platform, want)) {
    throw notFoundPlatform(ctx, opts.platform!, [
      img.platform ? formatPlatform(img.platform) : 'unknown',
    ]);
  }
  images.push(img);
  pins.push(pinOf(top.digest, top.mediaType, top.bytes.length, undefined));
  return result;
}

function pinOf(
  digest: string,
  mediaType: string,
  size: number,
  platform: Descriptor['platform'],
): RegistryManifestPin {
  const p: RegistryManifestPin = { digest, mediaType, size };
  const short = descriptorPlatform(platform);
  if (short) p.platform = short;
  return p;
}

/** Reads the pinned manifests (and index) by digest only; nothing is resolved by tag. */
async function openThroughSnapshot(ctx: Ctx, snap: RegistrySnapshot): Promise<OpenedSource> {
  const { spec } = ctx;
  if (snap.registry !== ctx.registry || snap.repository !== ctx.repository) {
    throw sourceChanged(
      `the snapshot is of docker://${snap.registry}/${snap.repository}, not ${ctx.name}`,
      'snapshot',
    );
  }
  if (spec.digest !== undefined && spec.digest !== snap.digest) {
    throw sourceChanged(
      `the snapshot pins ${snap.digest}, but the source names ${spec.digest}`,
      'snapshot',
    );
  }
  const result: OpenedSource = {
    spec,
    images: [],
    realPath: `docker://${spec.path}`,
    registrySource: { registry: ctx.registry, repository: ctx.repository },
    snapshot: snap,
  };
  if (snap.index) {
    const top = await fetchManifest(
      ctx,
      snap.digest,
      { digest: snap.digest, size: snap.size },
      true,
    );
    const listed = (top.parsed.manifests ?? []).map((d) => d.digest);
    const pinned = snap.manifests.map((p) => p.digest);
    if (listed.join(',') !== pinned.join(',')) {
      throw sourceChanged(
        `index ${ctx.name}@${snap.digest} does not list the pinned manifests`,
        'snapshot',
      );
    }
    result.indexBytes = top.bytes;
    result.indexMediaType = top.mediaType;
    result.indexDigest = top.digest;
  }
  for (const pin of snap.manifests) {
    const m = await fetchManifest(ctx, pin.digest, pin, true);
    result.images.push(await openImage(ctx, m, pin.platform));
  }
  return result;
}

/** Opens a docker:// source; see the module comment. `opts.registry` is required. */
export async function openRegistrySource(
  spec: DockerSourceSpec,
  opts: OpenOptions,
): Promise<OpenedSource> {
  if (!opts.registry) {
    throw new SourceError(
      SourceErrorCodes.BAD_SOURCE,
      `docker://${spec.path}: a docker:// source needs a registry client (OpenOptions.registry)`,
      'registry',
    );
  }
  const ctx: Ctx = {
    spec,
    reader: opts.registry,
    registry: spec.registry,
    repository: spec.repository,
    name: `docker://${spec.registry}/${spec.repository}`,
  };
  if (opts.snapshot) return openThroughSnapshot(ctx, opts.snapshot as RegistrySnapshot);
  return openResolved(ctx, opts);
}
