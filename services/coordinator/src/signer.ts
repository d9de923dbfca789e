/**
 * The coordinator's keys and what it signs with them. Only this role reads
 * private keys (FERRY_SIGNING_KEY, FERRY_PGP_KEY, FERRY_KEY_PASSPHRASE_FILE);
 * it publishes the public halves to Redis for the API to serve, and refuses
 * to start when another coordinator of the cluster published a different key.
 *
 * - cosign: an EC P-256 key signs the manifest digest; the signature is
 *   appended to `sha256-<hex>.sig` in the target repository under a
 *   cluster-wide lock (read, append, write — never put over another's).
 * - OpenPGP simple signing: one signature per tag (its payload names
 *   `registry/repo:tag`), kept in Redis and served at /sigstore.
 * - schema1 (see schema1.ts): the same EC key (ES256) or an RSA key (RS256).
 */
import type { FerryConfig } from '@ferry/config';
import type { Logger } from '@ferry/log';
import type { QueueContext, SignatureRecord, SignRequest } from '@ferry/queue';
import type { RegistryClient, RepoRef } from '@ferry/registry-client';
import { bufferBlobSource, ErrorCodes, RegistryError } from '@ferry/registry-client';
import { PermanentError } from '@ferry/runtime';
import {
  attachCosignSignature,
  loadCertChain,
  loadPgpKey,
  loadSigningKey,
  readPassphraseFile,
  signCosign,
  signSimpleSigning,
  type PgpSigningKey,
  type SignatureStore,
  type SigningKey,
} from '@ferry/signing';

export interface Signer {
  /** FERRY_SIGNING_KEY: EC (cosign + schema1 ES256) or RSA (schema1 RS256 only). */
  key?: SigningKey;
  /** FERRY_SIGNING_CERT as an x5c chain, for schema1. */
  certChain?: string[];
  /** FERRY_PGP_KEY. */
  pgp?: PgpSigningKey;
}

/** Reads the configured keys (the coordinator only). A key that does not load stops the start. */
export async function loadSigner(config: FerryConfig): Promise<Signer> {
  const passphrase = config.keyPassphraseFile
    ? await readPassphraseFile(config.keyPassphraseFile)
    : undefined;
  const opts = passphrase !== undefined ? { passphrase } : {};
  const signer: Signer = {};
  if (config.signingKey) {
    signer.key = await loadSigningKey(config.signingKey, opts);
    if (config.signingCert) signer.certChain = await loadCertChain(config.signingCert, signer.key);
  }
  if (config.pgpKey) signer.pgp = await loadPgpKey(config.pgpKey, opts);
  return signer;
}

/**
 * Publishes the public keys (cosign, schema1, pgp) to Redis. Throws — the
 * coordinator must not start — when a different key is already published.
 */
export async function publishKeys(
  ctx: QueueContext,
  signer: Signer,
  logger: Logger,
): Promise<void> {
  const entries: ['cosign' | 'schema1' | 'pgp', string, string][] = [];
  if (signer.key?.type === 'ec')
    entries.push(['cosign', signer.key.publicKeyPem, signer.key.fingerprint]);
  if (signer.key) entries.push(['schema1', signer.key.publicKeyPem, signer.key.fingerprint]);
  if (signer.pgp) entries.push(['pgp', signer.pgp.publicKeyArmored, signer.pgp.fingerprint]);
  for (const [kind, key, fingerprint] of entries) {
    const r = await ctx.signing.publishKey(kind, { key, fingerprint });
    if (!r.ok) {
      throw new Error(
        `this coordinator's ${kind} key (${fingerprint}) differs from the one the cluster published (${r.published.fingerprint}); every coordinator must hold the same key`,
      );
    }
    logger.info(`signing: ${kind} key ${fingerprint} published`);
  }
}

/** What a push asks to be signed with: `true` is every configured key. */
export function wanted(sign: SignRequest | boolean | undefined, signer: Signer) {
  if (sign === true) return { cosign: signer.key?.type === 'ec', pgp: signer.pgp !== undefined };
  if (!sign) return { cosign: false, pgp: false };
  return { cosign: sign.cosign === true, pgp: sign.pgp === true };
}

/** The registry client as the cosign attach sees a repository. */
function signatureStore(client: RegistryClient, repo: RepoRef): SignatureStore {
  return {
    async getManifest(tag) {
      try {
        const m = await client.getManifest(repo, tag, [
          'application/vnd.oci.image.manifest.v1+json',
        ]);
        return m.body;
      } catch (err) {
        if (err instanceof RegistryError && err.code === ErrorCodes.MANIFEST_UNKNOWN)
          return undefined;
        throw err;
      }
    },
    async putBlob(blob) {
      if (await client.blobExists(repo, blob.digest)) return;
      await client.uploadBlob(repo, bufferBlobSource(blob.bytes, blob.digest), {
        monolithic: true,
      });
    },
    async putManifest(tag, bytes, mediaType) {
      await client.putManifest(repo, tag, bytes, mediaType);
    },
  };
}

export interface SignTarget {
  repo: RepoRef;
  /** The manifest (or index) digest the tags will name. */
  digest: string;
  tags: string[];
}

/**
 * Signs one pushed image as asked, before any tag names it: a cosign
 * signature in the target repository, an OpenPGP signature per tag in the
 * lookaside store. Returns what was made (the push state lists it).
 */
export async function signPushed(
  ctx: QueueContext,
  client: RegistryClient,
  signer: Signer,
  sign: SignRequest | boolean | undefined,
  pushId: string,
  t: SignTarget,
): Promise<SignatureRecord[]> {
  const want = wanted(sign, signer);
  const out: SignatureRecord[] = [];
  const name = `${t.repo.registry}/${t.repo.repository}`;
  if (want.cosign) {
    if (signer.key?.type !== 'ec') {
      throw new PermanentError(
        'FERRY_SIGNING_NOT_CONFIGURED',
        'cosign signing needs an EC P-256 FERRY_SIGNING_KEY on the coordinator',
      );
    }
    const sig = signCosign(signer.key, { dockerReference: name, manifestDigest: t.digest });
    await attachCosignSignature(signatureStore(client, t.repo), sig, {
      lock: (key, fn) => ctx.signing.withLock(key, fn),
      lockKey: `${name}/${sig.tag}`,
      dedupeKey: signer.key.publicKey,
    });
    await ctx.store.appendEvent(pushId, { type: 'signature', kind: 'cosign', digest: t.digest });
    out.push({
      kind: 'cosign',
      digest: t.digest,
      tag: sig.tag,
      repository: name,
      key: signer.key.fingerprint,
    });
  }
  if (want.pgp) {
    if (!signer.pgp) {
      throw new PermanentError(
        'FERRY_SIGNING_NOT_CONFIGURED',
        'OpenPGP signing needs FERRY_PGP_KEY on the coordinator',
      );
    }
    for (const tag of t.tags) {
      const signature = await signSimpleSigning(signer.pgp, {
        dockerReference: `${name}:${tag}`,
        manifestDigest: t.digest,
        creator: 'Ferry',
      });
      const n = await ctx.signing.addLookaside(
        t.repo.repository,
        t.digest,
        signature,
        `${signer.pgp.fingerprint}|${name}:${tag}`,
      );
      await ctx.store.appendEvent(pushId, { type: 'signature', kind: 'pgp', digest: t.digest });
      out.push({
        kind: 'pgp',
        digest: t.digest,
        reference: `${name}:${tag}`,
        lookaside: `${t.repo.repository}@${t.digest.replace(':', '=')}/signature-${n}`,
        key: signer.pgp.fingerprint,
      });
    }
  }
  return out;
}
