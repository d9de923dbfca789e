/**
 * cosign's simple-signing payload and its signature: the JSON cosign signs
 * (field set and order as cosign writes it), an ECDSA P-256 / SHA-256
 * signature over exactly those bytes (ASN.1 DER, base64), and the strict
 * checks a verifier makes on a payload it has verified.
 */
import { sign, verify, type KeyObject } from 'node:crypto';
import { isValidDigest, sha256Digest } from '@ferry/manifest';
import { SigningError, SigningErrorCodes } from './errors';
import { goJson, sortedKeys } from './go-json';
import { publicKeyFromPem, requireEcKey, type SigningKey } from './keys';

export const COSIGN_SIGNATURE_TYPE = 'cosign container image signature';
/** Media type of a signature layer (the payload blob). */
export const COSIGN_PAYLOAD_MEDIA_TYPE = 'application/vnd.dev.cosign.simplesigning.v1+json';
/** Layer annotation holding the base64 signature. */
export const COSIGN_SIGNATURE_ANNOTATION = 'dev.cosignproject.cosign/signature';

export interface CosignPayloadInput {
  /** The repository, without tag or digest, as cosign writes it: `registry.example.com/team/app`. */
  dockerReference: string;
  /** The signed image manifest's digest, `sha256:<hex>`. */
  manifestDigest: string;
  /** cosign `-a key=value` annotations, written to `optional`; none gives `"optional":null`. */
  annotations?: Record<string, string>;
}

/** One signature, ready to attach: the payload blob and the annotation value. */
export interface CosignSignature {
  payload: Buffer;
  /** `sha256:<hex>` of payload (the layer digest). */
  payloadDigest: string;
  /** base64 of the DER ECDSA signature over payload. */
  signature: string;
  /** The image manifest digest the payload names. */
  imageDigest: string;
  /** The tag the signature manifest lives under: `sha256-<hex>.sig`. */
  tag: string;
}

function checkDigest(d: string, what: string): void {
  if (!isValidDigest(d)) throw new TypeError(`${what} ${JSON.stringify(d)} is not a digest`);
}

/** The tag cosign stores signatures of `digest` under: `sha256-<hex>.sig`. */
export function cosignSignatureTag(digest: string): string {
  checkDigest(digest, 'cosignSignatureTag:');
  return digest.replace(':', '-') + '.sig';
}

/** The payload bytes cosign writes for an image. */
export function cosignPayload(input: CosignPayloadInput): Buffer {
  checkDigest(input.manifestDigest, 'cosignPayload: manifestDigest');
  if (!input.dockerReference) throw new TypeError('cosignPayload: dockerReference is empty');
  const annotations = input.annotations ?? {};
  const body = {
    critical: {
      identity: { 'docker-reference': input.dockerReference },
      image: { 'docker-manifest-digest': input.manifestDigest },
      type: COSIGN_SIGNATURE_TYPE,
    },
    optional: Object.keys(annotations).length ? sortedKeys(annotations) : null,
  };
  return Buffer.from(goJson(body), 'utf8');
}

/** Signs an image for cosign with an EC P-256 key (FERRY_SIGNING_KEY_TYPE for RSA). */
export function signCosign(key: SigningKey, input: CosignPayloadInput): CosignSignature {
  requireEcKey(key);
  const payload = cosignPayload(input);
  const signature = sign('sha256', payload, { key: key.privateKey, dsaEncoding: 'der' });
  return {
    payload,
    payloadDigest: sha256Digest(payload),
    signature: signature.toString('base64'),
    imageDigest: input.manifestDigest,
    tag: cosignSignatureTag(input.manifestDigest),
  };
}

export interface ParsedCosignPayload {
  dockerReference: string;
  manifestDigest: string;
  optional: Record<string, unknown> | null;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function exactKeys(v: unknown, keys: string[], field: string): Record<string, unknown> {
  if (!isRecord(v)) throw new Error(`${field} is not an object`);
  const got = Object.keys(v).sort().join(',');
  if (got !== [...keys].sort().join(',')) throw new Error(`${field} has fields ${got || '(none)'}`);
  return v;
}

/** Parses a payload as containers/image does: exactly the known fields, the right type. */
export function parseCosignPayload(payload: Buffer): ParsedCosignPayload {
  try {
    const top = JSON.parse(payload.toString('utf8')) as unknown;
    if (!isRecord(top) || !('critical' in top)) throw new Error('no critical section');
    const extra = Object.keys(top).filter((k) => k !== 'critical' && k !== 'optional');
    if (extra.length) throw new Error(`unknown top-level fields ${extra.join(',')}`);
    const critical = exactKeys(top.critical, ['identity', 'image', 'type'], 'critical');
    if (critical.type !== COSIGN_SIGNATURE_TYPE) {
      throw new Error(`critical.type is ${JSON.stringify(critical.type)}`);
    }
    const identity = exactKeys(critical.identity, ['docker-reference'], 'critical.identity');
    const image = exactKeys(critical.image, ['docker-manifest-digest'], 'critical.image');
    const ref = identity['docker-reference'];
    const digest = image['docker-manifest-digest'];
    if (typeof ref !== 'string' || typeof digest !== 'string') throw new Error('non-string field');
    const optional = top.optional ?? null;
    if (optional !== null && !isRecord(optional)) throw new Error('optional is not an object');
    return { dockerReference: ref, manifestDigest: digest, optional };
  } catch (err) {
    throw new SigningError(
      SigningErrorCodes.SIGNATURE_INVALID,
      `not a cosign simple-signing payload: ${(err as Error).message}`,
    );
  }
}

export type PayloadVerdict =
  | { valid: true; payload: ParsedCosignPayload }
  | { valid: false; reason: string; payload?: ParsedCosignPayload };

/**
 * Checks one signature: `signature` (base64 DER) verifies over the payload
 * bytes with `publicKey`, the payload is a cosign payload, and it names
 * `imageDigest` (and `dockerReference`, when given).
 */
export function verifyCosignPayload(
  payload: Buffer,
  signature: string,
  publicKey: KeyObject | string,
  expect: { imageDigest: string; dockerReference?: string },
): PayloadVerdict {
  const key = typeof publicKey === 'string' ? publicKeyFromPem(publicKey) : publicKey;
  const sig = Buffer.from(signature, 'base64');
  let ok: boolean;
  try {
    ok = sig.length > 0 && verify('sha256', payload, { key, dsaEncoding: 'der' }, sig);
  } catch {
    ok = false;
  }
  if (!ok) return { valid: false, reason: 'the signature does not verify with this key' };
  let parsed: ParsedCosignPayload;
  try {
    parsed = parseCosignPayload(payload);
  } catch (err) {
    return { valid: false, reason: (err as Error).message };
  }
  if (parsed.manifestDigest !== expect.imageDigest) {
    return {
      valid: false,
      reason: `the payload signs ${parsed.manifestDigest}, not ${expect.imageDigest}`,
      payload: parsed,
    };
  }
  if (expect.dockerReference !== undefined && parsed.dockerReference !== expect.dockerReference) {
    return {
      valid: false,
      reason: `the payload names ${parsed.dockerReference}, not ${expect.dockerReference}`,
      payload: parsed,
    };
  }
  return { valid: true, payload: parsed };
}
