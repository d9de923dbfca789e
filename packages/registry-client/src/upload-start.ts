/**
 * uploadBlob's first steps: check the options, take over a session an earlier
 * attempt left open (at the offset the registry reports), try cross-repository
 * mounts, else open a fresh session — then hand over to Upload.
 */
import type { BlobSource } from './digest';
import { ErrorCodes, RegistryError } from './errors';
import { validateDigest, validateRepository } from './reference';
import { pushScope, type Requester } from './request';
import { cancelSession, openSession, sessionOffset, type Session } from './sessions';
import {
  DEFAULT_CHUNK_SIZE,
  MAX_CHUNK_SIZE,
  type CallOptions,
  type RepoRef,
  type UploadOptions,
  type UploadResult,
} from './types';
import { Upload } from './upload';
import { blobExists } from './blobs';

function checkChunkSize(opts: UploadOptions, source: BlobSource): number {
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (!Number.isInteger(chunkSize) || chunkSize < 0) {
    throw new RegistryError(
      ErrorCodes.INVALID_ARGUMENT,
      `chunkSize must be an integer ≥ 0, got ${chunkSize}`,
    );
  }
  if (chunkSize > MAX_CHUNK_SIZE) {
    throw new RegistryError(
      ErrorCodes.INVALID_ARGUMENT,
      `chunkSize ${chunkSize} is larger than the maximum of ${MAX_CHUNK_SIZE} bytes (512 MiB): each upload holds one chunk in memory`,
    );
  }
  if (
    opts.monolithic &&
    (source.size === undefined || !Number.isInteger(source.size) || source.size < 0)
  ) {
    throw new RegistryError(ErrorCodes.INVALID_ARGUMENT, 'a monolithic upload needs source.size');
  }
  if (source.digest !== undefined) validateDigest(source.digest);
  return chunkSize;
}

/** The earlier session, with its offset; undefined when the registry no longer knows it. */
async function takeOver(
  rq: Requester,
  reg: string,
  name: string,
  scope: string[],
  location: string,
  call: CallOptions,
  result: UploadResult,
): Promise<{ session: Session; offset: number } | undefined> {
  const url = rq.transport.resolveLocation(
    reg,
    rq.transport.baseUrl(reg),
    location,
    'resume upload',
  );
  const earlier: Session = { location: url, minChunk: 0 };
  const off = await sessionOffset(rq, reg, earlier, scope, call);
  if (off === 'lost') {
    result.restarts++;
    rq.log?.info('the earlier upload session is gone; starting a fresh one', {
      registry: reg,
      repository: name,
    });
    return undefined;
  }
  if (off > 0) result.resumes++;
  rq.log?.info('resuming an earlier upload session from the offset the registry reports', {
    registry: reg,
    repository: name,
    offset: off,
  });
  return { session: earlier, offset: off };
}

/** Tries each mount source; the session of the last refused one is kept for the upload. */
async function tryMounts(
  rq: Requester,
  repo: RepoRef,
  reg: string,
  name: string,
  scope: string[],
  digest: string,
  mountFrom: string[],
  call: CallOptions,
): Promise<{ from: string; size: number } | { session: Session } | undefined> {
  for (const [i, from] of mountFrom.entries()) {
    const r = await openSession(rq, reg, name, scope, call, { digest, from });
    if (r.mounted) {
      const have = await blobExists(rq, repo, digest, call);
      if (!have) {
        throw new RegistryError(
          ErrorCodes.REGISTRY_PROTOCOL,
          `mount of ${digest} from ${from} into ${reg}/${name} answered 201, but a HEAD does not find it`,
          { registry: reg },
        );
      }
      return { from, size: have.size };
    }
    if (i < mountFrom.length - 1) await cancelSession(rq, reg, r.session.location, scope);
    else return { session: r.session };
  }
  return undefined;
}

export async function startUpload(
  rq: Requester,
  repo: RepoRef,
  source: BlobSource,
  opts: UploadOptions,
): Promise<UploadResult> {
  const { reg, name } = rq.transport.checkRepo(repo);
  const chunkSize = checkChunkSize(opts, source);
  const call: CallOptions = { signal: opts.signal, permit: opts.permit };
  const mountFrom = opts.mountFrom ?? [];
  for (const f of mountFrom) validateRepository(f);
  const scope = [
    ...pushScope(name),
    ...(source.digest ? mountFrom.map((f) => `repository:${f}:pull`) : []),
  ];
  const result: UploadResult = { digest: '', size: 0, bytesSent: 0, restarts: 0, resumes: 0 };
  const earlier = opts.resumeSession
    ? await takeOver(rq, reg, name, scope, opts.resumeSession, call, result)
    : undefined;
  let session = earlier?.session;
  if (!session && source.digest) {
    const m = await tryMounts(rq, repo, reg, name, scope, source.digest, mountFrom, call);
    if (m && 'from' in m)
      return { ...result, digest: source.digest, size: m.size, mountedFrom: m.from };
    session = m?.session;
  }
  session ??= ((await openSession(rq, reg, name, scope, call)) as { session: Session }).session;
  const up = new Upload(rq, reg, name, scope, source, opts, result, session, chunkSize);
  return up.run(earlier?.offset ?? 0);
}
