/**
 * Upload sessions: POST to open one (or to mount), GET to ask the offset the
 * registry holds, DELETE to cancel. (go-containerregistry: remote/write.go's
 * initiateUpload and the OCI distribution spec's upload status.)
 */
import { ErrorCodes, RegistryError } from './errors';
import type { Requester } from './request';
import { dump, header } from './transport';
import type { CallOptions } from './types';

export interface Session {
  location: URL;
  /** OCI-Chunk-Min-Length the registry asked for (0: none). */
  minChunk: number;
}

export type Opened = { mounted: true } | { mounted: false; session: Session };

/** "0-1234" → 1235 (bytes held). "0-0" is read as 0 bytes. undefined if absent/invalid. */
export function parseRangeEnd(v: string | undefined): number | undefined {
  if (!v) return undefined;
  const m = /^(?:bytes=)?0-(\d+)$/.exec(v.trim());
  if (!m) return undefined;
  const end = Number(m[1]);
  return end === 0 ? 0 : end + 1;
}

/** POST an upload session, optionally as a cross-repository mount. */
export async function openSession(
  rq: Requester,
  reg: string,
  name: string,
  scope: string[],
  call: CallOptions,
  mount?: { digest: string; from: string },
): Promise<Opened> {
  const path =
    `/v2/${name}/blobs/uploads/` +
    (mount
      ? `?mount=${encodeURIComponent(mount.digest)}&from=${encodeURIComponent(mount.from)}`
      : '');
  const what = mount
    ? `mount ${mount.digest} from ${mount.from} into ${reg}/${name}`
    : `start upload to ${reg}/${name}`;
  const res = await rq.call(reg, 'POST', path, {
    ...call,
    scope,
    ok: [201, 202],
    what,
    headers: { 'content-length': '0' },
  });
  await dump(res);
  if (res.status === 201) {
    if (!mount) {
      throw new RegistryError(ErrorCodes.REGISTRY_PROTOCOL, `${what}: 201 to a plain upload POST`, {
        registry: reg,
      });
    }
    return { mounted: true };
  }
  const location = rq.transport.resolveLocation(reg, res.url, header(res, 'location'), what);
  const min = Number(header(res, 'oci-chunk-min-length'));
  return {
    mounted: false,
    session: { location, minChunk: Number.isFinite(min) && min > 0 ? min : 0 },
  };
}

/**
 * DELETE a session, best effort, with no caller's signal: it runs after an
 * abort too, so an aborted upload leaves nothing open.
 */
export async function cancelSession(
  rq: Requester,
  reg: string,
  location: URL,
  scope: string[],
): Promise<void> {
  try {
    const res = await rq.transport.exchange(reg, 'DELETE', location, {
      auth: await rq.auth.authorization(reg, scope),
      what: 'cancel upload',
    });
    await dump(res);
  } catch (e) {
    rq.log?.debug('cancelling an upload session failed', {
      registry: reg,
      error: (e as Error).message,
    });
  }
}

/** GET the session's status: bytes held (from Range), or 'lost' when the registry no longer knows it. */
export async function sessionOffset(
  rq: Requester,
  reg: string,
  session: Session,
  scope: string[],
  call: CallOptions,
): Promise<number | 'lost'> {
  const what = 'upload status';
  let refreshed = false;
  for (let attempt = 0; ;) {
    try {
      const res = await rq.transport.exchange(reg, 'GET', session.location, {
        auth: await rq.auth.authorization(reg, scope, call.signal),
        what,
        signal: call.signal,
      });
      if (res.status === 204 || res.status === 200) {
        await dump(res);
        const loc = header(res, 'location');
        if (loc) session.location = rq.transport.resolveLocation(reg, session.location, loc, what);
        return parseRangeEnd(header(res, 'range')) ?? 0;
      }
      const err = await rq.auth.errorOf(reg, res, what, ErrorCodes.UPLOAD_SESSION_LOST);
      if (res.status === 404 || err.code === ErrorCodes.UPLOAD_SESSION_LOST) return 'lost';
      if (res.status === 401 && !refreshed) {
        refreshed = true;
        rq.auth.onUnauthorized(reg, res, scope);
        continue;
      }
      throw err;
    } catch (e) {
      await rq.retry.backoff(reg, what, attempt, e, call);
      attempt++;
    }
  }
}
