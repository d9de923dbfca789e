/**
 * Blobs that need no upload: HEAD (exists?), GET, DELETE, a cross-repository
 * mount, and cancelling a session by its Location. (go-containerregistry:
 * remote/check.go, remote/mount.go.)
 */
import { Transform, pipeline, type Readable } from 'node:stream';
import { ErrorCodes, RegistryError } from './errors';
import { validateDigest, validateRepository } from './reference';
import { pullScope, pushScope, type Requester } from './request';
import { cancelSession, openSession } from './sessions';
import { dump, header } from './transport';
import type { BlobDownload, CallOptions, GetBlobOptions, RepoRef } from './types';

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

/** `bytes START-END/TOTAL` (TOTAL may be `*`) → its numbers, or undefined when malformed. */
export function parseContentRange(
  v: string | undefined,
): { start: number; end: number; total?: number } | undefined {
  const m = v === undefined ? null : /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(v);
  if (!m) return undefined;
  const [start, end] = [Number(m[1]), Number(m[2])];
  const total = m[3] === '*' ? undefined : Number(m[3]);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || end < start) return undefined;
  if (total !== undefined && (!Number.isSafeInteger(total) || end >= total)) return undefined;
  return total === undefined ? { start, end } : { start, end, total };
}

/**
 * Drops the first `n` bytes of `body` (a registry that answered a Range GET
 * with the whole blob); fails if the body ends before them.
 */
function skipBytes(body: Readable, n: number, what: string, reg: string): Readable {
  let left = n;
  const out = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      if (left >= chunk.length) {
        left -= chunk.length;
        return cb();
      }
      const rest = left > 0 ? chunk.subarray(left) : chunk;
      left = 0;
      cb(null, rest);
    },
    flush(cb) {
      if (left > 0) {
        return cb(
          new RegistryError(
            ErrorCodes.REGISTRY_PROTOCOL,
            `${what}: the registry ignored the Range request and its whole blob ended ${left} bytes before offset ${n}`,
            { registry: reg },
          ),
        );
      }
      cb();
    },
  });
  // Errors of either side destroy both; the caller reads `out` only.
  pipeline(body, out, () => undefined);
  return out;
}

/**
 * GET a blob (following redirects to allowed hosts). The caller must consume
 * or destroy the stream.
 *
 * With `offset` > 0 it sends `Range: bytes=<offset>-`: a 206 must start at
 * `offset` (Content-Range), else FERRY_REGISTRY_PROTOCOL. A 200 means the
 * registry ignored the Range: with `onRangeIgnored: 'skip'` (default) the
 * client reads and drops the first `offset` bytes itself (`rangeIgnored`
 * says so), with `'fail'` it fails FERRY_REGISTRY_PROTOCOL without reading.
 * An offset past the end (416) fails FERRY_INVALID_ARGUMENT.
 */
export async function getBlob(
  rq: Requester,
  repo: RepoRef,
  digest: string,
  call: CallOptions = {},
  opts: GetBlobOptions = {},
): Promise<BlobDownload> {
  const { reg, name } = rq.transport.checkRepo(repo);
  validateDigest(digest);
  const offset = opts.offset ?? 0;
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new RegistryError(
      ErrorCodes.INVALID_ARGUMENT,
      `getBlob: offset must be a non-negative integer, got ${String(offset)}`,
    );
  }
  const what = `GET blob ${digest} from ${reg}/${name}${offset > 0 ? ` from byte ${offset}` : ''}`;
  const res = await rq.call(reg, 'GET', `/v2/${name}/blobs/${digest}`, {
    ...call,
    scope: pullScope(name),
    ok: offset > 0 ? [200, 206, 416] : [200],
    what,
    notFound: ErrorCodes.BLOB_UNKNOWN,
    ...(offset > 0 ? { headers: { range: `bytes=${offset}-` } } : {}),
  });
  const len = contentLength(header(res, 'content-length'));
  const body = res.body as unknown as Readable;
  if (res.status === 416) {
    await dump(res);
    const total = /\/(\d+)\s*$/.exec(header(res, 'content-range') ?? '')?.[1];
    throw new RegistryError(
      ErrorCodes.INVALID_ARGUMENT,
      `${what}: HTTP 416, offset ${offset} is past the end of the blob${total ? ` (${total} bytes)` : ''}`,
      { registry: reg, status: 416 },
    );
  }
  if (res.status === 206) {
    const raw = header(res, 'content-range');
    const cr = parseContentRange(raw);
    if (!cr || cr.start !== offset) {
      await dump(res);
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `${what}: 206 with Content-Range ${raw === undefined ? '(none)' : JSON.stringify(raw)}, not starting at byte ${offset}`,
        { registry: reg, status: 206 },
      );
    }
    return {
      stream: body,
      offset,
      length: cr.end - cr.start + 1,
      ...(cr.total !== undefined ? { size: cr.total } : {}),
      rangeIgnored: false,
    };
  }
  if (offset > 0) {
    // 200 to a Range request: the registry sent the whole blob.
    if ((opts.onRangeIgnored ?? 'skip') === 'fail') {
      await dump(res);
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `${what}: the registry ignored the Range header (HTTP 200, whole blob)`,
        { registry: reg, status: 200 },
      );
    }
    if (len !== undefined && len < offset) {
      await dump(res);
      throw new RegistryError(
        ErrorCodes.INVALID_ARGUMENT,
        `${what}: offset ${offset} is past the end of the blob (${len} bytes)`,
        { registry: reg, status: 200 },
      );
    }
    return {
      stream: skipBytes(body, offset, what, reg),
      offset,
      ...(len !== undefined ? { size: len, length: len - offset } : {}),
      rangeIgnored: true,
    };
  }
  return {
    stream: body,
    offset: 0,
    ...(len !== undefined ? { size: len, length: len } : {}),
    rangeIgnored: false,
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
