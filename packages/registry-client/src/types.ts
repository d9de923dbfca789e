/** The public option and result types of the registry client, and its limits. */
import type { Readable } from 'node:stream';
import type { Logger } from '@ferry/log';
import type { RegistryError } from './errors';

export interface RepoRef {
  registry: string;
  repository: string;
}

/**
 * A caller's slot in a limit it keeps outside the client (e.g. a cluster-wide
 * semaphore of lookups per registry). The caller holds it when it calls; the
 * client calls release() before every sleep (a backoff, a Retry-After) and
 * acquire() after it, before the next request, so the slot is never held
 * while the client only waits. If acquire() throws, the call fails with that
 * error and the slot is not held.
 */
export interface PermitHooks {
  release(): Promise<void>;
  acquire(): Promise<void>;
}

/** Per-call options of every request the client makes for a caller. */
export interface CallOptions {
  /** Stops the call (FERRY_ABORTED). Work shared with other callers (a token fetch) goes on for them. */
  signal?: AbortSignal;
  /** Given back around every sleep of this call; see PermitHooks. */
  permit?: PermitHooks;
}

/** Options of getBlob beyond the per-call ones. */
export interface GetBlobOptions {
  /** Start at this byte (`Range: bytes=<offset>-`); default 0 (no Range header). */
  offset?: number;
  /**
   * A registry that answers a Range request with 200 (the whole blob): `skip`
   * (default) reads and drops the first `offset` bytes in the client, so the
   * stream still starts at `offset` (`rangeIgnored` tells); `fail` fails with
   * FERRY_REGISTRY_PROTOCOL.
   */
  onRangeIgnored?: 'skip' | 'fail';
}

/** A blob GET's answer. The caller must consume or destroy `stream`. */
export interface BlobDownload {
  /** The blob's bytes from `offset` on. */
  stream: Readable;
  /** Where the stream starts in the blob (the offset asked for). */
  offset: number;
  /** The blob's total size, when the registry said (Content-Length of a 200, total of a 206's Content-Range). */
  size?: number;
  /** Bytes the stream carries, when known. */
  length?: number;
  /** The registry ignored the Range header; the client skipped `offset` bytes of the whole blob itself. */
  rangeIgnored: boolean;
}

export interface UploadOptions extends CallOptions {
  /** 0 = one streamed PATCH (chunked transfer encoding); >0 = Content-Range chunks of this size (≤ MAX_CHUNK_SIZE). Default 32 MiB. */
  chunkSize?: number;
  /** One PUT with the whole body; needs source.size. Without source.digest the source is read twice (hash, then send). */
  monolithic?: boolean;
  /** Called as bytes go out: total bytes sent (re-sent ones included) and the position in the blob. */
  onProgress?: (bytesSent: number, position: number) => void;
  /** Repositories (same registry) to try a cross-repository mount from, if source.digest is stated. */
  mountFrom?: string[];
  /**
   * The Location of an upload session an earlier attempt (another process, a
   * retried job) left open: the upload asks the registry for its offset and
   * continues from there, or opens a fresh session when the registry no
   * longer knows it.
   */
  resumeSession?: string;
  /** Called with the session's current Location whenever it changes, and with undefined once it is finished or cancelled. */
  onSession?: (location: string | undefined) => void;
  /**
   * Leave the session open when the upload fails, so a later attempt can
   * resume it. `true`: keep it on a transient failure only (an abort is not
   * transient, so an aborted upload's session is cancelled). A function
   * decides per error — e.g. keep it when the abort came from a lost lease,
   * cancel it when the push was cancelled. Default: always cancel.
   */
  keepSessionOnFailure?: boolean | ((err: RegistryError) => boolean);
  /**
   * Runs right before the request that commits the blob (the final PUT); a
   * throw stops the upload there, with nothing committed. The upload worker
   * checks its blob lease's fencing token here.
   */
  beforeCommit?: () => Promise<void>;
}

export interface UploadResult {
  digest: string;
  size: number;
  /** Bytes put on the wire, counting re-sent bytes. */
  bytesSent: number;
  /** Fresh sessions opened after a dead one (or after DIGEST_INVALID). */
  restarts: number;
  /** Times the upload continued in the same session from the offset the registry reported. */
  resumes: number;
  mountedFrom?: string;
}

export interface RetryInfo {
  registry: string;
  what: string;
  attempt: number;
  delayMs: number;
  error: RegistryError;
}

export interface RegistryClientOptions {
  /** Allowed registry hosts (host[:port], `*` wildcards). Checked before any connection. */
  allow: readonly string[];
  /** Hosts reached over plain HTTP (names, IPs, CIDRs). Default: localhost, 127.0.0.0/8. */
  insecure?: readonly string[];
  /** Extra CA bundle (PEM) trusted next to the system CAs. */
  caFile?: string;
  /** docker config.json with credentials. Default $DOCKER_CONFIG/config.json or ~/.docker/config.json. */
  dockerConfigPath?: string;
  retry?: { attempts?: number; baseDelayMs?: number; maxDelayMs?: number };
  logger?: Logger;
  userAgent?: string;
  /** Called before each backoff sleep, after the caller's permit was released (metrics, tests). */
  onRetry?: (info: RetryInfo) => void;
  /** Longest Retry-After honoured by sleeping; a longer one fails at once (transient) with retryAfterMs. Default 60 s. */
  maxRetryAfterMs?: number;
  /** Connections per origin. Default 8. */
  connections?: number;
}

export const DEFAULT_INSECURE: readonly string[] = ['localhost', '127.0.0.0/8', '[::1]'];
export const DEFAULT_CHUNK_SIZE = 32 * 1024 * 1024;
/** The largest chunkSize an upload accepts: one buffer of this size is held per upload. */
export const MAX_CHUNK_SIZE = 512 * 1024 * 1024;

export const MANIFEST_ACCEPT: readonly string[] = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
  'application/vnd.docker.distribution.manifest.v1+json',
];
