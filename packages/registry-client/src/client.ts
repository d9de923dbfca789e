/**
 * RegistryClient: the one public face of the OCI distribution client. It
 * builds the layers once — Transport (undici, allowlist, Locations),
 * RetryPolicy (backoff, Retry-After, permits around sleeps), Authenticator
 * (challenges, tokens), Requester (a request as callers see it) — and
 * delegates each operation to the file that owns it: blobs.ts, upload-start.ts
 * / upload.ts, manifests.ts.
 *
 * Rules it keeps:
 * - the allowlist is checked before any connection; requests go only to the
 *   host that was checked; redirects and Locations to another host are
 *   refused unless that host is allowed too (and get no credentials);
 * - no request body stream is ever replayed: a retry asks the BlobSource for a
 *   fresh stream from an offset;
 * - the digest sent with the final PUT is computed from the bytes produced
 *   (BlobStream.done), never taken from the source's statement;
 * - a caller's permit is never held while the client sleeps, and a caller's
 *   abort never cancels work another caller shares.
 */
import { defaultDockerConfigPath } from './auth';
import * as blobs from './blobs';
import type { BlobSource } from './digest';
import { ErrorCodes, RegistryError } from './errors';
import * as manifests from './manifests';
import { Requester } from './request';
import { RetryPolicy } from './retry';
import { Authenticator } from './token';
import { dump, Transport } from './transport';
import {
  DEFAULT_INSECURE,
  MANIFEST_ACCEPT,
  type BlobDownload,
  type CallOptions,
  type GetBlobOptions,
  type RegistryClientOptions,
  type RepoRef,
  type UploadOptions,
  type UploadResult,
} from './types';
import { startUpload } from './upload-start';

export * from './types';
export { parseRetryAfter } from './retry';
export { parseRangeEnd } from './sessions';
export { parseContentRange } from './blobs';

export class RegistryClient {
  private readonly rq: Requester;

  constructor(opts: RegistryClientOptions) {
    if (!opts || !Array.isArray(opts.allow)) {
      throw new RegistryError(
        ErrorCodes.INVALID_ARGUMENT,
        'RegistryClient needs an allow list (array of host[:port])',
      );
    }
    const retry = new RetryPolicy({
      ...opts.retry,
      maxRetryAfterMs: opts.maxRetryAfterMs,
      log: opts.logger,
      onRetry: opts.onRetry,
    });
    const transport = new Transport({
      allow: opts.allow,
      insecure: opts.insecure ?? DEFAULT_INSECURE,
      caFile: opts.caFile,
      userAgent: opts.userAgent ?? 'ferry-registry-client/0.1',
      connections: opts.connections ?? 8,
    });
    const auth = new Authenticator(transport, opts.dockerConfigPath ?? defaultDockerConfigPath());
    this.rq = new Requester(transport, retry, auth, opts.logger);
  }

  async close(): Promise<void> {
    await this.rq.transport.close();
  }

  /**
   * GET /v2/, and when the registry asks for credentials, authenticates once
   * (Basic, or a token without scope) to prove they work.
   */
  async ping(registry: string, call: CallOptions = {}): Promise<void> {
    const reg = this.rq.transport.checkRegistry(registry);
    this.rq.auth.forget(reg);
    const what = `ping ${reg}`;
    const ch = await this.rq.retrying(reg, what, call, () =>
      this.rq.auth.challenge(reg, call.signal),
    );
    if (!ch) return;
    const res = await this.rq.call(reg, 'GET', '/v2/', { ...call, scope: [], ok: [200], what });
    await dump(res);
  }

  /** HEAD a blob: its size, or undefined when absent. A 200 without a valid Content-Length fails FERRY_REGISTRY_PROTOCOL. */
  blobExists(
    repo: RepoRef,
    digest: string,
    call?: CallOptions,
  ): Promise<{ size: number } | undefined> {
    return blobs.blobExists(this.rq, repo, digest, call);
  }

  /**
   * GET a blob (following redirects to allowed hosts). The caller must consume or destroy
   * the stream. `opts.offset` > 0 sends `Range: bytes=<offset>-` and checks the 206's
   * Content-Range; a registry that ignores the Range (200) has its first bytes skipped
   * in the client (or fails, with `onRangeIgnored: 'fail'`). See blobs.getBlob.
   */
  getBlob(
    repo: RepoRef,
    digest: string,
    call?: AbortSignal | CallOptions,
    opts?: GetBlobOptions,
  ): Promise<BlobDownload> {
    const c = call instanceof AbortSignal ? { signal: call } : call;
    return blobs.getBlob(this.rq, repo, digest, c, opts);
  }

  /** DELETE a blob (registries with deletes enabled). true if deleted, false if it was not there. */
  deleteBlob(repo: RepoRef, digest: string, call?: CallOptions): Promise<boolean> {
    return blobs.deleteBlob(this.rq, repo, digest, call);
  }

  /** Cross-repository mount. true on 201; on 202 the opened session is cancelled and false returned. */
  mountBlob(repo: RepoRef, digest: string, from: string, call?: CallOptions): Promise<boolean> {
    return blobs.mountBlob(this.rq, repo, digest, from, call);
  }

  /** DELETE an upload session (a Location as the registry gave it). A session already gone is fine. */
  cancelUpload(repo: RepoRef, location: string, call?: CallOptions): Promise<void> {
    return blobs.cancelUpload(this.rq, repo, location, call);
  }

  /**
   * Uploads a blob: monolithic PUT, one streamed PATCH, or Content-Range
   * chunks, then PUT ?digest= with the digest computed from the bytes. Resumes
   * from the offset the registry reports; opens a fresh session when the old
   * one is gone; retries transient failures with backoff.
   */
  uploadBlob(repo: RepoRef, source: BlobSource, opts: UploadOptions = {}): Promise<UploadResult> {
    return startUpload(this.rq, repo, source, opts);
  }

  /**
   * PUT a manifest by tag or digest. Checks the registry's Docker-Content-Digest
   * against the digest of the bytes sent (for schema1: of the canonical payload).
   */
  putManifest(
    repo: RepoRef,
    reference: string,
    body: Buffer,
    mediaType: string,
    call?: CallOptions,
  ): Promise<{ digest: string }> {
    return manifests.putManifest(this.rq, repo, reference, body, mediaType, call);
  }

  getManifest(
    repo: RepoRef,
    reference: string,
    accept: string[] = [...MANIFEST_ACCEPT],
    call?: CallOptions,
  ): Promise<{ body: Buffer; mediaType: string; digest: string; statedDigest?: string }> {
    return manifests.getManifest(this.rq, repo, reference, accept, call);
  }

  headManifest(
    repo: RepoRef,
    reference: string,
    accept: string[] = [...MANIFEST_ACCEPT],
    call?: CallOptions,
  ): Promise<{ digest: string; size: number; mediaType: string } | undefined> {
    return manifests.headManifest(this.rq, repo, reference, accept, call);
  }

  /** All tags of a repository, following Link pagination on allowed hosts. */
  listTags(repo: RepoRef, call?: CallOptions): Promise<string[]> {
    return manifests.listTags(this.rq, repo, call);
  }
}
