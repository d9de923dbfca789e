/**
 * cosign: Ferry's verifier against real cosign signatures (containers/image's
 * fixtures), Ferry's payload byte for byte as cosign wrote it, Ferry's own
 * signatures checked by the same verifier and by `openssl dgst`, and the
 * signature manifest: layout, append without loss, dedupe.
 */
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  COSIGN_PAYLOAD_MEDIA_TYPE,
  COSIGN_SIGNATURE_ANNOTATION,
  SigningError,
  appendCosignSignature,
  cosignPayload,
  cosignSignatureTag,
  signCosign,
  signingKeyFromPem,
  verifyCosignSignatures,
  type BlobFetcher,
  type CosignSignature,
  type SigningKey,
} from '@ferry/signing';
import { tmpDir } from '../../../test/helpers';
import { requireTool, run } from './support/tools';

const FIXTURES = join(__dirname, '../../../../shared/fixtures/cosign');
const fixture = (p: string) => readFileSync(join(FIXTURES, p));
const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');

interface FixtureSignature {
  payload: Buffer;
  signature: string;
}
function fixtureSignature(p: string): FixtureSignature {
  const j = JSON.parse(fixture(p).toString()) as {
    mimeType: string;
    payload: string;
    annotations: Record<string, string>;
  };
  assert.equal(j.mimeType, COSIGN_PAYLOAD_MEDIA_TYPE);
  return {
    payload: Buffer.from(j.payload, 'base64'),
    signature: j.annotations[COSIGN_SIGNATURE_ANNOTATION] as string,
  };
}

/** A signature manifest holding the fixture signatures, built with Ferry's append, and a fetcher for its blobs. */
function manifestOf(sigs: FixtureSignature[], imageDigest: string) {
  const blobs = new Map<string, Buffer>();
  let bytes: Buffer | undefined;
  for (const s of sigs) {
    const sig: CosignSignature = {
      payload: s.payload,
      payloadDigest: sha256(s.payload),
      signature: s.signature,
      imageDigest,
      tag: cosignSignatureTag(imageDigest),
    };
    const update = appendCosignSignature(bytes, sig);
    for (const b of update.blobs) blobs.set(b.digest, b.bytes);
    bytes = update.manifest.bytes;
  }
  const fetchBlob: BlobFetcher = async (d) => {
    const b = blobs.get(d);
    if (!b) throw new Error(`no blob ${d}`);
    return b;
  };
  return { bytes: bytes as Buffer, fetchBlob, blobs };
}

function newKey(): SigningKey {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return signingKeyFromPem(
    privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    'test key',
  );
}

describe('cosign fixtures (real cosign signatures)', () => {
  const pub = fixture('cosign.pub').toString();
  const pub2 = fixture('cosign2.pub').toString();
  const validDigest = sha256(fixture('dir-img-cosign-valid/manifest.json'));

  async function verify(sigs: string[], manifest: string, key = pub) {
    const imageDigest = sha256(fixture(manifest));
    const m = manifestOf(sigs.map(fixtureSignature), imageDigest);
    return verifyCosignSignatures({
      imageDigest,
      signatureManifest: m.bytes,
      fetchBlob: m.fetchBlob,
      publicKey: key,
    });
  }

  it('dir-img-cosign-valid: the signature verifies with cosign.pub', async () => {
    const r = await verify(
      ['dir-img-cosign-valid/signature-1.json'],
      'dir-img-cosign-valid/manifest.json',
    );
    assert.equal(r.verified.length, 1);
    assert.equal(r.verified[0]?.dockerReference, '192.168.64.2:5000/cosign-signed-single-sample');
  });

  it('dir-img-cosign-valid-2: both signature layers on one image verify', async () => {
    const r = await verify(
      ['dir-img-cosign-valid-2/signature-1.json', 'dir-img-cosign-valid-2/signature-2.json'],
      'dir-img-cosign-valid-2/manifest.json',
    );
    assert.deepEqual(
      r.layers.map((l) => l.valid),
      [true, true],
    );
  });

  it('dir-img-cosign-modified-manifest: rejected, the payload names another digest', async () => {
    const r = await verify(
      ['dir-img-cosign-modified-manifest/signature-1.json'],
      'dir-img-cosign-modified-manifest/manifest.json',
    );
    assert.equal(r.verified.length, 0);
    assert.match(r.layers[0]?.reason ?? '', new RegExp(`signs ${validDigest}, not sha256:`));
  });

  it('unknown-cosign-key: rejected, signed by another key', async () => {
    const r = await verify(
      ['unknown-cosign-key.signature.json'],
      'dir-img-cosign-valid/manifest.json',
    );
    assert.equal(r.verified.length, 0);
    assert.match(r.layers[0]?.reason ?? '', /does not verify with this key/);
  });

  it('cosign2.pub: no fixture signature verifies with it', async () => {
    const r = await verify(
      ['dir-img-cosign-valid-2/signature-1.json', 'dir-img-cosign-valid-2/signature-2.json'],
      'dir-img-cosign-valid-2/manifest.json',
      pub2,
    );
    assert.deepEqual(
      r.layers.map((l) => l.valid),
      [false, false],
    );
  });

  it("Ferry's payload is byte for byte the payload cosign signed", () => {
    const { payload } = fixtureSignature('dir-img-cosign-valid/signature-1.json');
    const ours = cosignPayload({
      dockerReference: '192.168.64.2:5000/cosign-signed-single-sample',
      manifestDigest: validDigest,
    });
    assert.equal(ours.toString(), payload.toString());
  });
});

describe("Ferry's cosign signatures", () => {
  const imageDigest = sha256(Buffer.from('{"schemaVersion":2,"example":true}'));
  const ref = '127.0.0.1:5000/team/app';

  it('verify with the same verifier, and with openssl dgst over the payload', async function () {
    const openssl = requireTool(this, 'openssl');
    const key = newKey();
    const sig = signCosign(key, { dockerReference: ref, manifestDigest: imageDigest });
    const m = manifestOf([sig], imageDigest);
    const r = await verifyCosignSignatures({
      imageDigest,
      signatureManifest: m.bytes,
      fetchBlob: m.fetchBlob,
      publicKey: key.publicKeyPem,
      dockerReference: ref,
    });
    assert.equal(r.verified.length, 1);

    const dir = tmpDir('cosign-openssl');
    writeFileSync(join(dir, 'pub.pem'), key.publicKeyPem);
    writeFileSync(join(dir, 'sig.der'), Buffer.from(sig.signature, 'base64'));
    writeFileSync(join(dir, 'payload'), m.blobs.get(sig.payloadDigest) as Buffer);
    const args = ['dgst', '-sha256', '-verify', 'pub.pem', '-signature', 'sig.der', 'payload'];
    const ok = await run(openssl, args, { cwd: dir });
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /Verified OK/);
    writeFileSync(
      join(dir, 'payload'),
      cosignPayload({ dockerReference: ref, manifestDigest: sha256(Buffer.from('x')) }),
    );
    const bad = await run(openssl, args, { cwd: dir });
    assert.notEqual(bad.code, 0, 'openssl refuses the signature over another payload');
  });

  it('lays the signature manifest out as cosign does', () => {
    const sig = signCosign(newKey(), {
      dockerReference: ref,
      manifestDigest: imageDigest,
      annotations: { z: '1', a: '2' },
    });
    assert.equal(sig.tag, `sha256-${imageDigest.slice(7)}.sig`);
    assert.match(sig.payload.toString(), /"optional":\{"a":"2","z":"1"\}\}$/);
    const { manifest, blobs, added } = appendCosignSignature(undefined, sig);
    assert.ok(added);
    const m = JSON.parse(manifest.bytes.toString());
    assert.deepEqual(Object.keys(m), ['schemaVersion', 'mediaType', 'config', 'layers']);
    assert.equal(m.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    assert.equal(manifest.mediaType, m.mediaType);
    assert.equal(m.config.mediaType, 'application/vnd.oci.image.config.v1+json');
    assert.deepEqual(m.layers, [
      {
        mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json',
        size: sig.payload.length,
        digest: sha256(sig.payload),
        annotations: { 'dev.cosignproject.cosign/signature': sig.signature },
      },
    ]);
    const [config, payload] = blobs;
    assert.equal(config?.digest, m.config.digest);
    assert.equal(sha256(config?.bytes as Buffer), m.config.digest);
    assert.equal(config?.size, m.config.size);
    assert.equal(
      config?.bytes.toString(),
      `{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":["${sha256(sig.payload)}"]},"config":{}}`,
    );
    assert.deepEqual(payload?.bytes, sig.payload);
    assert.equal(manifest.digest, sha256(manifest.bytes));
  });

  it('appends to an existing signature manifest without dropping any, and dedupes', async () => {
    const k1 = newKey();
    const k2 = newKey();
    const fixtureSig = fixtureSignature('dir-img-cosign-valid/signature-1.json');
    const start = manifestOf([fixtureSig], imageDigest);
    const s1 = signCosign(k1, { dockerReference: ref, manifestDigest: imageDigest });
    const a = appendCosignSignature(start.bytes, s1);
    assert.equal(a.layerCount, 2);
    const before = JSON.parse(start.bytes.toString()).layers[0];
    assert.deepEqual(
      JSON.parse(a.manifest.bytes.toString()).layers[0],
      before,
      'first layer kept as it was',
    );

    const same = appendCosignSignature(a.manifest.bytes, s1);
    assert.equal(same.added, false);
    assert.deepEqual(same.manifest.bytes, a.manifest.bytes);
    assert.deepEqual(same.blobs, []);

    const resigned = signCosign(k1, { dockerReference: ref, manifestDigest: imageDigest });
    assert.notEqual(resigned.signature, s1.signature, 'ECDSA differs on every run');
    assert.equal(
      appendCosignSignature(a.manifest.bytes, resigned).added,
      true,
      'without dedupeKey it is new',
    );
    const deduped = appendCosignSignature(a.manifest.bytes, resigned, {
      dedupeKey: k1.publicKeyPem,
    });
    assert.equal(deduped.added, false, 'same payload, same key: not added again');

    const s2 = signCosign(k2, { dockerReference: ref, manifestDigest: imageDigest });
    const b = appendCosignSignature(a.manifest.bytes, s2, { dedupeKey: k2.publicKey });
    assert.equal(b.layerCount, 3);
    const layers = JSON.parse(b.manifest.bytes.toString()).layers as { digest: string }[];
    const config = JSON.parse(b.blobs[0]?.bytes.toString() as string);
    assert.deepEqual(
      config.rootfs.diff_ids,
      layers.map((l) => l.digest),
    );
    assert.equal(config.history.length, 3);
  });

  it('two keys on one image: each key verifies its own signature, both verify', async () => {
    const k1 = newKey();
    const k2 = newKey();
    const m = manifestOf(
      [
        signCosign(k1, { dockerReference: ref, manifestDigest: imageDigest }),
        signCosign(k2, { dockerReference: ref, manifestDigest: imageDigest }),
      ],
      imageDigest,
    );
    const check = (k: SigningKey) =>
      verifyCosignSignatures({
        imageDigest,
        signatureManifest: m.bytes,
        fetchBlob: m.fetchBlob,
        publicKey: k.publicKey,
      });
    assert.deepEqual(
      (await check(k1)).layers.map((l) => l.valid),
      [true, false],
    );
    assert.deepEqual(
      (await check(k2)).layers.map((l) => l.valid),
      [false, true],
    );
  });

  it('rejects a payload blob whose bytes are not its digest, another media type, another reference', async () => {
    const key = newKey();
    const sig = signCosign(key, { dockerReference: ref, manifestDigest: imageDigest });
    const m = manifestOf([sig], imageDigest);
    const input = { imageDigest, signatureManifest: m.bytes, publicKey: key.publicKeyPem };
    const swapped = await verifyCosignSignatures({
      ...input,
      fetchBlob: async () => Buffer.from('{}'),
    });
    assert.match(swapped.layers[0]?.reason ?? '', /not the layer's/);
    const otherRef = await verifyCosignSignatures({
      ...input,
      fetchBlob: m.fetchBlob,
      dockerReference: 'x/y',
    });
    assert.match(otherRef.layers[0]?.reason ?? '', /names 127\.0\.0\.1:5000\/team\/app, not x\/y/);
    const retyped = Buffer.from(
      m.bytes.toString().replace(COSIGN_PAYLOAD_MEDIA_TYPE, 'application/json'),
    );
    const r = await verifyCosignSignatures({
      ...input,
      signatureManifest: retyped,
      fetchBlob: m.fetchBlob,
    });
    assert.equal(r.verified.length, 0);
    await assert.rejects(
      verifyCosignSignatures({
        ...input,
        signatureManifest: Buffer.from('[]'),
        fetchBlob: m.fetchBlob,
      }),
      (e: SigningError) => e.code === 'FERRY_SIGNATURE_INVALID',
    );
    assert.throws(
      () => appendCosignSignature(Buffer.from('{"schemaVersion":2}'), sig),
      (e: SigningError) => e.code === 'FERRY_SIGNATURE_INVALID',
      'an unreadable signature manifest is never replaced',
    );
  });
});
