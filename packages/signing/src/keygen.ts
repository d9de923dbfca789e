/**
 * `ferry keygen`: a new key pair in a directory. EC P-256 by default (signs
 * cosign and schema1 ES256), made by node:crypto; RSA with a self-signed X.509
 * certificate made by node-forge (usable as FERRY_SIGNING_CERT for schema1
 * `x5c`; forge has no ECDSA, so EC keys get no certificate here).
 */
import { generateKeyPair as generateKeyPairCb, randomBytes, type KeyObject } from 'node:crypto';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import forge from 'node-forge';
import { SigningError, SigningErrorCodes } from './errors';
import { publicKeyFingerprint } from './keys';

const generateKeyPair = promisify(generateKeyPairCb);

export interface KeygenOptions {
  /** An RSA key (2048 or 3072 bits; `true` = 3072) with a self-signed certificate, instead of EC P-256. */
  rsa?: boolean | 2048 | 3072;
  /** Encrypt the private key (PKCS#8, AES-256-CBC) with this passphrase. */
  passphrase?: string;
  /** Subject CN of the RSA certificate; default "Ferry signing key". */
  commonName?: string;
  /** Validity of the RSA certificate in days; default 3650. */
  days?: number;
  /** Replace existing files; default false (FERRY_SIGNING_KEY_EXISTS). */
  force?: boolean;
}

export interface GeneratedKeys {
  type: 'ec' | 'rsa';
  bits: number;
  /** Mode 0600. */
  privateKeyPath: string;
  publicKeyPath: string;
  /** RSA only: the self-signed certificate (a one-element chain for FERRY_SIGNING_CERT). */
  certificatePath?: string;
  /** `sha256:<hex>` of the SPKI DER. */
  fingerprint: string;
}

/** File names keygen writes: cosign's names for EC, schema1.* for the RSA (schema1-only) key. */
export const KEYGEN_FILES = {
  ec: { key: 'cosign.key', pub: 'cosign.pub' },
  rsa: { key: 'schema1.key', pub: 'schema1.pub', cert: 'schema1.crt' },
} as const;

function exportPrivate(key: KeyObject, passphrase?: string): string {
  return key.export({
    type: 'pkcs8',
    format: 'pem',
    ...(passphrase !== undefined ? { cipher: 'aes-256-cbc', passphrase } : {}),
  }) as string;
}

/** A self-signed X.509 certificate (SHA-256 with RSA) for an RSA key pair, made with node-forge. */
export function selfSignedCertificate(
  privateKey: KeyObject,
  publicKey: KeyObject,
  opts: { commonName?: string; days?: number; now?: Date } = {},
): string {
  const now = opts.now ?? new Date();
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(
    publicKey.export({ type: 'spki', format: 'pem' }) as string,
  );
  // A positive serial: first byte below 0x80.
  cert.serialNumber = '01' + randomBytes(15).toString('hex');
  cert.validity.notBefore = new Date(now.getTime() - 60_000);
  cert.validity.notAfter = new Date(now.getTime() + (opts.days ?? 3650) * 86_400_000);
  const attrs = [{ name: 'commonName', value: opts.commonName ?? 'Ferry signing key' }];
  cert.setSubject(attrs);
  cert.setIssuer(attrs);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  const forgeKey = forge.pki.privateKeyFromPem(exportPrivate(privateKey));
  cert.sign(forgeKey, forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

async function refuseExisting(paths: string[]): Promise<void> {
  for (const p of paths) {
    const exists = await stat(p).then(
      () => true,
      () => false,
    );
    if (exists) {
      throw new SigningError(
        SigningErrorCodes.KEY_EXISTS,
        `${p} exists; refusing to overwrite a key (use --force to replace it)`,
        p,
      );
    }
  }
}

/** Writes a new key pair (and, for RSA, a certificate) into dir, creating it (0700) if needed. */
export async function generateKeys(dir: string, opts: KeygenOptions = {}): Promise<GeneratedKeys> {
  const rsaBits = opts.rsa === true ? 3072 : opts.rsa || 0;
  if (rsaBits && rsaBits !== 2048 && rsaBits !== 3072) {
    throw new TypeError(`generateKeys: rsa must be 2048 or 3072, got ${String(opts.rsa)}`);
  }
  const names = rsaBits ? KEYGEN_FILES.rsa : KEYGEN_FILES.ec;
  const out: GeneratedKeys = {
    type: rsaBits ? 'rsa' : 'ec',
    bits: rsaBits || 256,
    privateKeyPath: join(dir, names.key),
    publicKeyPath: join(dir, names.pub),
    fingerprint: '',
  };
  if (rsaBits) out.certificatePath = join(dir, KEYGEN_FILES.rsa.cert);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const paths = [out.privateKeyPath, out.publicKeyPath, out.certificatePath ?? ''].filter(Boolean);
  if (!opts.force) await refuseExisting(paths);

  const { privateKey, publicKey } = rsaBits
    ? await generateKeyPair('rsa', { modulusLength: rsaBits })
    : await generateKeyPair('ec', { namedCurve: 'P-256' });
  const flag = opts.force ? 'w' : 'wx';
  await writeFile(out.privateKeyPath, exportPrivate(privateKey, opts.passphrase), {
    mode: 0o600,
    flag,
  });
  await writeFile(out.publicKeyPath, publicKey.export({ type: 'spki', format: 'pem' }), {
    mode: 0o644,
    flag,
  });
  if (out.certificatePath) {
    const pem = selfSignedCertificate(privateKey, publicKey, opts);
    await writeFile(out.certificatePath, pem, { mode: 0o644, flag });
  }
  out.fingerprint = publicKeyFingerprint(publicKey);
  return out;
}
