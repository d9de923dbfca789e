/**
 * Manifests and tags: PUT (checking the registry's Docker-Content-Digest
 * against the bytes sent — for schema1, against the canonical payload), GET
 * (verified against a digest reference), HEAD, and the tag list with Link
 * pagination on allowed hosts. (go-containerregistry: remote/write.go's
 * commitManifest, remote/descriptor.go, remote/list.go.)
 */
import { isSchema1, manifestDigest } from './digest';
import { ErrorCodes, RegistryError } from './errors';
import { validateDigest, validateTag } from './reference';
import { pullScope, pushScope, type Requester } from './request';
import { dump, header, readText, type Res } from './transport';
import { MANIFEST_ACCEPT, type CallOptions, type RepoRef } from './types';

const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
const SCHEMA1_SIGNED = 'application/vnd.docker.distribution.manifest.v1+prettyjws';

function checkManifestRef(reference: string): void {
  if (typeof reference !== 'string' || !reference) {
    throw new RegistryError(
      ErrorCodes.BAD_REFERENCE,
      'manifest reference (tag or digest) is empty',
    );
  }
  if (reference.includes(':')) validateDigest(reference);
  else validateTag(reference);
}

function sniffMediaType(body: Buffer): string {
  try {
    const j = JSON.parse(body.toString('utf8')) as {
      mediaType?: string;
      schemaVersion?: number;
      signatures?: unknown;
    };
    if (j.mediaType) return j.mediaType;
    if (j.schemaVersion === 1)
      return j.signatures ? SCHEMA1_SIGNED : 'application/vnd.docker.distribution.manifest.v1+json';
  } catch {
    // fall through
  }
  return 'application/octet-stream';
}

/** The digest the bytes must have, checked against a digest reference before anything is sent. */
function expectedDigest(reg: string, reference: string, body: Buffer, mediaType: string): string {
  if (!Buffer.isBuffer(body) || body.length === 0) {
    throw new RegistryError(ErrorCodes.INVALID_ARGUMENT, 'putManifest needs the manifest bytes');
  }
  if (!mediaType)
    throw new RegistryError(ErrorCodes.INVALID_ARGUMENT, 'putManifest needs a media type');
  const expected = manifestDigest(body, mediaType);
  if (!reference.includes(':')) {
    validateTag(reference);
    return expected;
  }
  validateDigest(reference);
  if (reference !== expected) {
    throw new RegistryError(
      ErrorCodes.DIGEST_MISMATCH,
      `manifest PUT by digest ${reference}, but its bytes${isSchema1(mediaType) ? ' (schema1 payload)' : ''} hash to ${expected}`,
      { registry: reg },
    );
  }
  return expected;
}

/** PUT a manifest by tag or digest; the registry's Docker-Content-Digest must match the bytes sent. */
export async function putManifest(
  rq: Requester,
  repo: RepoRef,
  reference: string,
  body: Buffer,
  mediaType: string,
  call: CallOptions = {},
): Promise<{ digest: string }> {
  const { reg, name } = rq.transport.checkRepo(repo);
  const expected = expectedDigest(reg, reference, body, mediaType);
  const what = `PUT manifest ${reg}/${name}:${reference}`;
  const res = await rq.call(reg, 'PUT', `/v2/${name}/manifests/${reference}`, {
    ...call,
    scope: pushScope(name),
    ok: [200, 201, 202],
    what,
    headers: { 'content-type': mediaType, 'content-length': String(body.length) },
    body,
  });
  await dump(res);
  const got = header(res, 'docker-content-digest');
  if (got !== undefined && got !== expected) {
    throw new RegistryError(
      ErrorCodes.DIGEST_MISMATCH,
      `${what}: registry says its digest is ${got}, but the bytes sent${isSchema1(mediaType) ? ' (schema1 payload)' : ''} hash to ${expected}`,
      { registry: reg, status: res.status },
    );
  }
  return { digest: expected };
}

async function readManifestBody(res: Res, reg: string, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of res.body) {
    size += (c as Buffer).length;
    if (size > MAX_MANIFEST_BYTES) {
      res.body.destroy();
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `${what}: manifest larger than ${MAX_MANIFEST_BYTES} bytes`,
        { registry: reg },
      );
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

export async function getManifest(
  rq: Requester,
  repo: RepoRef,
  reference: string,
  accept: string[] = [...MANIFEST_ACCEPT],
  call: CallOptions = {},
): Promise<{ body: Buffer; mediaType: string; digest: string; statedDigest?: string }> {
  const { reg, name } = rq.transport.checkRepo(repo);
  checkManifestRef(reference);
  const what = `GET manifest ${reg}/${name}:${reference}`;
  const res = await rq.call(reg, 'GET', `/v2/${name}/manifests/${reference}`, {
    ...call,
    scope: pullScope(name),
    ok: [200],
    what,
    headers: { accept: accept.join(', ') },
    notFound: ErrorCodes.MANIFEST_UNKNOWN,
  });
  const body = await readManifestBody(res, reg, what);
  const mediaType =
    (header(res, 'content-type') ?? '').split(';')[0]!.trim() || sniffMediaType(body);
  const digest = manifestDigest(body, mediaType);
  if (reference.includes(':') && digest !== reference) {
    throw new RegistryError(
      ErrorCodes.DIGEST_MISMATCH,
      `${what}: the bytes received hash to ${digest}`,
      {
        registry: reg,
      },
    );
  }
  // What the registry says the manifest is (a tag's answer): the caller may hold the bytes to it.
  const stated = header(res, 'docker-content-digest');
  return { body, mediaType, digest, ...(stated ? { statedDigest: stated } : {}) };
}

export async function headManifest(
  rq: Requester,
  repo: RepoRef,
  reference: string,
  accept: string[] = [...MANIFEST_ACCEPT],
  call: CallOptions = {},
): Promise<{ digest: string; size: number; mediaType: string } | undefined> {
  const { reg, name } = rq.transport.checkRepo(repo);
  checkManifestRef(reference);
  const what = `HEAD manifest ${reg}/${name}:${reference}`;
  const res = await rq.call(reg, 'HEAD', `/v2/${name}/manifests/${reference}`, {
    ...call,
    scope: pullScope(name),
    ok: [200, 404],
    what,
    headers: { accept: accept.join(', ') },
  });
  await dump(res);
  if (res.status === 404) return undefined;
  const digest = header(res, 'docker-content-digest') ?? (reference.includes(':') ? reference : '');
  const raw = (header(res, 'content-length') ?? '').trim();
  if (!/^\d+$/.test(raw)) {
    throw new RegistryError(
      ErrorCodes.REGISTRY_PROTOCOL,
      `${what}: 200 without a valid Content-Length; the manifest's size is unknown`,
      { registry: reg, status: res.status },
    );
  }
  return {
    digest,
    size: Number(raw),
    mediaType: (header(res, 'content-type') ?? '').split(';')[0]!.trim(),
  };
}

/** All tags of a repository, following Link pagination on allowed hosts. */
export async function listTags(
  rq: Requester,
  repo: RepoRef,
  call: CallOptions = {},
): Promise<string[]> {
  const { reg, name } = rq.transport.checkRepo(repo);
  const tags: string[] = [];
  let url: URL | undefined = new URL(`/v2/${name}/tags/list`, rq.transport.baseUrl(reg));
  for (let page = 0; url && page < 1000; page++) {
    const res: Res = await rq.call(reg, 'GET', url, {
      ...call,
      scope: pullScope(name),
      ok: [200],
      what: `list tags of ${reg}/${name}`,
    });
    const text = await readText(res, 16 * 1024 * 1024);
    let parsed: { tags?: string[] | null };
    try {
      parsed = JSON.parse(text) as typeof parsed;
    } catch {
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `tag list of ${reg}/${name} is not JSON`,
        {
          registry: reg,
        },
      );
    }
    tags.push(...(parsed.tags ?? []));
    const link = header(res, 'link');
    const m = link ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link) : null;
    url = m ? rq.transport.resolveLocation(reg, res.url, m[1], 'tag list pagination') : undefined;
  }
  return tags;
}
