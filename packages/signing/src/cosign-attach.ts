/**
 * Read → append → write of a cosign signature manifest through an injected
 * registry interface. A registry has no compare-and-swap on tags, so two
 * writers can still overwrite each other: the caller passes a `lock` that
 * serialises writers of one signature tag (Ferry's coordinator uses a Redis
 * lease), and the write is read back and retried if the signature is missing.
 */
import { sha256Digest } from '@ferry/manifest';
import type { KeyObject } from 'node:crypto';
import { COSIGN_SIGNATURE_ANNOTATION, type CosignSignature } from './cosign-payload';
import {
  appendCosignSignature,
  parseSignatureManifest,
  type SignatureBlob,
} from './cosign-manifest';
import { SigningError, SigningErrorCodes } from './errors';

/** What attaching needs from a registry, for the image's repository. */
export interface SignatureStore {
  /** The manifest tagged `tag`, or undefined when there is none (404). */
  getManifest(tag: string): Promise<Buffer | undefined>;
  /** Uploads a blob (the store may skip one that already exists). */
  putBlob(blob: SignatureBlob): Promise<void>;
  /** PUTs manifest bytes under `tag`. */
  putManifest(tag: string, bytes: Buffer, mediaType: string): Promise<void>;
}

/** Runs fn while holding an exclusive lock named key. */
export type LockFn = <T>(key: string, fn: () => Promise<T>) => Promise<T>;

export interface AttachOptions {
  /** Serialises writers of one signature tag; default: none (single writer assumed). */
  lock?: LockFn;
  /** Name for the lock; default the signature tag (prefix it with the registry and repository). */
  lockKey?: string;
  /** See AppendOptions.dedupeKey. */
  dedupeKey?: KeyObject | string;
  /** Read-back attempts before FERRY_SIGNATURE_CONFLICT; default 5. */
  attempts?: number;
}

export interface AttachResult {
  tag: string;
  /** Digest of the signature manifest now under the tag. */
  manifestDigest: string;
  /** False when the same signature was already attached. */
  added: boolean;
  layerCount: number;
}

function holds(bytes: Buffer | undefined, sig: CosignSignature): boolean {
  if (!bytes) return false;
  return parseSignatureManifest(bytes).layers.some(
    (l) =>
      l.digest === sig.payloadDigest &&
      l.annotations?.[COSIGN_SIGNATURE_ANNOTATION] === sig.signature,
  );
}

async function attemptOnce(store: SignatureStore, sig: CosignSignature, opts: AttachOptions) {
  const existing = await store.getManifest(sig.tag);
  const update = appendCosignSignature(existing, sig, { dedupeKey: opts.dedupeKey });
  if (!update.added) return { update, stuck: true };
  for (const blob of update.blobs) await store.putBlob(blob);
  await store.putManifest(sig.tag, update.manifest.bytes, update.manifest.mediaType);
  return { update, stuck: holds(await store.getManifest(sig.tag), sig) };
}

/** Appends `sig` to the image's signature manifest in the store, never dropping other signatures. */
export async function attachCosignSignature(
  store: SignatureStore,
  sig: CosignSignature,
  opts: AttachOptions = {},
): Promise<AttachResult> {
  const attempts = opts.attempts ?? 5;
  const run = async (): Promise<AttachResult> => {
    for (let i = 0; i < attempts; i++) {
      const { update, stuck } = await attemptOnce(store, sig, opts);
      if (stuck) {
        return {
          tag: sig.tag,
          manifestDigest: sha256Digest(update.manifest.bytes),
          added: update.added,
          layerCount: update.layerCount,
        };
      }
    }
    throw new SigningError(
      SigningErrorCodes.SIGNATURE_CONFLICT,
      `${sig.tag}: another writer replaced the signature manifest ${attempts} times; the signature was not kept`,
    );
  };
  return opts.lock ? opts.lock(opts.lockKey ?? sig.tag, run) : run();
}
