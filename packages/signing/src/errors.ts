/**
 * One table of error codes for @ferry/signing. Messages name the file or the
 * field at fault and never carry key material (no PEM, no armored block, no
 * passphrase); a caller can show them as they are.
 */
export const SigningErrorCodes = {
  /** The key file cannot be read (missing, a directory, no permission). */
  KEY_UNREADABLE: 'FERRY_SIGNING_KEY_UNREADABLE',
  /** The file holds no usable private key (not PEM, corrupt, cosign's own encrypted format). */
  KEY_INVALID: 'FERRY_SIGNING_KEY_INVALID',
  /** The key is encrypted and the passphrase is missing or wrong. */
  KEY_PASSPHRASE: 'FERRY_SIGNING_KEY_PASSPHRASE',
  /** A key of a type this use does not accept (P-384, Ed25519, short RSA, RSA for cosign). */
  KEY_TYPE: 'FERRY_SIGNING_KEY_TYPE',
  /** A public key (verification) that cannot be parsed. */
  PUBLIC_KEY_INVALID: 'FERRY_SIGNING_PUBLIC_KEY_INVALID',
  /** The certificate chain file is unreadable or holds no valid certificate. */
  CERT_INVALID: 'FERRY_SIGNING_CERT_INVALID',
  /** The chain's first certificate is not for the signing key. */
  CERT_MISMATCH: 'FERRY_SIGNING_CERT_MISMATCH',
  /** keygen would overwrite an existing file. */
  KEY_EXISTS: 'FERRY_SIGNING_KEY_EXISTS',
  /** The armored OpenPGP key is unreadable, not a private key, or cannot sign. */
  PGP_KEY_INVALID: 'FERRY_PGP_KEY_INVALID',
  /** The OpenPGP key is encrypted and the passphrase is missing or wrong. */
  PGP_KEY_PASSPHRASE: 'FERRY_PGP_KEY_PASSPHRASE',
  /** A signature manifest / payload that does not have the expected shape. */
  SIGNATURE_INVALID: 'FERRY_SIGNATURE_INVALID',
  /** Appending a cosign signature did not stick after every attempt (a concurrent writer). */
  SIGNATURE_CONFLICT: 'FERRY_SIGNATURE_CONFLICT',
  /** A schema1 manifest cannot be built from this config / these layers. */
  SCHEMA1_INVALID: 'FERRY_SCHEMA1_INVALID',
  /** A blob fetched for verification does not match its digest. */
  DIGEST_MISMATCH: 'FERRY_DIGEST_MISMATCH',
} as const;

export type SigningErrorCode = (typeof SigningErrorCodes)[keyof typeof SigningErrorCodes];

export class SigningError extends Error {
  override readonly name = 'SigningError';
  readonly code: SigningErrorCode;
  /** The file at fault, when there is one (a path, never its content). */
  readonly path?: string;
  constructor(code: SigningErrorCode, message: string, path?: string) {
    super(message);
    this.code = code;
    if (path !== undefined) this.path = path;
  }
}
