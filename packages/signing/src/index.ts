/**
 * @ferry/signing — image signatures in the three formats container tools
 * verify, as a library: no queue, no HTTP server, no registry client (the
 * registry is reached through the small interfaces callers pass in).
 *
 * Usage (the coordinator):
 *
 *   const passphrase = env.FERRY_KEY_PASSPHRASE_FILE && (await readPassphraseFile(env.FERRY_KEY_PASSPHRASE_FILE));
 *   const key = await loadSigningKey(env.FERRY_SIGNING_KEY, { passphrase });   // EC P-256 or RSA
 *   const x5c = env.FERRY_SIGNING_CERT && (await loadCertChain(env.FERRY_SIGNING_CERT, key));
 *   publish(key.publicKeyPem, key.fingerprint);                                 // never key.privateKey
 *
 *   // cosign: sign the manifest digest, append to `sha256-<hex>.sig` under a per-tag lock
 *   const sig = signCosign(key, { dockerReference: 'reg.example.com/team/app', manifestDigest });
 *   await attachCosignSignature(store, sig, { lock, lockKey: `${host}/${repo}/${sig.tag}`, dedupeKey: key.publicKey });
 *   //   store: { getManifest(tag), putBlob(blob), putManifest(tag, bytes, mediaType) } over the registry client
 *   //   (or, without attach: appendCosignSignature(existingBytes, sig) → { manifest, blobs } to upload yourself)
 *
 *   // OpenPGP simple signing, published at /sigstore/<lookasidePath(...)>
 *   const pgp = await loadPgpKey(env.FERRY_PGP_KEY, { passphrase });
 *   const signature = await signSimpleSigning(pgp, { dockerReference: 'reg.example.com/team/app:1.0', manifestDigest, creator: 'Ferry 0.1.0' });
 *   const path = lookasidePath('team/app', manifestDigest, 1);                  // team/app@sha256=<hex>/signature-1
 *
 *   // schema1: one signed manifest per tag; upload `blobs` (the empty tar, if any) before the PUT
 *   const unsigned = buildSchema1Manifest({ name: 'team/app', tag: '1.0', config: configBytes, layers: layerDigests });
 *   const s1 = signSchema1(unsigned.bytes, key, { certChain: x5c || undefined });
 *   //   PUT s1.bytes as s1.mediaType; s1.digest is what the registry answers as Docker-Content-Digest
 *
 *   // verification (CLI `ferry verify`, tests)
 *   const { verified } = await verifyCosignSignatures({ imageDigest, signatureManifest, fetchBlob, publicKey: pem });
 *   await verifySimpleSigning(signature, pgp.publicKeyArmored, { manifestDigest });
 *
 *   // `ferry keygen --out DIR [--rsa]`
 *   await generateKeys(dir, { rsa: false });   // cosign.key (0600) + cosign.pub; --rsa: schema1.key/.pub/.crt
 *
 * Every failure is a SigningError with a stable FERRY_* `code` (errors.ts);
 * messages name files, never key material.
 */
export * from './errors';
export * from './keys';
export * from './keygen';
export * from './cert-chain';
export * from './cosign-payload';
export * from './cosign-manifest';
export * from './cosign-verify';
export * from './cosign-attach';
export * from './pgp-keys';
export * from './pgp';
export * from './lookaside';
export * from './schema1-manifest';
export * from './schema1-sign';
export { goJson, goJsonIndent } from './go-json';
