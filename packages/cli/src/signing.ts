/**
 * `ferry keygen` and `ferry verify`: the user's side of signing, run locally
 * (no Ferry server involved). Loaded only by these two commands, so `ferry
 * push` never loads the signing library (OpenPGP.js, node-forge).
 *
 * Nothing here prints key material: keygen prints paths and the public
 * key's fingerprint; verify prints digests and docker-references.
 */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import {
  COSIGN_PAYLOAD_MEDIA_TYPE,
  cosignSignatureTag,
  generateKeys,
  loadPublicKey,
  SigningError,
  SigningErrorCodes,
  verifyCosignSignatures,
  type CosignLayerResult,
} from '@ferry/signing';
import {
  ErrorCodes,
  parseReference,
  RegistryClient,
  RegistryError,
  type RepoRef,
} from '@ferry/registry-client';
import { CliError } from './client';
import type { CliIo } from './main';

// ---------------------------------------------------------------- keygen

export interface KeygenOpts {
  out: string;
  rsa?: boolean;
}

/** Writes a new key pair into --out; prints the paths and the fingerprint. */
export async function keygen(opts: KeygenOpts, io: CliIo): Promise<number> {
  const dir = resolve(io.cwd, opts.out);
  let keys: Awaited<ReturnType<typeof generateKeys>>;
  try {
    keys = await generateKeys(dir, { rsa: Boolean(opts.rsa) });
  } catch (err) {
    if (err instanceof SigningError && err.code === SigningErrorCodes.KEY_EXISTS) {
      throw new CliError(
        err.code,
        `${err.path ?? dir} exists; refusing to overwrite a key (move it away or choose another --out)`,
      );
    }
    if (err instanceof SigningError) throw new CliError(err.code, err.message);
    const e = err as NodeJS.ErrnoException;
    throw new CliError(
      'FERRY_KEYGEN_FAILED',
      `cannot write keys to ${dir}: ${e.code ?? ''} ${e.message ?? String(err)}`.replace(
        /\s+/g,
        ' ',
      ),
    );
  }
  const kind = keys.type === 'ec' ? 'EC P-256' : `RSA ${keys.bits}`;
  const lines = [
    `private key: ${keys.privateKeyPath} (${kind}, mode 0600; FERRY_SIGNING_KEY of the coordinator)`,
    `public key:  ${keys.publicKeyPath}${keys.type === 'ec' ? ' (ferry verify --key, cosign verify --key)' : ''}`,
  ];
  if (keys.certificatePath)
    lines.push(`certificate: ${keys.certificatePath} (FERRY_SIGNING_CERT, schema1 x5c)`);
  lines.push(`fingerprint: ${keys.fingerprint}`);
  io.stdout.write(lines.join('\n') + '\n');
  return 0;
}

// ---------------------------------------------------------------- verify

export interface VerifyOpts {
  key: string;
  json?: boolean;
}

/** A signature payload is a few hundred bytes; a registry serving more is not read further. */
const MAX_PAYLOAD_BYTES = 1024 * 1024;

/** docker config.json: $FERRY_DOCKER_CONFIG, else $DOCKER_CONFIG/config.json, else ~/.docker/config.json. */
export function dockerConfigPath(env: CliIo['env']): string {
  if (env.FERRY_DOCKER_CONFIG) return env.FERRY_DOCKER_CONFIG;
  return join(env.DOCKER_CONFIG || join(homedir(), '.docker'), 'config.json');
}

async function readBlob(client: RegistryClient, repo: RepoRef, digest: string): Promise<Buffer> {
  const { stream } = await client.getBlob(repo, digest);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of stream) {
    size += (c as Buffer).length;
    if (size > MAX_PAYLOAD_BYTES) {
      stream.destroy();
      throw new CliError(
        'FERRY_SIGNATURE_INVALID',
        `signature payload ${digest} is larger than ${MAX_PAYLOAD_BYTES} bytes`,
      );
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

export interface VerifyReport {
  target: string;
  /** The image manifest digest the signatures were checked against (hashed from the bytes read). */
  digest: string;
  signatureTag: string;
  key: string;
  signatures: CosignLayerResult[];
  verified: number;
}

/**
 * Checks the cosign signatures of TARGET with the public key at --key: the
 * manifest TARGET names is read and hashed, its `sha256-<hex>.sig` manifest
 * read, and every layer verified (payload rehashed, signature, the payload's
 * digest naming the image). Exit 0 when at least one verifies.
 */
export async function verify(target: string, opts: VerifyOpts, io: CliIo): Promise<number> {
  const ref = parseReference(target.replace(/^docker:\/\//, ''));
  const publicKey = await loadPublicKey(resolve(io.cwd, opts.key));
  const repo: RepoRef = { registry: ref.registry, repository: ref.repository };
  const name = `${ref.registry}/${ref.repository}`;
  // A user tool: only the registry TARGET names is reached (TLS unless localhost / 127.0.0.0/8).
  const client = new RegistryClient({
    allow: [ref.registry],
    dockerConfigPath: dockerConfigPath(io.env),
    caFile: io.env.FERRY_CA_FILE || undefined,
    retry: { attempts: 3 },
    userAgent: 'ferry-cli/0.1.0',
  });
  try {
    const reference = ref.digest ?? ref.tag ?? 'latest';
    const image = await client.getManifest(repo, reference).catch((err: unknown) => {
      if (err instanceof RegistryError && err.code === ErrorCodes.MANIFEST_UNKNOWN)
        throw new CliError('FERRY_IMAGE_NOT_FOUND', `${name}:${reference}: no such image`);
      throw err;
    });
    const digest = image.digest;
    const signatureTag = cosignSignatureTag(digest);
    const sigs = await client
      .getManifest(repo, signatureTag, [
        'application/vnd.oci.image.manifest.v1+json',
        'application/vnd.docker.distribution.manifest.v2+json',
      ])
      .catch((err: unknown) => {
        if (err instanceof RegistryError && err.code === ErrorCodes.MANIFEST_UNKNOWN) return;
        throw err;
      });
    const report: VerifyReport = {
      target: `${name}@${digest}`,
      digest,
      signatureTag,
      key: opts.key,
      signatures: [],
      verified: 0,
    };
    if (sigs) {
      const result = await verifyCosignSignatures({
        imageDigest: digest,
        signatureManifest: sigs.body,
        fetchBlob: (d) => readBlob(client, repo, d),
        publicKey,
      });
      report.signatures = result.layers;
      report.verified = result.verified.length;
    }
    if (opts.json) io.stdout.write(JSON.stringify(report) + '\n');
    if (!sigs) {
      throw new CliError(
        'FERRY_NO_SIGNATURE',
        `${name}@${digest} has no cosign signature (no tag ${signatureTag})`,
      );
    }
    const total = report.signatures.length;
    if (report.verified === 0) {
      // One line: why each signature failed, each reason once.
      const reasons = [...new Set(report.signatures.map((s) => s.reason ?? 'invalid'))];
      const why =
        total === 0
          ? `its ${signatureTag} manifest holds no ${COSIGN_PAYLOAD_MEDIA_TYPE} layer`
          : `none of its ${total} signature${total === 1 ? '' : 's'} verifies with ${opts.key} (${reasons.join('; ')})`;
      throw new CliError('FERRY_SIGNATURE_NOT_VERIFIED', `${name}@${digest}: ${why}`);
    }
    if (!opts.json) {
      for (const s of report.signatures) {
        if (s.valid) io.stdout.write(`${s.digest} ${s.dockerReference ?? ''}\n`);
        else io.stderr.write(`not verified: ${s.digest} (${s.reason ?? 'invalid'})\n`);
      }
      io.stderr.write(
        `${name}@${digest}: ${report.verified} of ${total} cosign signature${total === 1 ? '' : 's'} verified with ${opts.key}\n`,
      );
    }
    return 0;
  } finally {
    await client.close();
  }
}
