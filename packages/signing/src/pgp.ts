/**
 * OpenPGP simple signing ("atomic container signature", containers-signature(5)):
 * the JSON podman, CRI-O and skopeo verify, signed as a binary, non-detached
 * OpenPGP signed message — what `skopeo standalone-sign` writes — made and
 * checked with OpenPGP.js.
 */
import { openpgp, type OpenPGP } from './openpgp';
import { isValidDigest } from '@ferry/manifest';
import { SigningError, SigningErrorCodes } from './errors';
import { goJson } from './go-json';
import type { PgpSigningKey } from './pgp-keys';

export const SIMPLE_SIGNING_TYPE = 'atomic container signature';

export interface SimpleSigningInput {
  /** The reference the signature vouches for, usually with its tag: `registry.example.com/team/app:1.0`. */
  dockerReference: string;
  /** The signed manifest's digest, `sha256:<hex>`. */
  manifestDigest: string;
  /** `optional.creator`, e.g. "Ferry 0.1.0"; default "Ferry". */
  creator?: string;
  /** `optional.timestamp` in whole seconds since the epoch; default now. */
  timestamp?: number;
}

/** The payload bytes, as containers/image marshals them (sorted keys). */
export function simpleSigningPayload(input: SimpleSigningInput): Buffer {
  if (!isValidDigest(input.manifestDigest)) {
    throw new TypeError(
      `simpleSigningPayload: ${JSON.stringify(input.manifestDigest)} is not a digest`,
    );
  }
  if (!input.dockerReference) throw new TypeError('simpleSigningPayload: dockerReference is empty');
  const timestamp = input.timestamp ?? Math.floor(Date.now() / 1000);
  if (!Number.isSafeInteger(timestamp))
    throw new TypeError('simpleSigningPayload: timestamp must be an integer');
  return Buffer.from(
    goJson({
      critical: {
        identity: { 'docker-reference': input.dockerReference },
        image: { 'docker-manifest-digest': input.manifestDigest },
        type: SIMPLE_SIGNING_TYPE,
      },
      optional: { creator: input.creator ?? 'Ferry', timestamp },
    }),
  );
}

/** A signature to publish at the lookaside path (`signature-<n>`): an OpenPGP binary signed message. */
export async function signSimpleSigning(
  key: PgpSigningKey,
  input: SimpleSigningInput,
): Promise<Buffer> {
  const message = await openpgp.createMessage({ binary: simpleSigningPayload(input) });
  const signed = await openpgp.sign({ message, signingKeys: key.privateKey, format: 'binary' });
  return Buffer.from(signed as Uint8Array);
}

export interface SimpleSignatureContent {
  dockerReference: string;
  manifestDigest: string;
  creator?: string;
  timestamp?: number;
  /** Uppercase fingerprint of the key that made the signature. */
  signedBy: string;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Strict parse, as containers/image does: exactly the critical fields; creator/timestamp typed. */
function parsePayload(data: Uint8Array): Omit<SimpleSignatureContent, 'signedBy'> {
  const top = JSON.parse(Buffer.from(data).toString('utf8')) as unknown;
  if (!isRecord(top) || Object.keys(top).some((k) => k !== 'critical' && k !== 'optional')) {
    throw new Error('unexpected top-level fields');
  }
  const c = top.critical;
  if (!isRecord(c) || Object.keys(c).sort().join() !== 'identity,image,type')
    throw new Error('bad critical section');
  if (c.type !== SIMPLE_SIGNING_TYPE) throw new Error(`critical.type is ${JSON.stringify(c.type)}`);
  const ref = isRecord(c.identity) ? c.identity['docker-reference'] : undefined;
  const digest = isRecord(c.image) ? c.image['docker-manifest-digest'] : undefined;
  if (typeof ref !== 'string' || typeof digest !== 'string')
    throw new Error('bad identity or image');
  const o = isRecord(top.optional) ? top.optional : {};
  if (o.creator !== undefined && typeof o.creator !== 'string')
    throw new Error('creator is not a string');
  if (o.timestamp !== undefined && !Number.isSafeInteger(o.timestamp))
    throw new Error('timestamp is not an integer');
  return {
    dockerReference: ref,
    manifestDigest: digest,
    ...(o.creator !== undefined ? { creator: o.creator as string } : {}),
    ...(o.timestamp !== undefined ? { timestamp: o.timestamp as number } : {}),
  };
}

function invalid(reason: string): SigningError {
  return new SigningError(SigningErrorCodes.SIGNATURE_INVALID, `simple signature: ${reason}`);
}

/**
 * Verifies a simple signature against armored public key(s) and returns what
 * it vouches for; FERRY_SIGNATURE_INVALID when it does not verify, has other
 * than one signature, or names another reference / digest than `expect`.
 */
export async function verifySimpleSigning(
  signature: Buffer,
  publicKeysArmored: string | string[],
  expect: { dockerReference?: string; manifestDigest?: string } = {},
): Promise<SimpleSignatureContent> {
  const keys = await Promise.all(
    [publicKeysArmored].flat().map((armoredKey, i) =>
      openpgp.readKey({ armoredKey }).catch(() => {
        throw new SigningError(
          SigningErrorCodes.PGP_KEY_INVALID,
          `verification key ${i + 1} is not an armored OpenPGP key`,
        );
      }),
    ),
  );
  let content: Omit<SimpleSignatureContent, 'signedBy'>;
  let signedBy: string;
  try {
    const message = await openpgp.readMessage({ binaryMessage: signature });
    const result = await openpgp.verify({
      message,
      verificationKeys: keys,
      expectSigned: true,
      format: 'binary',
    });
    if (result.signatures.length !== 1) throw new Error(`${result.signatures.length} signatures`);
    const [sig] = result.signatures as [OpenPGP.VerifyMessageResult['signatures'][number]];
    await sig.verified;
    const signer = keys.flatMap((k) => k.getKeys(sig.keyID))[0];
    signedBy = (signer?.getFingerprint() ?? sig.keyID.toHex()).toUpperCase();
    content = parsePayload(result.data as Uint8Array);
  } catch (err) {
    throw invalid((err as Error).message);
  }
  if (expect.manifestDigest !== undefined && content.manifestDigest !== expect.manifestDigest) {
    throw invalid(`it signs ${content.manifestDigest}, not ${expect.manifestDigest}`);
  }
  if (expect.dockerReference !== undefined && content.dockerReference !== expect.dockerReference) {
    throw invalid(`it names ${content.dockerReference}, not ${expect.dockerReference}`);
  }
  return { ...content, signedBy };
}
