/** The pieces of an OCI image layout: blobs read by digest (verified), indexes flattened, images opened. */
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ManifestError,
  MediaTypes,
  configDiffIds,
  isImageManifestMediaType,
  isIndexMediaType,
  isValidDigest,
  layerCompression,
  parseManifest,
  sha256Digest,
  type Descriptor,
  type ParsedManifest,
} from '@ferry/manifest';
import { SourceError, SourceErrorCodes } from './errors';
import { hashOnly, runPipeline } from './pipeline';
import { fileSource } from './read-pool';
import { openInsideRoot } from './root';
import type { OciManifestPin } from './snapshot';
import type { ImagePlatform, Layer, SourceImage } from './types';

export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';
export const MAX_JSON_BLOB = 4 * 1024 * 1024;
export const MAX_NESTING = 4;

export function invalid(message: string, field: string, cause?: unknown): SourceError {
  return new SourceError(
    SourceErrorCodes.MANIFEST_INVALID,
    message,
    field,
    cause ? { cause } : undefined,
  );
}

export function parseOrThrow(
  bytes: Buffer,
  mediaType: string | undefined,
  what: string,
): ParsedManifest {
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

export interface ImageCandidate {
  desc: Descriptor;
  /** Where it was found, for messages. */
  path: string;
}

/** Flattens an index (and nested ones) into image-manifest descriptors. */
export async function flatten(
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

/** An image's platform as its config states it (os, architecture, variant), if it does. */
export function platformOfConfig(configBytes: Buffer): ImagePlatform | undefined {
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

/** The platform of a manifest descriptor in an index, as an ImagePlatform. */
export function descriptorPlatform(p: Descriptor['platform']): ImagePlatform | undefined {
  if (!p) return undefined;
  return {
    os: p.os,
    architecture: p.architecture,
    ...(p.variant ? { variant: p.variant } : {}),
  };
}

/**
 * The diff_ids an image config states, one per layer of the manifest;
 * undefined for an artifact's config (nothing stated); FERRY_MANIFEST_INVALID
 * when the config is not a valid image config or the counts differ.
 */
export function statedDiffIds(
  configDesc: Descriptor,
  configBytes: Buffer,
  m: ParsedManifest,
  where: string,
): string[] | undefined {
  if (
    configDesc.mediaType !== MediaTypes.ociConfig &&
    configDesc.mediaType !== MediaTypes.dockerConfig
  )
    return undefined;
  let diffIds: string[];
  try {
    diffIds = configDiffIds(configBytes);
  } catch (e) {
    throw invalid(`config ${configDesc.digest}: ${(e as Error).message}`, configDesc.digest, e);
  }
  if (diffIds.length !== m.layers!.length) {
    throw invalid(
      `manifest ${where} has ${m.layers!.length} layers but its config lists ${diffIds.length} diff_ids`,
      where,
    );
  }
  return diffIds;
}

/** One layer blob of the layout: streamed as stored, verified against its digest and diffID. */
function blobLayer(
  layout: OciLayout,
  d: Descriptor,
  index: number,
  n: number,
  stated: string | undefined,
): Layer {
  const description = `blobs/${d.digest.replace(':', '/').slice(0, 19)}… (layer ${index + 1}/${n})`;
  const compression = layerCompression(d.mediaType);
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
        source: fileSource(fh),
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
      return hashOnly(fileSource(fh), compression === 'gzip', description);
    },
  };
}

/** Reads an image manifest by digest (verified), its config, and makes its layers. */
export async function openImage(
  layout: OciLayout,
  cand: ImageCandidate,
): Promise<{ image: SourceImage; pin: OciManifestPin }> {
  const manifestBytes = await layout.readSmallBlob(cand.desc, cand.path);
  const m = parseOrThrow(manifestBytes, cand.desc.mediaType, `manifest ${cand.desc.digest}`);
  const configDesc = m.config!;
  const configBytes = await layout.readSmallBlob(configDesc, `config of ${cand.desc.digest}`);
  const diffIds = statedDiffIds(configDesc, configBytes, m, cand.desc.digest);
  m.layers!.forEach((d, i) => {
    if (!d.digest.startsWith('sha256:')) {
      throw new SourceError(
        SourceErrorCodes.UNSUPPORTED_FILE,
        `manifest ${cand.desc.digest}: layer ${i + 1} has digest ${d.digest}; Ferry pushes sha256 blobs only`,
        d.digest,
      );
    }
  });
  const n = m.layers!.length;
  const layers = m.layers!.map((d, index) => blobLayer(layout, d, index, n, diffIds?.[index]));
  const platform = descriptorPlatform(cand.desc.platform) ?? platformOfConfig(configBytes);
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
  const pin: OciManifestPin = {
    digest: cand.desc.digest,
    mediaType: cand.desc.mediaType,
    size: cand.desc.size,
    config: configDesc.digest,
  };
  if (cand.desc.platform) pin.platform = platform!;
  if (cand.desc.annotations) pin.annotations = cand.desc.annotations;
  return { image: img, pin };
}
