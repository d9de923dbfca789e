/**
 * FERRY_SIGNING_CERT: a PEM certificate chain (leaf first) for the signing
 * key, turned into the `x5c` array of a schema1 JWS header (base64 DER, not
 * base64url). node:crypto's X509Certificate reads it, so EC certificates
 * (which node-forge cannot parse) work too.
 */
import { X509Certificate } from 'node:crypto';
import { SigningError, SigningErrorCodes } from './errors';
import { readKeyFile, publicKeyFingerprint, type SigningKey } from './keys';

const CERT_BLOCK =
  /-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END CERTIFICATE-----/g;

/** The `x5c` array (base64 DER, leaf first) of a PEM chain; checks that the leaf is for `key` when given. */
export function certChainFromPem(
  pem: string | Buffer,
  source = 'certificate chain',
  key?: SigningKey,
): string[] {
  const text = Buffer.isBuffer(pem) ? pem.toString('utf8') : pem;
  const chain: string[] = [];
  for (const m of text.matchAll(CERT_BLOCK)) {
    const der = Buffer.from((m[1] as string).replace(/\s+/g, ''), 'base64');
    try {
      new X509Certificate(der);
    } catch {
      throw new SigningError(
        SigningErrorCodes.CERT_INVALID,
        `${source}: certificate ${chain.length + 1} is not a valid X.509 certificate`,
        source,
      );
    }
    chain.push(der.toString('base64'));
  }
  if (chain.length === 0) {
    throw new SigningError(
      SigningErrorCodes.CERT_INVALID,
      `${source}: no PEM certificate (-----BEGIN CERTIFICATE-----) found`,
      source,
    );
  }
  if (key) {
    const leaf = new X509Certificate(Buffer.from(chain[0] as string, 'base64'));
    const leafFp = publicKeyFingerprint(leaf.publicKey);
    if (leafFp !== key.fingerprint) {
      throw new SigningError(
        SigningErrorCodes.CERT_MISMATCH,
        `${source}: the first certificate's public key (${leafFp}) is not the signing key's (${key.fingerprint}, ${key.source})`,
        source,
      );
    }
  }
  return chain;
}

/** Loads FERRY_SIGNING_CERT for `key`: the x5c array, leaf checked against the key. */
export async function loadCertChain(path: string, key?: SigningKey): Promise<string[]> {
  let text: Buffer;
  try {
    text = await readKeyFile(path);
  } catch (err) {
    throw new SigningError(SigningErrorCodes.CERT_INVALID, (err as Error).message, path);
  }
  return certChainFromPem(text, path, key);
}
