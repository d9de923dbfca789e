/**
 * A source snapshot: what a source was when it was opened (when a push was
 * accepted), small and JSON-serialisable, so it can be kept in the push state
 * and every job can read the source THROUGH it. See OpenOptions.snapshot.
 */
import { canonicalJson, formatPlatform, sha256Digest } from '@ferry/manifest';
import { SourceError, SourceErrorCodes } from './errors';
import type { DirOptions, ImagePlatform } from './types';

/** One image manifest of an oci: source, pinned by digest. */
export interface OciManifestPin {
  digest: string;
  mediaType: string;
  size: number;
  /** The config digest the manifest names. */
  config: string;
  /** The platform of the manifest's descriptor in its index, when it has one. */
  platform?: ImagePlatform;
  /** The annotations of the manifest's descriptor in its index, when it has any. */
  annotations?: Record<string, string>;
}

export interface OciSnapshot {
  kind: 'oci';
  /** Every image manifest resolved for the push, in image order. */
  manifests: OciManifestPin[];
  /**
   * The index pushed as a whole, when there is one: `blob` — an index blob of the layout
   * (read back by digest from blobs/ and pushed as stored); `index.json` — index.json itself
   * listed the platform images (sha256 of its bytes; the pusher builds the index).
   */
  index?: { digest: string; mediaType: string; size: number; from: 'blob' | 'index.json' };
}

/** A file's identity, from fstat of the descriptor actually read (decimal strings: exact). */
export interface FileIdentity {
  dev: string;
  ino: string;
  size: number;
  mtimeNs: string;
}

export interface DockerArchiveSnapshot {
  kind: 'docker-archive';
  archive: FileIdentity;
  /** sha256 of manifest.json's bytes. */
  manifestJson: string;
  /** The config digest (sha256 of its bytes) of each image opened, in image order. */
  configs: string[];
}

export interface DirSnapshot {
  kind: 'dir';
  /** Layer directory names, in layer order. */
  layers: string[];
  /** sha256 of config.json's bytes, or null when there is none. */
  config: string | null;
  /** Per layer, the sha256 of its listing (see listingDigest in dir-walk.ts). */
  listings: string[];
  /** The options the layers are written with (part of their content). */
  dirOptions: DirOptions;
}

/** One image manifest of a docker:// source, pinned by digest. */
export interface RegistryManifestPin {
  digest: string;
  mediaType: string;
  size: number;
  /** The platform of its descriptor in the index, when it has one. */
  platform?: ImagePlatform;
}

/**
 * A docker:// source pinned by digest: reading through it fetches the top
 * manifest and every image manifest BY DIGEST only (verified), so a tag moved
 * since changes nothing.
 */
export interface RegistrySnapshot {
  kind: 'registry';
  registry: string;
  repository: string;
  /** The top manifest's digest (what the tag resolved to, or the digest asked for). */
  digest: string;
  mediaType: string;
  size: number;
  /** The image manifests pushed, in image order (one with `platform`, all of an index without). */
  manifests: RegistryManifestPin[];
  /** The top manifest is an index pushed whole (byte for byte, after its manifests). */
  index: boolean;
  /** The tag that was resolved, when the source named (or implied) one. */
  tag?: string;
}

export type SourceSnapshot = OciSnapshot | DockerArchiveSnapshot | DirSnapshot | RegistrySnapshot;

/** The snapshot kind of each transport. */
export const SNAPSHOT_KIND = {
  oci: 'oci',
  'docker-archive': 'docker-archive',
  dir: 'dir',
  docker: 'registry',
} as const;

/**
 * A key for caches of opened sources (or anything derived from one): the
 * sha256 of the snapshot's canonical JSON. Two snapshots with equal content
 * give equal keys; any change of the source gives another key.
 */
export function snapshotKey(s: SourceSnapshot): string {
  return sha256Digest(canonicalJson(s));
}

/** The error for "the source is no longer what the snapshot recorded". */
export function sourceChanged(message: string, field: string): SourceError {
  return new SourceError(SourceErrorCodes.SOURCE_CHANGED, message, field);
}

function badSnapshot(why: string): SourceError {
  return new SourceError(SourceErrorCodes.BAD_SOURCE, `snapshot: ${why}`, 'snapshot');
}

const isStr = (x: unknown): x is string => typeof x === 'string' && x.length > 0;
const isStrArray = (x: unknown): x is string[] => Array.isArray(x) && x.every(isStr);

/** Checks a snapshot handed back by a caller (e.g. read from JSON) against the transport. */
export function checkSnapshot(s: unknown, transport: SourceSnapshot['kind']): SourceSnapshot {
  if (!s || typeof s !== 'object') throw badSnapshot('must be an object');
  const o = s as Record<string, unknown>;
  if (o.kind !== transport) {
    throw badSnapshot(`is of a ${String(o.kind)} source, not ${transport}:`);
  }
  if (transport === 'registry') {
    const digest = (x: unknown): boolean =>
      typeof x === 'string' && /^sha256:[a-f0-9]{64}$/.test(x);
    const ok =
      isStr(o.registry) &&
      isStr(o.repository) &&
      digest(o.digest) &&
      isStr(o.mediaType) &&
      Number.isSafeInteger(o.size) &&
      typeof o.index === 'boolean' &&
      (o.tag === undefined || isStr(o.tag)) &&
      Array.isArray(o.manifests) &&
      o.manifests.length > 0 &&
      o.manifests.every(
        (m: Record<string, unknown>) =>
          digest(m?.digest) && isStr(m.mediaType) && Number.isSafeInteger(m.size),
      );
    if (!ok) {
      throw badSnapshot(
        'registry: needs registry, repository, digest, mediaType, size, index and manifests [{digest, mediaType, size}]',
      );
    }
  } else if (transport === 'oci') {
    const ok =
      Array.isArray(o.manifests) &&
      o.manifests.length > 0 &&
      o.manifests.every(
        (m: Record<string, unknown>) =>
          isStr(m?.digest) && isStr(m.mediaType) && Number.isSafeInteger(m.size) && isStr(m.config),
      );
    if (!ok) throw badSnapshot('oci: needs manifests [{digest, mediaType, size, config}]');
  } else if (transport === 'docker-archive') {
    const a = o.archive as Record<string, unknown> | undefined;
    if (!a || !isStr(a.dev) || !isStr(a.ino) || !isStr(a.mtimeNs) || typeof a.size !== 'number')
      throw badSnapshot('docker-archive: needs archive {dev, ino, size, mtimeNs}');
    if (!isStr(o.manifestJson) || !isStrArray(o.configs))
      throw badSnapshot('docker-archive: needs manifestJson and configs');
  } else {
    if (!isStrArray(o.layers) || !isStrArray(o.listings) || o.layers.length !== o.listings.length)
      throw badSnapshot('dir: needs layers and one listing per layer');
    if (o.config !== null && !isStr(o.config))
      throw badSnapshot('dir: config must be a digest or null');
    if (!o.dirOptions || typeof o.dirOptions !== 'object')
      throw badSnapshot('dir: needs dirOptions');
  }
  return s as SourceSnapshot;
}

/** For messages: "linux/amd64" or "unknown platform". */
export function platformText(p: ImagePlatform | undefined): string {
  return p ? formatPlatform(p) : 'unknown platform';
}
