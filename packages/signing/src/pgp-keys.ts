/**
 * OpenPGP keys for simple signing, through OpenPGP.js: an armored private key
 * (FERRY_PGP_KEY, optionally passphrase-protected), its armored public key
 * (GET /v1/signing/pgp-key) and fingerprints spelled as gpg prints them.
 */
import { openpgp, type OpenPGP } from './openpgp';
import { SigningError, SigningErrorCodes } from './errors';
import { readKeyFile } from './keys';

export interface PgpSigningKey {
  /** The decrypted private key (keep it in the process that signs). */
  readonly privateKey: OpenPGP.PrivateKey;
  /** Armored public key (no secret material). */
  readonly publicKeyArmored: string;
  /** Primary key fingerprint, uppercase hex as `gpg --fingerprint` prints it without spaces. */
  readonly fingerprint: string;
  /** Fingerprint of the (sub)key that makes signatures — what a verifier reports. */
  readonly signingFingerprint: string;
  readonly userIds: string[];
  readonly source: string;
}

function pgpError(code: 'PGP_KEY_INVALID' | 'PGP_KEY_PASSPHRASE', source: string, what: string) {
  return new SigningError(SigningErrorCodes[code], `${source}: ${what}`, source);
}

async function decrypt(key: OpenPGP.PrivateKey, source: string, passphrase?: string) {
  if (key.isDecrypted()) return key;
  if (passphrase === undefined) {
    throw pgpError(
      'PGP_KEY_PASSPHRASE',
      source,
      'the key is encrypted and no passphrase was given',
    );
  }
  try {
    return await openpgp.decryptKey({ privateKey: key, passphrase });
  } catch {
    throw pgpError('PGP_KEY_PASSPHRASE', source, 'the passphrase does not decrypt this key');
  }
}

/** A PgpSigningKey from an armored private key; `source` names it in errors. */
export async function pgpKeyFromArmored(
  armored: string | Buffer,
  source = 'OpenPGP key',
  opts: { passphrase?: string } = {},
): Promise<PgpSigningKey> {
  const text = Buffer.isBuffer(armored) ? armored.toString('utf8') : armored;
  let key: OpenPGP.PrivateKey;
  try {
    key = await openpgp.readPrivateKey({ armoredKey: text });
  } catch {
    throw pgpError('PGP_KEY_INVALID', source, 'not an armored OpenPGP private key');
  }
  const privateKey = await decrypt(key, source, opts.passphrase);
  let signing: Awaited<ReturnType<OpenPGP.PrivateKey['getSigningKey']>>;
  try {
    signing = await privateKey.getSigningKey();
  } catch {
    throw pgpError('PGP_KEY_INVALID', source, 'the key has no valid signing (sub)key');
  }
  return {
    privateKey,
    publicKeyArmored: privateKey.toPublic().armor(),
    fingerprint: privateKey.getFingerprint().toUpperCase(),
    signingFingerprint: signing.getFingerprint().toUpperCase(),
    userIds: privateKey.getUserIDs(),
    source,
  };
}

/** Loads FERRY_PGP_KEY. */
export async function loadPgpKey(
  path: string,
  opts: { passphrase?: string } = {},
): Promise<PgpSigningKey> {
  return pgpKeyFromArmored(await readKeyFile(path), path, opts);
}

/** Uppercase fingerprint of the primary key of an armored (public or private) key. */
export async function pgpFingerprint(armored: string): Promise<string> {
  try {
    return (await openpgp.readKey({ armoredKey: armored })).getFingerprint().toUpperCase();
  } catch {
    throw new SigningError(SigningErrorCodes.PGP_KEY_INVALID, 'not an armored OpenPGP key');
  }
}

export interface GeneratedPgpKey {
  privateKeyArmored: string;
  publicKeyArmored: string;
  fingerprint: string;
}

/**
 * A new OpenPGP key (v4, Ed25519 primary key that signs, as gpg 2.2 reads
 * it), optionally passphrase-protected.
 */
export async function generatePgpKey(opts: {
  name: string;
  email?: string;
  passphrase?: string;
}): Promise<GeneratedPgpKey> {
  const { privateKey, publicKey } = await openpgp.generateKey({
    type: 'ecc',
    curve: 'ed25519Legacy',
    userIDs: [{ name: opts.name, ...(opts.email ? { email: opts.email } : {}) }],
    ...(opts.passphrase !== undefined ? { passphrase: opts.passphrase } : {}),
    format: 'armored',
  });
  return {
    privateKeyArmored: privateKey,
    publicKeyArmored: publicKey,
    fingerprint: await pgpFingerprint(publicKey),
  };
}
