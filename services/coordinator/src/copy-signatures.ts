/**
 * A docker:// copy carries the source's cosign signatures along: they sign
 * the manifest digest, which a byte-for-byte copy keeps. cosign stores them
 * as an OCI manifest tagged `sha256-<hex>.sig` in the image's repository, one
 * small layer per signature. The blobs are read from the source, checked
 * against their digests and put in the target; the signature manifest is
 * copied as it is — or, when the target already holds signatures for that
 * digest, the two are merged (every signature layer kept, none put over).
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { MediaTypes, type Descriptor } from '@ferry/manifest';
import { bufferBlobSource, type RegistryClient, type RepoRef } from '@ferry/registry-client';
import { PermanentError } from '@ferry/runtime';

/** A signature manifest or blob larger than this is not a cosign signature: refused. */
const MAX_SIGNATURE_BYTES = 4 * 1024 * 1024;

/** cosign's tag for the signatures of a manifest digest. */
export function signatureTag(digest: string): string {
  return `${digest.replace(':', '-')}.sig`;
}

async function readAll(stream: Readable, limit: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of stream) {
    n += (chunk as Buffer).length;
    if (n > limit) {
      stream.destroy();
      throw new PermanentError('FERRY_SIGNATURE_TOO_LARGE', `${what} is over ${limit} bytes`);
    }
    parts.push(chunk as Buffer);
  }
  return Buffer.concat(parts);
}

/** Copies one blob of the signature manifest unless the target has it; its bytes are checked. */
async function copyBlob(
  client: RegistryClient,
  from: RepoRef,
  to: RepoRef,
  d: Descriptor,
): Promise<void> {
  if (await client.blobExists(to, d.digest)) return;
  const { stream } = await client.getBlob(from, d.digest);
  const bytes = await readAll(stream, MAX_SIGNATURE_BYTES, `signature blob ${d.digest}`);
  const got = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  if (got !== d.digest) {
    throw new PermanentError(
      'FERRY_BLOB_DIGEST_MISMATCH',
      `signature blob ${d.digest} from ${from.registry}/${from.repository} hashes to ${got}`,
    );
  }
  await client.uploadBlob(to, bufferBlobSource(bytes, d.digest), { monolithic: true });
}

interface SigManifest {
  layers?: Descriptor[];
  config?: Descriptor;
  [k: string]: unknown;
}

/** The target's signature manifest with the source's layers added (none dropped, none twice). */
function merged(target: Buffer, source: SigManifest): Buffer | undefined {
  const have = JSON.parse(target.toString('utf8')) as SigManifest;
  const key = (l: Descriptor) =>
    `${l.digest}|${l.annotations?.['dev.cosignproject.cosign/signature'] ?? ''}`;
  const known = new Set((have.layers ?? []).map(key));
  const extra = (source.layers ?? []).filter((l) => !known.has(key(l)));
  if (extra.length === 0) return undefined;
  return Buffer.from(JSON.stringify({ ...have, layers: [...(have.layers ?? []), ...extra] }));
}

/**
 * Copies the cosign signatures of `digest` from the source repository to the
 * target one. Returns how many signature layers the source had (0: none).
 */
export async function copySignatures(
  client: RegistryClient,
  from: RepoRef,
  to: RepoRef,
  digest: string,
): Promise<number> {
  const tag = signatureTag(digest);
  const head = await client.headManifest(from, tag, [MediaTypes.ociManifest]);
  if (!head) return 0;
  const src = await client.getManifest(from, tag, [MediaTypes.ociManifest]);
  if (src.body.length > MAX_SIGNATURE_BYTES) {
    throw new PermanentError(
      'FERRY_SIGNATURE_TOO_LARGE',
      `${tag} is over ${MAX_SIGNATURE_BYTES} bytes`,
    );
  }
  const parsed = JSON.parse(src.body.toString('utf8')) as SigManifest;
  for (const d of [...(parsed.config ? [parsed.config] : []), ...(parsed.layers ?? [])]) {
    await copyBlob(client, from, to, d);
  }
  const existing = await client.headManifest(to, tag, [MediaTypes.ociManifest]);
  let body = src.body;
  if (existing && existing.digest !== src.digest) {
    const there = await client.getManifest(to, tag, [MediaTypes.ociManifest]);
    const m = merged(there.body, parsed);
    if (!m) return parsed.layers?.length ?? 0;
    body = m;
  } else if (existing) {
    return parsed.layers?.length ?? 0;
  }
  await client.putManifest(to, tag, body, src.mediaType);
  return parsed.layers?.length ?? 0;
}
