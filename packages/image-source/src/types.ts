import type { Logger } from '@ferry/log';
import type { BlobDownload, CallOptions, GetBlobOptions, RepoRef } from '@ferry/registry-client';
import type { LayerStream } from './pipeline';
import type { SourceSnapshot } from './snapshot';
import type { SourceSpec } from './spec';

export interface Layer {
  /** Position in the image, from 0. */
  index: number;
  mediaType: string;
  /** As STATED by the source (oci / docker-archive blobs); undefined when Ferry compresses (dir:, tar layers). */
  digest?: string;
  size?: number;
  diffId?: string;
  /**
   * Regenerates the layer's bytes deterministically. With `offset`, the bytes
   * before it are produced and hashed but not emitted. `done` reports the
   * digests of all bytes once the stream has ended.
   */
  open(offset?: number): Promise<LayerStream & LayerReadProgress>;
  /** The diffID without compressing: hashes the uncompressed tar (dir:, tar layers) or gunzips a blob. */
  diffIdOnly(): Promise<{ diffId: string; uncompressedSize: number }>;
  /** e.g. "layers/01-base" or "blobs/sha256/ab12… (layer 2/3)", for logs and progress. */
  description: string;
  /**
   * docker:// sources: a foreign / non-distributable layer (Docker's
   * `…rootfs.foreign.diff.tar.gzip`, OCI's `…nondistributable…` media types, or a
   * descriptor with `urls`). It is left as a reference, as skopeo does: never fetched,
   * never uploaded; `open()` rejects, `diffIdOnly()` answers from the config.
   */
  foreign?: boolean;
  /** The descriptor's `urls` (where a foreign layer's bytes are said to be). */
  urls?: string[];
}

/**
 * How far a layer stream has read its uncompressed tar (dir: layers; other
 * sources leave both out). For progress display only: cheap, not verified.
 */
export interface LayerReadProgress {
  /** Bytes of the uncompressed tar produced so far by this stream (from 0, offset or not). */
  uncompressedRead?(): number;
  /**
   * The uncompressed tar's size, computed from the layer's listing: every entry's header
   * blocks (PAX included) + file sizes padded to 512 + the two end blocks. Exact, except
   * that a file with a capability (security.capability) adds a few hundred bytes of PAX
   * record not counted here; the stream's `done` reports the exact size.
   */
  uncompressedTotal?: number;
}

export interface ImagePlatform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface SourceImage {
  platform?: ImagePlatform;
  layers: Layer[];
  /** The stated config (oci / docker-archive) as raw bytes; undefined for dir: (built from diffIds by @ferry/manifest). */
  configBytes?: Buffer;
  configMediaType?: string;
  /** dir: the parsed config.json fields to build the config from (validated). */
  configFields?: Record<string, unknown>;
  /** oci: the stored manifest bytes + media type (pushed as-is when the format allows, to preserve digests). */
  manifestBytes?: Buffer;
  manifestMediaType?: string;
  /** oci: the stored manifest's digest (verified against its bytes). */
  manifestDigest?: string;
  /** oci: the annotations of the manifest's descriptor in its index (ref name, ...). */
  annotations?: Record<string, string>;
  /** dir: the layer directory names, e.g. ["01-base", "02-app"] (for history entries). */
  layerNames?: string[];
}

export interface OpenedSource {
  spec: SourceSpec;
  images: SourceImage[];
  /** oci: the stored index (pushed as-is) when every platform of it is pushed. */
  indexBytes?: Buffer;
  indexMediaType?: string;
  indexDigest?: string;
  /** The real path the source was read from (inside the root); docker://: the source string. */
  realPath: string;
  /** docker:// sources: where the images are (a same-registry target can mount blobs from it). */
  registrySource?: { registry: string; repository: string };
  /**
   * What the source was when it was opened (JSON-serialisable, small). Record it when a push
   * is accepted and pass it back as `OpenOptions.snapshot` to read exactly that version.
   */
  snapshot: SourceSnapshot;
}

/** How dir: layers are written (part of the content identity: other options, other digests). */
export interface DirOptions {
  /** `root` (default): every entry 0:0. `keep`: each entry's numeric uid/gid. */
  owners: 'root' | 'keep';
  /** `epoch` (default): mtime 0. `keep`: each entry's mtime in whole seconds. A number: that fixed epoch second. */
  mtime: 'epoch' | 'keep' | number;
}

/**
 * What a docker:// source needs of a registry client (RegistryClient has it):
 * manifests by tag or digest, blobs from an offset. Injected, so credentials and
 * the allowlist stay the caller's.
 */
export interface RegistryReader {
  getManifest(
    repo: RepoRef,
    reference: string,
    accept?: string[],
    call?: CallOptions,
  ): Promise<{ body: Buffer; mediaType: string; digest: string; statedDigest?: string }>;
  getBlob(
    repo: RepoRef,
    digest: string,
    call?: CallOptions,
    opts?: GetBlobOptions,
  ): Promise<BlobDownload>;
}

export interface OpenOptions {
  /** The source root: nothing outside it is read (realpath check, symlinks included). Unused by docker://. */
  root: string;
  /** docker:// sources: the registry client to read through (required for them). */
  registry?: RegistryReader;
  /** gzip level for layers Ferry compresses (dir:, uncompressed archive layers); default 6. */
  gzipLevel?: number;
  /** "os/arch[/variant]": pick one image of a multi-platform source. */
  platform?: string;
  logger?: Logger;
  /** Called for each warning (skipped special files, ...) besides the logger. */
  onWarning?: (message: string, path?: string) => void;
  /** Tuning / tests: the per-file read size for dir: layers (output bytes do not depend on it). */
  tarReadSize?: number;
  /** dir: owners and mtimes written into layer tars; default `{ owners: 'root', mtime: 'epoch' }`. */
  dirOptions?: DirOptions;
  /**
   * Read the source THROUGH this record (from an earlier `OpenedSource.snapshot`): oci: the
   * pinned manifests and index by digest, never by ref; docker-archive: the same archive file,
   * manifest.json and config; dir: the same layer list, config.json and layer listings.
   * Anything else fails with FERRY_SOURCE_CHANGED naming what changed.
   */
  snapshot?: SourceSnapshot;
}
