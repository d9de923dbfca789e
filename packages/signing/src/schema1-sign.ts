/**
 * libtrust's JWS for schema1 manifests: the signature covers
 * base64url(protected) "." base64url(manifest bytes); the protected header
 * carries formatLength / formatTail / time so a verifier can cut the
 * `signatures` member back out; the signatures array is spliced into the
 * pretty JSON before its closing brace. The digest is the registry's: over
 * the manifest without signatures.
 */
import {
  createHash,
  createPublicKey,
  sign,
  verify,
  X509Certificate,
  type JsonWebKey,
  type KeyObject,
} from 'node:crypto';
import { MediaTypes, sha256Digest } from '@ferry/manifest';
import { SigningError, SigningErrorCodes } from './errors';
import { goJson, goJsonIndent, sortedKeys } from './go-json';
import type { SigningKey } from './keys';

export interface Schema1Signed {
  /** Bytes to PUT, with `signatures`. */
  bytes: Buffer;
  /** The canonical payload (the manifest without signatures). */
  payload: Buffer;
  /** `sha256:` of payload — the Docker-Content-Digest the registry answers. */
  digest: string;
  mediaType: typeof MediaTypes.dockerSchema1Signed;
}

export interface Schema1SignOptions {
  /** x5c chain (base64 DER, leaf first, see loadCertChain): sent instead of the jwk. */
  certChain?: string[];
  /** The protected header's time; default now. */
  time?: Date;
}

/** libtrust's key id: base32 of the first 240 bits of sha256(SPKI DER), in groups of four joined by ':'. */
export function libtrustKeyId(publicKey: KeyObject): string {
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const bytes = createHash('sha256').update(spki).digest().subarray(0, 30);
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const b of bytes) bits += b.toString(2).padStart(8, '0');
  let out = '';
  for (let i = 0; i < bits.length; i += 5) out += alphabet[parseInt(bits.slice(i, i + 5), 2)];
  return (out.match(/.{4}/g) as string[]).join(':');
}

function jwkOf(publicKey: KeyObject): Record<string, unknown> {
  const jwk = publicKey.export({ format: 'jwk' });
  const kid = libtrustKeyId(publicKey);
  return jwk.kty === 'EC'
    ? sortedKeys({ crv: jwk.crv, kid, kty: 'EC', x: jwk.x, y: jwk.y })
    : sortedKeys({ e: jwk.e, kid, kty: 'RSA', n: jwk.n });
}

/** Where libtrust cuts: just after the last non-space byte before the final '}'. */
function formatLengthOf(content: Buffer): number {
  const close = content.lastIndexOf(0x7d);
  let i = close - 1;
  while (i >= 0 && [0x20, 0x0a, 0x0d, 0x09].includes(content[i] as number)) i--;
  if (close < 0 || i < 0)
    throw new SigningError(SigningErrorCodes.SCHEMA1_INVALID, 'schema1: not a JSON object');
  return i + 1;
}

/** Signs a pretty-printed schema1 manifest (buildSchema1Manifest's bytes) as libtrust does. */
export function signSchema1(
  content: Buffer,
  key: SigningKey,
  opts: Schema1SignOptions = {},
): Schema1Signed {
  const formatLength = formatLengthOf(content);
  const formatTail = content.subarray(formatLength);
  const time = (opts.time ?? new Date()).toISOString().replace(/\.\d+Z$/, 'Z');
  const protectedHeader = Buffer.from(
    goJson({ formatLength, formatTail: formatTail.toString('base64url'), time }),
  ).toString('base64url');
  const input = Buffer.from(`${protectedHeader}.${content.toString('base64url')}`);
  const alg = key.type === 'ec' ? 'ES256' : 'RS256';
  const signature = sign('sha256', input, {
    key: key.privateKey,
    ...(key.type === 'ec' ? { dsaEncoding: 'ieee-p1363' as const } : {}),
  });
  const header = opts.certChain?.length
    ? { alg, x5c: opts.certChain }
    : { jwk: jwkOf(key.publicKey), alg };
  const sigs = [{ header, signature: signature.toString('base64url'), protected: protectedHeader }];
  const bytes = Buffer.concat([
    content.subarray(0, formatLength),
    Buffer.from(`,\n   "signatures": ${goJsonIndent(sigs, '   ', '   ')}\n}`),
  ]);
  return {
    bytes,
    payload: content,
    digest: sha256Digest(content),
    mediaType: MediaTypes.dockerSchema1Signed,
  };
}

interface JwsEntry {
  header?: { jwk?: JsonWebKey & { kid?: string }; alg?: string; x5c?: string[] };
  signature?: string;
  protected?: string;
}

function entriesOf(signed: Buffer): JwsEntry[] {
  const sigs = (JSON.parse(signed.toString('utf8')) as { signatures?: unknown }).signatures;
  if (!Array.isArray(sigs) || sigs.length === 0) {
    throw new SigningError(SigningErrorCodes.SIGNATURE_INVALID, 'schema1: no signatures');
  }
  return sigs as JwsEntry[];
}

/** The canonical payload of a signed schema1 manifest (what its digest is computed over). */
export function schema1Payload(signed: Buffer): Buffer {
  const p = JSON.parse(
    Buffer.from(entriesOf(signed)[0]?.protected ?? '', 'base64url').toString(),
  ) as {
    formatLength?: unknown;
    formatTail?: unknown;
  };
  if (
    typeof p.formatLength !== 'number' ||
    typeof p.formatTail !== 'string' ||
    p.formatLength > signed.length
  ) {
    throw new SigningError(SigningErrorCodes.SIGNATURE_INVALID, 'schema1: bad protected header');
  }
  return Buffer.concat([
    signed.subarray(0, p.formatLength),
    Buffer.from(p.formatTail, 'base64url'),
  ]);
}

function keyOfHeader(h: NonNullable<JwsEntry['header']>): KeyObject {
  if (h.x5c?.length)
    return new X509Certificate(Buffer.from(h.x5c[0] as string, 'base64')).publicKey;
  return createPublicKey({ key: h.jwk as JsonWebKey, format: 'jwk' });
}

/** Checks every JWS signature of a signed schema1 manifest; returns the verifying keys' libtrust ids. */
export function verifySchema1(signed: Buffer): {
  payload: Buffer;
  digest: string;
  keyIds: string[];
} {
  const payload = schema1Payload(signed);
  const keyIds = entriesOf(signed).map((e, i) => {
    const fail = () =>
      new SigningError(
        SigningErrorCodes.SIGNATURE_INVALID,
        `schema1: signature ${i + 1} does not verify`,
      );
    try {
      const key = keyOfHeader(e.header ?? {});
      const input = Buffer.from(`${e.protected}.${payload.toString('base64url')}`);
      const sig = Buffer.from(e.signature ?? '', 'base64url');
      const ec = e.header?.alg === 'ES256';
      if (!verify('sha256', input, ec ? { key, dsaEncoding: 'ieee-p1363' } : key, sig))
        throw fail();
      return libtrustKeyId(key);
    } catch {
      throw fail();
    }
  });
  return { payload, digest: sha256Digest(payload), keyIds };
}
