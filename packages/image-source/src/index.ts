/**
 * @ferry/image-source — reads container images from OCI layouts,
 * docker-archives and layered directories, and streams their layers with
 * digests computed from the bytes produced. Knows nothing of queues or HTTP.
 */
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { ADAPTIVE_GZIP_SCHEME } from './adaptive-gzip';
import { parsePlatform } from '@ferry/manifest';
import { openDir } from './dir';
import { openDockerArchive } from './docker-archive';
import { SourceError, SourceErrorCodes } from './errors';
import { openOci } from './oci';
import { openRegistrySource } from './registry-source';
import { resolveInsideRoot } from './root';
import { SNAPSHOT_KIND, checkSnapshot } from './snapshot';
import { parseSource, type SourceSpec } from './spec';
import type { OpenOptions, OpenedSource } from './types';

export * from './errors';
export * from './spec';
export * from './types';
export {
  snapshotKey,
  type SourceSnapshot,
  type OciSnapshot,
  type OciManifestPin,
  type DockerArchiveSnapshot,
  type DirSnapshot,
  type FileIdentity,
  type RegistrySnapshot,
  type RegistryManifestPin,
} from './snapshot';
export { REGISTRY_SOURCE_ACCEPT } from './registry-source';
export {
  BLOB_RESUME_ATTEMPTS,
  BLOB_RESUME_DELAY_MS,
  isForeignLayer,
  type BlobReadStats,
} from './registry-source-blob';
export { checkDirOptions } from './dir';
export { resolveInsideRoot, isInside } from './root';
export { runPipeline, hashOnly, fromReadable, GZIP_CHUNK_SIZE, READ_CHUNK_SIZE } from './pipeline';
export type {
  LayerStream,
  LayerResult,
  ByteSource,
  PipelineOptions,
  PipelineMode,
} from './pipeline';
export {
  walkLayer,
  listingDigest,
  tarSource,
  FIXED_MTIME,
  SAFE_OPEN_INSTALLED,
  DEFAULT_DIR_OPTIONS,
  type LayerWalk,
  type WalkEntry,
  type TarOptions,
} from './dir-tar';
export { CAPABILITY_XATTR } from './xattr';
export { ADAPTIVE_GZIP_SCHEME } from './adaptive-gzip';
export { indexTar, lookupFile, type TarEntry } from './tar-index';
export { REF_NAME_ANNOTATION } from './oci';

/** The zlib Node links: part of the key under which a dir: layer's compressed digest may be cached. */
export const ZLIB_VERSION: string = process.versions.zlib ?? 'unknown';

const identities = new Map<number, string>();

/**
 * ZLIB_VERSION plus a fingerprint of what this zlib actually produces at
 * `level` (sha256 of a fixed sample compressed once, 12 hex digits), plus the
 * scheme that decides which blocks are stored (ADAPTIVE_GZIP_SCHEME). Chromium's
 * zlib, which Node bundles, may pick CPU-specific code paths; two workers whose
 * output differs get different identities, so a compressed-digest cache keyed
 * by it never suggests a digest the other would not reproduce.
 */
export function zlibIdentity(level = DEFAULT_GZIP_LEVEL): string {
  let id = identities.get(level);
  if (!id) {
    const sample = Buffer.alloc(256 * 1024);
    for (let i = 0, x = 1; i < sample.length; i++) {
      x = (x * 1103515245 + 12345) & 0x7fffffff;
      sample[i] = x % 7 === 0 ? 0x20 + (x % 95) : 0x61 + (x % 26) * (x % 3 === 0 ? 1 : 0);
    }
    const out = gzipSync(sample, { level });
    const print = createHash('sha256').update(out).digest('hex').slice(0, 12);
    id = `${ZLIB_VERSION}+${print}+${ADAPTIVE_GZIP_SCHEME}`;
    identities.set(level, id);
  }
  return id;
}

/** The gzip level used when none is given (FERRY_GZIP_LEVEL's default). */
export const DEFAULT_GZIP_LEVEL = 6;

/**
 * The cache key for "the compressed digest of the layer whose uncompressed
 * tar is `diffId`, gzipped at `level` by this zlib" (see zlibIdentity). Such a cache may only
 * suggest a digest to look for; it never replaces hashing what is sent.
 */
export function compressedDigestCacheKey(diffId: string, level = DEFAULT_GZIP_LEVEL): string {
  return `${diffId}|gzip-${level}|zlib-${zlibIdentity(level)}`;
}

function checkPlatform(platform: string | undefined): void {
  if (platform === undefined) return;
  try {
    parsePlatform(platform);
  } catch (e) {
    throw new SourceError(SourceErrorCodes.BAD_SOURCE, (e as Error).message, 'platform');
  }
}

/**
 * Opens a source below `opts.root`: parses the spec, checks the path (realpath,
 * symlinks included) and reads the image metadata. Layer bytes are read only
 * when a layer is opened. The result's `snapshot` records what the source is
 * now; with `opts.snapshot` the source is read through that record instead
 * (FERRY_SOURCE_CHANGED when it no longer holds).
 *
 * A docker:// source is read through `opts.registry` (a RegistryReader, e.g. a
 * RegistryClient; required for it) instead of the file system: its tag is
 * resolved to a digest, pinned in the snapshot, and read by digest after.
 */
export async function openSource(
  spec: SourceSpec | string,
  opts: OpenOptions,
): Promise<OpenedSource> {
  const s = typeof spec === 'string' ? parseSource(spec) : spec;
  if (s?.transport === 'docker') {
    if (!s.registry || !s.repository || (!s.tag && !s.digest)) {
      throw new SourceError(
        SourceErrorCodes.BAD_SOURCE,
        'a docker source needs a registry, a repository and a tag or digest',
        'source',
      );
    }
    checkPlatform(opts.platform);
    if (opts.snapshot !== undefined) checkSnapshot(opts.snapshot, 'registry');
    return openRegistrySource(s, opts);
  }
  if (
    !s ||
    !['oci', 'docker-archive', 'dir'].includes(s.transport) ||
    typeof s.path !== 'string' ||
    !s.path
  ) {
    throw new SourceError(
      SourceErrorCodes.BAD_SOURCE,
      'source must have a transport and a path',
      'source',
    );
  }
  const level = opts.gzipLevel ?? DEFAULT_GZIP_LEVEL;
  if (!Number.isInteger(level) || level < 0 || level > 9) {
    throw new SourceError(
      SourceErrorCodes.BAD_SOURCE,
      `gzip level ${level} is not an integer 0-9`,
      'gzipLevel',
    );
  }
  checkPlatform(opts.platform);
  if (opts.snapshot !== undefined) checkSnapshot(opts.snapshot, SNAPSHOT_KIND[s.transport]);
  const realPath = await resolveInsideRoot(opts.root, s.path, 'source');
  const warn = (message: string, path?: string): void => {
    opts.logger?.warn(message, { source: `${s.transport}:${s.path}`, path });
    opts.onWarning?.(message, path);
  };
  switch (s.transport) {
    case 'dir': {
      const { image, snapshot } = await openDir(realPath, { ...opts, gzipLevel: level }, warn);
      return { spec: s, images: [image], realPath, snapshot };
    }
    case 'oci':
      return openOci(realPath, s, { ...opts, gzipLevel: level });
    case 'docker-archive':
      return openDockerArchive(realPath, s, { ...opts, gzipLevel: level });
  }
}
