/**
 * Private and public keys from PEM files, through node:crypto only. A
 * SigningKey is EC P-256 (cosign, schema1 ES256) or RSA ≥ 2048 bits (schema1
 * RS256). Errors name the file, never the bytes in it.
 */
import { createHash, createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { SigningError, SigningErrorCodes } from './errors';

export type SigningKeyType = 'ec' | 'rsa';

export interface SigningKey {
  readonly type: SigningKeyType;
  /** RSA modulus length, or 256 for P-256. */
  readonly bits: number;
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** SPKI PEM of the public key (what `cosign verify --key` and /v1/signing/public-key take). */
  readonly publicKeyPem: string;
  /** `sha256:<hex>` of the public key's SPKI DER. */
  readonly fingerprint: string;
  /** Where the key came from (a path, or a label), for messages. */
  readonly source: string;
}

export interface LoadKeyOptions {
  /** Passphrase of an encrypted PEM (PKCS#8 `ENCRYPTED PRIVATE KEY` or traditional `Proc-Type: 4,ENCRYPTED`). */
  passphrase?: string;
}

/** The smallest RSA key accepted for signing. */
export const MIN_RSA_BITS = 2048;

/** `sha256:<hex>` of a public key's SPKI DER (a KeyObject, or a PEM of a public or private key). */
export function publicKeyFingerprint(key: KeyObject | string): string {
  const pub = typeof key === 'string' ? createPublicKey(key) : key;
  const spki = (pub.type === 'private' ? createPublicKey(pub) : pub).export({
    type: 'spki',
    format: 'der',
  });
  return 'sha256:' + createHash('sha256').update(spki).digest('hex');
}

function keyError(err: unknown, source: string, hasPassphrase: boolean, pem: string): SigningError {
  const code = (err as { code?: string }).code ?? '';
  const msg = (err as Error).message ?? '';
  if (/BEGIN ENCRYPTED (COSIGN|SIGSTORE) PRIVATE KEY/.test(pem)) {
    return new SigningError(
      SigningErrorCodes.KEY_INVALID,
      `${source}: cosign's own encrypted key format is not supported; use a PEM (PKCS#8) EC P-256 key, e.g. from \`ferry keygen\` or \`openssl ecparam -genkey -name prime256v1\``,
      source,
    );
  }
  if (
    code === 'ERR_MISSING_PASSPHRASE' ||
    /bad decrypt|passphrase|interrupted or cancelled/i.test(msg)
  ) {
    return new SigningError(
      SigningErrorCodes.KEY_PASSPHRASE,
      hasPassphrase
        ? `${source}: the passphrase does not decrypt this key`
        : `${source}: the key is encrypted and no passphrase was given (FERRY_KEY_PASSPHRASE_FILE)`,
      source,
    );
  }
  return new SigningError(
    SigningErrorCodes.KEY_INVALID,
    `${source}: not a PEM private key (${code || 'unparseable'})`,
    source,
  );
}

function describeKeyType(key: KeyObject): { type: SigningKeyType; bits: number } | string {
  const d = key.asymmetricKeyDetails ?? {};
  if (key.asymmetricKeyType === 'ec') {
    if (d.namedCurve === 'prime256v1') return { type: 'ec', bits: 256 };
    return `an EC key on curve ${d.namedCurve ?? 'unknown'} (only P-256 is supported)`;
  }
  if (key.asymmetricKeyType === 'rsa') {
    const bits = d.modulusLength ?? 0;
    if (bits >= MIN_RSA_BITS) return { type: 'rsa', bits };
    return `an RSA key of ${bits} bits (at least ${MIN_RSA_BITS} are needed)`;
  }
  return `a key of type ${key.asymmetricKeyType ?? 'unknown'} (EC P-256 or RSA expected)`;
}

/** A SigningKey from PEM text; `source` names it in errors. */
export function signingKeyFromPem(
  pem: string | Buffer,
  source = 'signing key',
  opts: LoadKeyOptions = {},
): SigningKey {
  const text = Buffer.isBuffer(pem) ? pem.toString('utf8') : pem;
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({
      key: text,
      format: 'pem',
      ...(opts.passphrase !== undefined ? { passphrase: opts.passphrase } : {}),
    });
  } catch (err) {
    throw keyError(err, source, opts.passphrase !== undefined, text);
  }
  const kind = describeKeyType(privateKey);
  if (typeof kind === 'string') {
    throw new SigningError(SigningErrorCodes.KEY_TYPE, `${source}: ${kind}`, source);
  }
  const publicKey = createPublicKey(privateKey);
  return {
    ...kind,
    privateKey,
    publicKey,
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }) as string,
    fingerprint: publicKeyFingerprint(publicKey),
    source,
  };
}

/** Reads a file for a key; an unreadable file is FERRY_SIGNING_KEY_UNREADABLE naming it. */
export async function readKeyFile(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'error';
    throw new SigningError(
      SigningErrorCodes.KEY_UNREADABLE,
      `${path}: cannot read (${code})`,
      path,
    );
  }
}

/** Loads FERRY_SIGNING_KEY: a PEM private key file (EC P-256 or RSA), encrypted or not. */
export async function loadSigningKey(path: string, opts: LoadKeyOptions = {}): Promise<SigningKey> {
  return signingKeyFromPem(await readKeyFile(path), path, opts);
}

/**
 * Reads FERRY_KEY_PASSPHRASE_FILE: the file's text without one trailing
 * newline (CRLF or LF), as `echo secret > file` writes it.
 */
export async function readPassphraseFile(path: string): Promise<string> {
  const text = (await readKeyFile(path)).toString('utf8');
  return text.replace(/\r?\n$/, '');
}

/** Throws FERRY_SIGNING_KEY_TYPE unless the key is EC P-256 (cosign signs with nothing else). */
export function requireEcKey(key: SigningKey, use = 'cosign signatures'): void {
  if (key.type !== 'ec') {
    throw new SigningError(
      SigningErrorCodes.KEY_TYPE,
      `${key.source}: ${use} need an EC P-256 key, this is ${key.type.toUpperCase()} ${key.bits}`,
      key.source,
    );
  }
}

/** A verification key from a PEM (SPKI public key, certificate, or a private key's public half). */
export function publicKeyFromPem(pem: string | Buffer, source = 'public key'): KeyObject {
  try {
    const key = createPublicKey(Buffer.isBuffer(pem) ? pem.toString('utf8') : pem);
    return key;
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'unparseable';
    throw new SigningError(
      SigningErrorCodes.PUBLIC_KEY_INVALID,
      `${source}: not a PEM public key (${code})`,
      source,
    );
  }
}

/** Reads a public key PEM file (`ferry verify --key PUB`). */
export async function loadPublicKey(path: string): Promise<KeyObject> {
  return publicKeyFromPem(await readKeyFile(path), path);
}
