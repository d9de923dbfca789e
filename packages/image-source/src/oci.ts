/** `oci:PATH[:REF]` — an OCI image layout: index.json, blobs/<alg>/<hex>. */
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ManifestError,
  MediaTypes,
  configDiffIds,
  formatPlatform,
  isImageManifestMediaType,
  isIndexMediaType,
  isValidDigest,
  layerCompression,
  parseManifest,
  parsePlatform,
  platformMatches,
  sha256Digest,
  type Descriptor,
  type ParsedManifest,
} from '@ferry/manifest';
import { SourceError, SourceErrorCodes } from './errors';
import { READ_CHUNK_SIZE, fromReadable, hashOnly, runPipeline } from './pipeline';
import { openInsideRoot, resolveInsideRoot } from './root';
import type { SourceSpec } from './spec';
import type { ImagePlatform, Layer, OpenOptions, OpenedSource, SourceImage } from './types';

export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';
const MAX_JSON_BLOB = 4 * 1024 * 1024;
const MAX_NESTING = 4;

function invalid(message: string, field: string, cause?: unknown): SourceError {
  return new SourceError(
    SourceErrorCodes.MANIFEST_INVALID,
    message,
    field,
    cause ? { cause } : undefined,
  );
}

function parseOrThrow(bytes: Buffer, mediaType: string | undefined, what: string): ParsedManifest {
  try {
    return parseManifest(bytes, mediaType);
  } catch (e) {
    if (e instanceof ManifestError) {
      throw invalid(`${what}: ${e.message}`, e.field ? `${what}:${e.field}` : what, e);
    }
    throw e;
  }
}

export class OciLayout {
  constructor(
    readonly dir: string,
    readonly root: string,
  ) {}

  /** Opens a blob inside the root; the digest is validated first (no path tricks). */
  async openBlob(digest: string, field: string): Promise<FileHandle> {
    if (!isValidDigest(digest))
      throw invalid(`${JSON.stringify(digest)} is not a valid digest`, field);
    const [alg, hex] = digest.split(':') as [string, string];
    try {
      return await openInsideRoot(this.root, join(this.dir, 'blobs', alg, hex), field);
    } catch (e) {
      if (e instanceof SourceError && e.code === SourceErrorCodes.SOURCE_NOT_FOUND) {
        throw new SourceError(
          SourceErrorCodes.SOURCE_NOT_FOUND,
          `blob ${digest} (${field}) is missing from the layout (blobs/${alg}/${hex})`,
          digest,
        );
      }
      throw e;
    }
  }

  /** Reads a small blob (manifest, index, config) and verifies its digest and size. */
  async readSmallBlob(desc: Descriptor, field: string): Promise<Buffer> {
    const fh = await this.openBlob(desc.digest, field);
    let bytes: Buffer;
    try {
      const st = await fh.stat();
      if (st.size > MAX_JSON_BLOB) {
        throw invalid(
          `${field} blob ${desc.digest} is ${st.size} bytes; the limit is ${MAX_JSON_BLOB}`,
          field,
        );
      }
      bytes = await fh.readFile();
    } finally {
      await fh.close();
    }
    const alg = desc.digest.split(':')[0]!;
    const digest =
      alg === 'sha256'
        ? sha256Digest(bytes)
        : `${alg}:${createHash(alg).update(bytes).digest('hex')}`;
    if (digest !== desc.digest || bytes.length !== desc.size) {
      throw new SourceError(
        SourceErrorCodes.BLOB_DIGEST_MISMATCH,
        `blob ${desc.digest} (${field}) is corrupt: its ${bytes.length} bytes hash to ${digest}, the descriptor says ${desc.digest} and ${desc.size} bytes`,
        desc.digest,
      );
    }
    return bytes;
  }
}

interface ImageCandidate {
  desc: Descriptor;
  /** Where it was found, for messages. */
  path: string;
}

/** Flattens an index (and nested ones) into image-manifest descriptors. */
async function flatten(
  layout: OciLayout,
  index: ParsedManifest,
  where: string,
  depth: number,
  out: ImageCandidate[],
): Promise<boolean> {
  let nested = false;
  for (const [i, d] of (index.manifests ?? []).entries()) {
    const path = `${where}.manifests[${i}]`;
    if (isIndexMediaType(d.mediaType)) {
      if (depth >= MAX_NESTING) throw invalid(`indexes nested deeper than ${MAX_NESTING}`, path);
      nested = true;
      const bytes = await layout.readSmallBlob(d, path);
      await flatten(layout, parseOrThrow(bytes, d.mediaType, path), path, depth + 1, out);
    } else if (isImageManifestMediaType(d.mediaType)) {
      out.push({ desc: d, path });
    }
    // Other artifacts (signatures, SBOMs with unknown media types) are not images: left out.
  }
  return nested;
}

function platformOfConfig(configBytes: Buffer): ImagePlatform | undefined {
  try {
    const c = JSON.parse(configBytes.toString('utf8')) as Record<string, unknown>;
    if (typeof c.os === 'string' && typeof c.architecture === 'string') {
      return {
        os: c.os,
        architecture: c.architecture,
        ...(typeof c.variant === 'string' ? { variant: c.variant } : {}),
      };
    }
  } catch {
    // not JSON: reported when the config is used
  }
  return undefined;
}

async function openImage(layout: OciLayout, cand: ImageCandidate): Promise<SourceImage> {
  const manifestBytes = await layout.readSmallBlob(cand.desc, cand.path);
  const m = parseOrThrow(manifestBytes, cand.desc.mediaType, `manifest ${cand.desc.digest}`);
  const configDesc = m.config!;
  const configBytes = await layout.readSmallBlob(configDesc, `config of ${cand.desc.digest}`);
  let diffIds: string[] | undefined;
  if (
    configDesc.mediaType === MediaTypes.ociConfig ||
    configDesc.mediaType === MediaTypes.dockerConfig
  ) {
    try {
      diffIds = configDiffIds(configBytes);
    } catch (e) {
      throw invalid(`config ${configDesc.digest}: ${(e as Error).message}`, configDesc.digest, e);
    }
    if (diffIds.length !== m.layers!.length) {
      throw invalid(
        `manifest ${cand.desc.digest} has ${m.layers!.length} layers but its config lists ${diffIds.length} diff_ids`,
        cand.desc.digest,
      );
    }
  }
  const n = m.layers!.length;
  m.layers!.forEach((d, i) => {
    if (!d.digest.startsWith('sha256:')) {
      throw new SourceError(
        SourceErrorCodes.UNSUPPORTED_FILE,
        `manifest ${cand.desc.digest}: layer ${i + 1} has digest ${d.digest}; Ferry pushes sha256 blobs only`,
        d.digest,
      );
    }
  });
  const layers: Layer[] = m.layers!.map((d, index) => {
    const description = `blobs/${d.digest.replace(':', '/').slice(0, 19)}… (layer ${index + 1}/${n})`;
    const compression = layerCompression(d.mediaType);
    const stated = diffIds?.[index];
    return {
      index,
      mediaType: d.mediaType,
      digest: d.digest,
      size: d.size,
      ...(stated ? { diffId: stated } : {}),
      description,
      async open(offset = 0) {
        const fh = await layout.openBlob(d.digest, description);
        return runPipeline({
          source: fromReadable(fh.createReadStream({ highWaterMark: READ_CHUNK_SIZE })),
          mode: {
            kind: 'passthrough',
            content: compression === 'gzip' ? 'gzip' : compression === 'none' ? 'tar' : 'opaque',
          },
          offset,
          description,
          expect: { digest: d.digest, size: d.size, ...(stated ? { diffId: stated } : {}) },
          statedDiffId: stated,
        });
      },
      async diffIdOnly() {
        if (compression !== 'gzip' && compression !== 'none') {
          if (stated) return { diffId: stated, uncompressedSize: -1 };
          throw new SourceError(
            SourceErrorCodes.UNSUPPORTED_FILE,
            `${description}: cannot compute the diffID of a ${d.mediaType} layer`,
            d.digest,
          );
        }
        const fh = await layout.openBlob(d.digest, description);
        return hashOnly(
          fromReadable(fh.createReadStream({ highWaterMark: READ_CHUNK_SIZE })),
          compression === 'gzip',
          description,
        );
      },
    };
  });
  const platform = cand.desc.platform
    ? {
        os: cand.desc.platform.os,
        architecture: cand.desc.platform.architecture,
        ...(cand.desc.platform.variant ? { variant: cand.desc.platform.variant } : {}),
      }
    : platformOfConfig(configBytes);
  const img: SourceImage = {
    layers,
    configBytes,
    configMediaType: configDesc.mediaType,
    manifestBytes,
    manifestMediaType: m.mediaType,
    manifestDigest: cand.desc.digest,
  };
  if (platform) img.platform = platform;
  if (cand.desc.annotations) img.annotations = cand.desc.annotations;
  return img;
}

export async function openOci(
  realPath: string,
  spec: SourceSpec,
  opts: OpenOptions,
): Promise<OpenedSource> {
  const layout = new OciLayout(realPath, opts.root);
  let indexPath: string;
  try {
    indexPath = await resolveInsideRoot(opts.root, join(realPath, 'index.json'), 'index.json');
  } catch (e) {
    if (e instanceof SourceError && e.code === SourceErrorCodes.SOURCE_NOT_FOUND) {
      throw new SourceError(
        SourceErrorCodes.SOURCE_NOT_FOUND,
        `oci: ${realPath} is not an OCI image layout (no index.json)`,
        'source',
      );
    }
    throw e;
  }
  const ifh = await openInsideRoot(opts.root, indexPath, 'index.json');
  let indexJson: Buffer;
  try {
    if ((await ifh.stat()).size > MAX_JSON_BLOB) {
      throw invalid(`index.json is larger than ${MAX_JSON_BLOB} bytes`, 'index.json');
    }
    indexJson = await ifh.readFile();
  } finally {
    await ifh.close();
  }
  let body: { mediaType?: unknown };
  try {
    body = JSON.parse(indexJson.toString('utf8')) as { mediaType?: unknown };
  } catch (e) {
    throw invalid(`index.json is not JSON: ${(e as Error).message}`, 'index.json');
  }
  const top = parseOrThrow(
    indexJson,
    typeof body?.mediaType === 'string' ? body.mediaType : MediaTypes.ociIndex,
    'index.json',
  );
  if (!isIndexMediaType(top.mediaType))
    throw invalid('index.json is not an image index', 'index.json');
  const tops = top.manifests ?? [];
  if (tops.length === 0)
    throw new SourceError(
      SourceErrorCodes.SOURCE_NOT_FOUND,
      `oci: ${realPath}/index.json lists no images`,
      'source',
    );

  // Pick the top-level descriptor: by ref name, else the only one, else "latest";
  // an index.json that lists only unnamed platform images is itself the multi-platform index.
  let chosen: Descriptor | undefined;
  const named = (ref: string): Descriptor[] =>
    tops.filter((d) => d.annotations?.[REF_NAME_ANNOTATION] === ref);
  let wholeIndex = false;
  if (spec.ref) {
    const hits = named(spec.ref);
    if (hits.length === 0) {
      const names = tops.map((d) => d.annotations?.[REF_NAME_ANNOTATION]).filter(Boolean);
      throw new SourceError(
        SourceErrorCodes.SOURCE_NOT_FOUND,
        `oci: no image named ${JSON.stringify(spec.ref)} in ${realPath}/index.json` +
          (names.length
            ? ` (it has ${names.map((x) => JSON.stringify(x)).join(', ')})`
            : ' (no image has a ref name)'),
        'source',
      );
    }
    if (hits.length > 1)
      throw invalid(
        `index.json names ${hits.length} images ${JSON.stringify(spec.ref)}`,
        'index.json',
      );
    chosen = hits[0];
  } else if (tops.length === 1) {
    chosen = tops[0];
  } else if (named('latest').length === 1) {
    chosen = named('latest')[0];
  } else if (tops.every((d) => !d.annotations?.[REF_NAME_ANNOTATION] && d.platform)) {
    wholeIndex = true;
  } else {
    throw new SourceError(
      SourceErrorCodes.BAD_SOURCE,
      `oci: ${realPath}/index.json lists ${tops.length} images; name one as oci:PATH:REF`,
      'source',
    );
  }

  const candidates: ImageCandidate[] = [];
  let indexBytes: Buffer | undefined;
  let indexMediaType: string | undefined;
  let indexDigest: string | undefined;
  let nested = false;
  if (wholeIndex) {
    nested = await flatten(layout, top, 'index.json', 0, candidates);
    // index.json itself is not a blob of the layout: the coordinator builds an index from the images.
  } else if (isIndexMediaType(chosen!.mediaType)) {
    const bytes = await layout.readSmallBlob(chosen!, 'index.json → index');
    const idx = parseOrThrow(bytes, chosen!.mediaType, `index ${chosen!.digest}`);
    nested = await flatten(layout, idx, `index ${chosen!.digest}`, 1, candidates);
    // Entries that are not images (unknown artifacts) are not pushed, so neither is the stored index.
    if (candidates.length !== (idx.manifests ?? []).length) nested = true;
    indexBytes = bytes;
    indexMediaType = idx.mediaType;
    indexDigest = chosen!.digest;
  } else if (isImageManifestMediaType(chosen!.mediaType)) {
    candidates.push({ desc: chosen!, path: 'index.json' });
  } else {
    throw invalid(`index.json points at a ${chosen!.mediaType}, not an image`, 'index.json');
  }
  if (candidates.length === 0) throw invalid('the index holds no image manifests', 'index.json');

  let picked = candidates;
  if (opts.platform) {
    const want = parsePlatform(opts.platform);
    picked = candidates.filter((c) => platformMatches(c.desc.platform, want));
    if (picked.length === 0 && candidates.length === 1 && !candidates[0]!.desc.platform) {
      // A single image whose descriptor has no platform: decide from its config.
      const img = await openImage(layout, candidates[0]!);
      if (platformMatches(img.platform, want)) return { spec, images: [img], realPath };
    }
    if (picked.length === 0) {
      const have = candidates.map((c) =>
        c.desc.platform ? formatPlatform(c.desc.platform) : 'unknown',
      );
      throw new SourceError(
        SourceErrorCodes.PLATFORM_NOT_FOUND,
        `platform ${opts.platform} not found in ${spec.transport}:${spec.path}; it has ${have.join(', ')}`,
        'platform',
      );
    }
    picked = picked.slice(0, 1);
  }
  const images: SourceImage[] = [];
  for (const c of picked) images.push(await openImage(layout, c));
  const result: OpenedSource = { spec, images, realPath };
  // The stored index is pushed as-is only when every image it lists (directly) is pushed.
  if (indexBytes && !opts.platform && !nested) {
    result.indexBytes = indexBytes;
    result.indexMediaType = indexMediaType!;
    result.indexDigest = indexDigest!;
  }
  return result;
}
