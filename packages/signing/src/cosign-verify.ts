/**
 * Verifies the cosign signatures of an image: every layer of its signature
 * manifest is checked on its own (media type, payload bytes against the layer
 * digest, the signature over those bytes, the payload naming the image), so a
 * manifest holding signatures by several keys reports which ones verify.
 */
import type { KeyObject } from 'node:crypto';
import { sha256Digest } from '@ferry/manifest';
import {
  COSIGN_PAYLOAD_MEDIA_TYPE,
  COSIGN_SIGNATURE_ANNOTATION,
  verifyCosignPayload,
} from './cosign-payload';
import { parseSignatureManifest, type SignatureLayer } from './cosign-manifest';
import { publicKeyFromPem } from './keys';

/** Reads a blob of the signature's repository by digest (the verifier re-hashes what it returns). */
export type BlobFetcher = (digest: string) => Promise<Buffer>;

export interface VerifyCosignInput {
  /** Digest of the image manifest whose signatures these are. */
  imageDigest: string;
  /** Bytes of the manifest tagged `sha256-<hex>.sig`. */
  signatureManifest: Buffer;
  fetchBlob: BlobFetcher;
  /** PEM (SPKI) or KeyObject of the verification key. */
  publicKey: KeyObject | string;
  /** When given, the payload's docker-reference must equal it. */
  dockerReference?: string;
}

export interface CosignLayerResult {
  index: number;
  /** The layer (payload blob) digest. */
  digest: string;
  valid: boolean;
  /** Why the layer does not verify. */
  reason?: string;
  /** The payload's docker-reference, once the payload could be read. */
  dockerReference?: string;
  optional?: Record<string, unknown> | null;
}

export interface CosignVerification {
  /** One entry per layer, in manifest order. */
  layers: CosignLayerResult[];
  /** The layers that verify. */
  verified: CosignLayerResult[];
}

async function checkLayer(
  layer: SignatureLayer,
  index: number,
  input: VerifyCosignInput,
  key: KeyObject,
): Promise<CosignLayerResult> {
  const base = { index, digest: layer.digest };
  if (layer.mediaType !== COSIGN_PAYLOAD_MEDIA_TYPE) {
    return { ...base, valid: false, reason: `layer media type ${layer.mediaType}` };
  }
  const signature = layer.annotations?.[COSIGN_SIGNATURE_ANNOTATION];
  if (typeof signature !== 'string' || !signature) {
    return { ...base, valid: false, reason: `no ${COSIGN_SIGNATURE_ANNOTATION} annotation` };
  }
  const payload = await input.fetchBlob(layer.digest);
  const got = sha256Digest(payload);
  if (got !== layer.digest || payload.length !== layer.size) {
    return {
      ...base,
      valid: false,
      reason: `payload blob is ${got} (${payload.length} bytes), not the layer's`,
    };
  }
  const verdict = verifyCosignPayload(payload, signature, key, input);
  const seen = verdict.payload
    ? { dockerReference: verdict.payload.dockerReference, optional: verdict.payload.optional }
    : {};
  return verdict.valid
    ? { ...base, ...seen, valid: true }
    : { ...base, ...seen, valid: false, reason: verdict.reason };
}

/** Checks every signature layer; never throws for a bad signature, only for a malformed manifest or a failed fetch. */
export async function verifyCosignSignatures(
  input: VerifyCosignInput,
): Promise<CosignVerification> {
  const key =
    typeof input.publicKey === 'string' ? publicKeyFromPem(input.publicKey) : input.publicKey;
  const { layers } = parseSignatureManifest(input.signatureManifest);
  const results: CosignLayerResult[] = [];
  for (const [i, layer] of layers.entries()) results.push(await checkLayer(layer, i, input, key));
  return { layers: results, verified: results.filter((r) => r.valid) };
}
