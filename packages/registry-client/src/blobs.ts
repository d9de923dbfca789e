/**
 * Blobs that need no upload: HEAD (exists?), GET, DELETE, a cross-repository
 * mount, and cancelling a session by its Location. (go-containerregistry:
 * remote/check.go, remote/mount.go.)
 */
import type { Readable } from 'node:stream';
import { ErrorCodes, RegistryError } from './errors';
import { validateDigest, validateRepository } from './reference';
import { pullScope, pushScope, type Requester } from './request';
import { cancelSession, openSession } from './sessions';
import { dump, header } from './transport';
import type { CallOptions, RepoRef } from './types';

/** A Content-Length that is a whole number of bytes, or undefined. */
function contentLength(v: string | undefined): number | undefined {
  if (v === undefined || !/^\d+$/.test(v.trim())) return undefined;
  const n = Number(v.trim());
  return Number.isSafeInteger(n) ? n : undefined;
}

/** HEAD a blob: its size, or undefined when the repository lacks it. A HEAD without a size is an error. */
export async function blobExists(
  rq: Requester,
  repo: RepoRef,
  digest: string,
  call: CallOptions = {},
): Promise<{ size: number } | undefined> {
  const { reg, name } = rq.transport.checkRepo(repo);
  validateDigest(digest);
  const what = `HEAD blob ${digest} in ${reg}/${name}`;
  const res = await rq.call(reg, 'HEAD', `/v2/${name}/blobs/${digest}`, {
    ...call,
    scope: pullScope(name),
    ok: [200, 404],
    what,
  });
  await dump(res);
  if (res.status === 404) return undefined;
  const raw = header(res, 'content-length');
  const size = contentLength(raw);
  if (size === undefined) {
    throw new RegistryError(
      ErrorCodes.REGISTRY_PROTOCOL,
      `${what}: 200 without a valid Content-Length (${raw === undefined ? 'none' : JSON.stringify(raw)}); the blob's size is unknown`,
      { registry: reg, status: res.status },
    );
  }
  return { size };
}

/** GET a blob (following redirects to allowed hosts). The caller must consume or destroy the stream. */
export async function getBlob(
  rq: Requester,
  repo: RepoRef,
  digest: string,
  call: CallOptions = {},
): Promise<{ stream: Readable; size?: number }> {
  const { reg, name } = rq.transport.checkRepo(repo);
  validateDigest(digest);
  const res = await rq.call(reg, 'GET', `/v2/${name}/blobs/${digest}`, {
    ...call,
    scope: pullScope(name),
    ok: [200],
    what: `GET blob ${digest} from ${reg}/${name}`,
    notFound: ErrorCodes.BLOB_UNKNOWN,
  });
  const len = contentLength(header(res, 'content-length'));
  return {
    stream: res.body as unknown as Readable,
    ...(len !== undefined ? { size: len } : {}),
  };
}

/** DELETE a blob (registries with deletes enabled). true if deleted, false if it was not there. */
export async function deleteBlob(
  rq: Requester,
  repo: RepoRef,
  digest: string,
  call: CallOptions = {},
): Promise<boolean> {
  const { reg, name } = rq.transport.checkRepo(repo);
  validateDigest(digest);
  const res = await rq.call(reg, 'DELETE', `/v2/${name}/blobs/${digest}`, {
    ...call,
    scope: [`repository:${name}:delete`, ...pushScope(name)],
    ok: [202, 404],
    what: `DELETE blob ${digest} in ${reg}/${name}`,
  });
  await dump(res);
  return res.status === 202;
}

/** Cross-repository mount. true on 201; on 202 the opened session is cancelled and false returned. */
export async function mountBlob(
  rq: Requester,
  repo: RepoRef,
  digest: string,
  from: string,
  call: CallOptions = {},
): Promise<boolean> {
  const { reg, name } = rq.transport.checkRepo(repo);
  validateDigest(digest);
  validateRepository(from);
  const scope = [...pushScope(name), ...pullScope(from)];
  const r = await openSession(rq, reg, name, scope, call, { digest, from });
  if (r.mounted) return true;
  await cancelSession(rq, reg, r.session.location, scope);
  return false;
}

/** DELETE an upload session (a Location as the registry gave it). A session already gone is fine. */
export async function cancelUpload(
  rq: Requester,
  repo: RepoRef,
  location: string,
  call: CallOptions = {},
): Promise<void> {
  const { reg, name } = rq.transport.checkRepo(repo);
  const url = rq.transport.resolveLocation(
    reg,
    rq.transport.baseUrl(reg),
    location,
    'cancel upload',
  );
  const res = await rq.call(reg, 'DELETE', url, {
    ...call,
    scope: pushScope(name),
    ok: [200, 202, 204, 404],
    what: `cancel upload in ${reg}/${name}`,
  });
  await dump(res);
}
