/**
 * The signature manifest cosign stores under `sha256-<hex>.sig`: an OCI image
 * manifest whose config is the small image config go-containerregistry writes
 * for cosign's empty image, and whose layers are the signature payloads, each
 * with its signature in an annotation. Pure functions: bytes in, bytes and the
 * blobs to upload out.
 */
import { verify, type KeyObject } from 'node:crypto';
import {
  MediaTypes,
  canonicalOf,
  isValidDigest,
  sha256Digest,
  type Canonical,
} from '@ferry/manifest';
import {
  COSIGN_PAYLOAD_MEDIA_TYPE,
  COSIGN_SIGNATURE_ANNOTATION,
  type CosignSignature,
} from './cosign-payload';
import { SigningError, SigningErrorCodes } from './errors';
import { goJson, sortedKeys } from './go-json';
import { publicKeyFromPem } from './keys';

/** A blob to upload before the manifest that references it. */
export interface SignatureBlob {
  digest: string;
  size: number;
  mediaType: string;
  bytes: Buffer;
}

export interface SignatureManifestUpdate {
  /** The manifest to PUT under the signature tag (the existing bytes when nothing was added). */
  manifest: Canonical;
  /** Blobs the manifest needs that may not be in the registry yet: config, then the new payload. */
  blobs: SignatureBlob[];
  /** False when an identical signature was already there (nothing to write). */
  added: boolean;
  /** Signature layers in the manifest. */
  layerCount: number;
}

/** A layer descriptor as found in a signature manifest (other fields kept as they were). */
export type SignatureLayer = Record<string, unknown> & {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
};

export interface ParsedSignatureManifest {
  mediaType: string;
  configMediaType: string;
  layers: SignatureLayer[];
  /** Top-level fields other than schemaVersion, mediaType, config and layers (kept on append). */
  rest: Record<string, unknown>;
}

function invalid(message: string): SigningError {
  return new SigningError(SigningErrorCodes.SIGNATURE_INVALID, `signature manifest: ${message}`);
}

/** Reads a signature manifest; FERRY_SIGNATURE_INVALID when it is not an image manifest with layers. */
export function parseSignatureManifest(bytes: Buffer): ParsedSignatureManifest {
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw invalid('not JSON');
  }
  if (typeof m !== 'object' || m === null || m.schemaVersion !== 2)
    throw invalid('not schemaVersion 2');
  const config = m.config as Record<string, unknown> | undefined;
  if (!Array.isArray(m.layers) || typeof config?.mediaType !== 'string') {
    throw invalid('no config or no layers');
  }
  const layers = m.layers as SignatureLayer[];
  layers.forEach((l, i) => {
    if (
      typeof l !== 'object' ||
      l === null ||
      !isValidDigest(l.digest) ||
      typeof l.size !== 'number'
    ) {
      throw invalid(`layers[${i}] is not a descriptor`);
    }
  });
  const { schemaVersion: _v, mediaType, config: _c, layers: _l, ...rest } = m;
  return {
    mediaType: typeof mediaType === 'string' ? mediaType : MediaTypes.ociManifest,
    configMediaType: config.mediaType,
    layers,
    rest,
  };
}

const ZERO_TIME = '0001-01-01T00:00:00Z';

/** The config go-containerregistry writes for cosign's empty image with these layers appended. */
export function signatureConfig(layerDigests: string[]): Buffer {
  return Buffer.from(
    goJson({
      architecture: '',
      created: ZERO_TIME,
      history: layerDigests.map(() => ({ created: ZERO_TIME })),
      os: '',
      rootfs: { type: 'layers', diff_ids: layerDigests },
      config: {},
    }),
  );
}

function layerOf(sig: CosignSignature): SignatureLayer {
  return {
    mediaType: COSIGN_PAYLOAD_MEDIA_TYPE,
    size: sig.payload.length,
    digest: sig.payloadDigest,
    annotations: { [COSIGN_SIGNATURE_ANNOTATION]: sig.signature },
  };
}

/** True when `layer` already holds `sig`: same payload and same signature, or verifiable by dedupeKey. */
function isDuplicate(layer: SignatureLayer, sig: CosignSignature, dedupeKey?: KeyObject): boolean {
  if (layer.digest !== sig.payloadDigest) return false;
  const existing = layer.annotations?.[COSIGN_SIGNATURE_ANNOTATION];
  if (typeof existing !== 'string') return false;
  if (existing === sig.signature) return true;
  if (!dedupeKey) return false;
  try {
    const der = Buffer.from(existing, 'base64');
    return verify('sha256', sig.payload, { key: dedupeKey, dsaEncoding: 'der' }, der);
  } catch {
    return false;
  }
}

export interface AppendOptions {
  /**
   * Treat a layer with the same payload signed by this public key as the same
   * signature (ECDSA signatures differ on every run), so re-signing an image
   * with the same key does not grow the manifest.
   */
  dedupeKey?: KeyObject | string;
}

/**
 * Adds `sig` to the signature manifest `existing` (undefined: none yet),
 * keeping every other layer as it was. Returns the new manifest and the
 * blobs to upload first; `added: false` and the unchanged bytes when the
 * signature is already there.
 */
export function appendCosignSignature(
  existing: Buffer | undefined,
  sig: CosignSignature,
  opts: AppendOptions = {},
): SignatureManifestUpdate {
  const parsed: ParsedSignatureManifest = existing
    ? parseSignatureManifest(existing)
    : {
        mediaType: MediaTypes.ociManifest,
        configMediaType: MediaTypes.ociConfig,
        layers: [],
        rest: {},
      };
  const key =
    typeof opts.dedupeKey === 'string' ? publicKeyFromPem(opts.dedupeKey) : opts.dedupeKey;
  if (existing && parsed.layers.some((l) => isDuplicate(l, sig, key))) {
    return {
      manifest: canonicalOf(existing, parsed.mediaType),
      blobs: [],
      added: false,
      layerCount: parsed.layers.length,
    };
  }
  const layers = [...parsed.layers, layerOf(sig)];
  const configBytes = signatureConfig(layers.map((l) => l.digest));
  const config = {
    mediaType: parsed.configMediaType,
    size: configBytes.length,
    digest: sha256Digest(configBytes),
  };
  const body = {
    schemaVersion: 2,
    mediaType: parsed.mediaType,
    config,
    layers: layers.map((l) =>
      l.annotations ? { ...l, annotations: sortedKeys(l.annotations) } : l,
    ),
    ...parsed.rest,
  };
  return {
    manifest: canonicalOf(Buffer.from(goJson(body)), parsed.mediaType),
    blobs: [
      { ...config, bytes: configBytes },
      {
        digest: sig.payloadDigest,
        size: sig.payload.length,
        mediaType: COSIGN_PAYLOAD_MEDIA_TYPE,
        bytes: sig.payload,
      },
    ],
    added: true,
    layerCount: layers.length,
  };
}
