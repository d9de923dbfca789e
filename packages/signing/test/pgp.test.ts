/**
 * OpenPGP simple signing: Ferry's signatures checked by skopeo (through
 * gpgme, in a throwaway GNUPGHOME), keys made by gpg read by Ferry,
 * skopeo's own signatures read by Ferry's verifier, and the lookaside layout.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  SigningError,
  generatePgpKey,
  lookasidePath,
  parseLookasidePath,
  pgpFingerprint,
  pgpKeyFromArmored,
  signSimpleSigning,
  simpleSigningPayload,
  verifySimpleSigning,
  type PgpSigningKey,
} from '@ferry/signing';
import { findBinary, tmpDir } from '../../../test/helpers';
import { requireTool, run, runOk } from './support/tools';

const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');
const REF = '127.0.0.1:5000/team/app:1.0';
const MANIFEST = Buffer.from(
  JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: {
      mediaType: 'application/vnd.oci.image.config.v1+json',
      digest: 'sha256:' + 'a'.repeat(64),
      size: 2,
    },
    layers: [],
  }),
);
const DIGEST = sha256(MANIFEST);

describe('OpenPGP simple signing', function () {
  let dir: string;
  let skopeo: string;
  let gpg: string;
  let homes: string[];
  let k1: PgpSigningKey;
  let k2: PgpSigningKey;

  before(async function () {
    skopeo = requireTool(this, 'skopeo');
    gpg = requireTool(this, 'gpg', 'gnupg');
    dir = tmpDir('pgp');
    homes = [];
    writeFileSync(join(dir, 'manifest.json'), MANIFEST);
    k1 = await pgpKeyFromArmored((await generatePgpKey({ name: 'Ferry One' })).privateKeyArmored);
    k2 = await pgpKeyFromArmored((await generatePgpKey({ name: 'Ferry Two' })).privateKeyArmored);
  });
  after(async () => {
    // Each GNUPGHOME got its own gpg-agent: stop them by home, not by name.
    const gpgconf = findBinary('gpgconf');
    for (const h of homes ?? [])
      if (gpgconf) await run(gpgconf, ['--homedir', h, '--kill', 'gpg-agent']);
  });

  /** A fresh GNUPGHOME with these armored public keys imported. */
  async function keyring(name: string, armored: string[]): Promise<string> {
    const home = join(dir, name);
    mkdirSync(home, { mode: 0o700 });
    homes.push(home);
    for (const [i, a] of armored.entries()) {
      writeFileSync(join(home, `k${i}.asc`), a);
      await runOk(gpg, ['--homedir', home, '--batch', '--import', join(home, `k${i}.asc`)]);
    }
    return home;
  }

  async function skopeoVerify(home: string, fingerprint: string, sig: Buffer, ref = REF) {
    const sigPath = join(dir, `sig-${Math.random().toString(36).slice(2)}`);
    writeFileSync(sigPath, sig);
    return run(
      skopeo,
      ['standalone-verify', join(dir, 'manifest.json'), ref, fingerprint, sigPath],
      {
        env: { ...process.env, GNUPGHOME: home },
      },
    );
  }

  it('skopeo standalone-verify accepts Ferry’s signature, for that reference and manifest only', async () => {
    const sig = await signSimpleSigning(k1, {
      dockerReference: REF,
      manifestDigest: DIGEST,
      creator: 'Ferry 0.1.0',
    });
    const home = await keyring('ring1', [k1.publicKeyArmored]);
    const ok = await skopeoVerify(home, k1.fingerprint, sig);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, new RegExp(`Signature verified.*${DIGEST}`));
    const otherRef = await skopeoVerify(home, k1.fingerprint, sig, '127.0.0.1:5000/team/app:2.0');
    assert.notEqual(otherRef.code, 0);
    assert.match(otherRef.stderr, /does not match/);
    const otherDigest = await signSimpleSigning(k1, {
      dockerReference: REF,
      manifestDigest: sha256(Buffer.from('x')),
    });
    const r = await skopeoVerify(home, k1.fingerprint, otherDigest);
    assert.notEqual(r.code, 0, 'a signature of another manifest is refused');
  });

  it('skopeo refuses a signature by another key', async () => {
    const byK2 = await signSimpleSigning(k2, { dockerReference: REF, manifestDigest: DIGEST });
    const onlyK1 = await keyring('ring-only1', [k1.publicKeyArmored]);
    const unknown = await skopeoVerify(onlyK1, k1.fingerprint, byK2);
    assert.notEqual(unknown.code, 0, 'key not in the keyring');
    const both = await keyring('ring-both', [k1.publicKeyArmored, k2.publicKeyArmored]);
    const wrongSigner = await skopeoVerify(both, k1.fingerprint, byK2);
    assert.notEqual(wrongSigner.code, 0, 'valid signature, but not by the required key');
    assert.match(wrongSigner.stderr, new RegExp(k2.fingerprint));
    const right = await skopeoVerify(both, k2.fingerprint, byK2);
    assert.equal(right.code, 0, right.stderr);
  });

  it('signs with a passphrase-protected key made by gpg; fingerprints agree with gpg', async () => {
    const home = await keyring('gen', []);
    const pass = ['--batch', '--pinentry-mode', 'loopback', '--passphrase', 'pw 1'];
    await runOk(gpg, [
      '--homedir',
      home,
      ...pass,
      '--quick-gen-key',
      'Gpg Made <g@example.com>',
      'ed25519',
      'sign',
      '0',
    ]);
    const secret = await runOk(gpg, [
      '--homedir',
      home,
      ...pass,
      '--armor',
      '--export-secret-keys',
    ]);
    const colons = await runOk(gpg, ['--homedir', home, '--with-colons', '--list-keys']);
    const gpgFpr = /^fpr:+([0-9A-F]{40}):/m.exec(colons.stdout)?.[1];
    await assert.rejects(pgpKeyFromArmored(secret.stdout, 'gpg.asc'), (e: SigningError) => {
      assert.equal(e.code, 'FERRY_PGP_KEY_PASSPHRASE');
      assert.match(e.message, /^gpg\.asc: /);
      return true;
    });
    await assert.rejects(
      pgpKeyFromArmored(secret.stdout, 'gpg.asc', { passphrase: 'nope' }),
      (e: SigningError) =>
        e.code === 'FERRY_PGP_KEY_PASSPHRASE' && !e.message.includes('PGP PRIVATE'),
    );
    const key = await pgpKeyFromArmored(secret.stdout, 'gpg.asc', { passphrase: 'pw 1' });
    assert.equal(key.fingerprint, gpgFpr);
    assert.equal(await pgpFingerprint(key.publicKeyArmored), gpgFpr);
    assert.deepEqual(key.userIds, ['Gpg Made <g@example.com>']);
    assert.ok(!key.publicKeyArmored.includes('PRIVATE'), 'the exported key is public only');
    const sig = await signSimpleSigning(key, { dockerReference: REF, manifestDigest: DIGEST });
    const r = await skopeoVerify(home, key.fingerprint, sig);
    assert.equal(r.code, 0, r.stderr);
  });

  it('reads what skopeo standalone-sign writes, and refuses it for another key or manifest', async () => {
    const home = await keyring('skopeo-sign', []);
    await runOk(gpg, [
      '--homedir',
      home,
      '--batch',
      '--passphrase',
      '',
      '--quick-gen-key',
      'Skopeo Signer',
      'ed25519',
      'sign',
      '0',
    ]);
    const fpr = /^fpr:+([0-9A-F]{40}):/m.exec(
      (await runOk(gpg, ['--homedir', home, '--with-colons', '--list-keys'])).stdout,
    )?.[1] as string;
    const pub = (await runOk(gpg, ['--homedir', home, '--armor', '--export', fpr])).stdout;
    const out = join(dir, 'skopeo.sig');
    await runOk(skopeo, ['standalone-sign', join(dir, 'manifest.json'), REF, fpr, '-o', out], {
      env: { ...process.env, GNUPGHOME: home },
    });
    const content = await verifySimpleSigning(readFileSync(out), pub, {
      dockerReference: REF,
      manifestDigest: DIGEST,
    });
    assert.equal(content.signedBy, fpr);
    assert.match(content.creator ?? '', /^atomic /);
    assert.ok(Number.isInteger(content.timestamp));
    await assert.rejects(
      verifySimpleSigning(readFileSync(out), k1.publicKeyArmored),
      /FERRY|simple signature/,
    );
    await assert.rejects(
      verifySimpleSigning(readFileSync(out), pub, { manifestDigest: sha256(Buffer.from('x')) }),
      /signs sha256:/,
    );
  });
});

describe('simple signing payload and lookaside layout', () => {
  it('writes the atomic container signature JSON as containers/image does', () => {
    const p = simpleSigningPayload({
      dockerReference: REF,
      manifestDigest: DIGEST,
      creator: 'Ferry 0.1.0 <&>',
      timestamp: 1700000000,
    });
    assert.equal(
      p.toString(),
      `{"critical":{"identity":{"docker-reference":"${REF}"},"image":{"docker-manifest-digest":"${DIGEST}"},"type":"atomic container signature"},"optional":{"creator":"Ferry 0.1.0 \\u003c\\u0026\\u003e","timestamp":1700000000}}`,
    );
    const now = Math.floor(Date.now() / 1000);
    const t = JSON.parse(
      simpleSigningPayload({ dockerReference: REF, manifestDigest: DIGEST }).toString(),
    );
    assert.ok(Number.isInteger(t.optional.timestamp) && Math.abs(t.optional.timestamp - now) < 5);
    assert.equal(t.optional.creator, 'Ferry');
  });

  it('verifies its own signature and refuses another key, digest or reference', async () => {
    const a = await pgpKeyFromArmored((await generatePgpKey({ name: 'A' })).privateKeyArmored);
    const b = await generatePgpKey({ name: 'B' });
    const sig = await signSimpleSigning(a, {
      dockerReference: REF,
      manifestDigest: DIGEST,
      timestamp: 7,
    });
    const c = await verifySimpleSigning(sig, a.publicKeyArmored, {
      dockerReference: REF,
      manifestDigest: DIGEST,
    });
    assert.deepEqual(c, {
      dockerReference: REF,
      manifestDigest: DIGEST,
      creator: 'Ferry',
      timestamp: 7,
      signedBy: a.fingerprint,
    });
    const code = (e: SigningError) => e.code === 'FERRY_SIGNATURE_INVALID';
    await assert.rejects(verifySimpleSigning(sig, b.publicKeyArmored), code);
    await assert.rejects(
      verifySimpleSigning(sig, a.publicKeyArmored, { dockerReference: 'x/y:1' }),
      code,
    );
    await assert.rejects(
      verifySimpleSigning(Buffer.from('not a message'), a.publicKeyArmored),
      code,
    );
  });

  it('names lookaside files as containers/image reads them', () => {
    const hex = DIGEST.slice(7);
    assert.equal(lookasidePath('team/app', DIGEST, 1), `team/app@sha256=${hex}/signature-1`);
    assert.deepEqual(parseLookasidePath(`/team/app@sha256=${hex}/signature-12`), {
      repository: 'team/app',
      manifestDigest: DIGEST,
      index: 12,
    });
    assert.throws(() => lookasidePath('127.0.0.1:5000/team/app', DIGEST, 1), /repository path/);
    assert.throws(() => lookasidePath('team/app', DIGEST, 0), /index/);
    assert.throws(() => lookasidePath('../x', DIGEST, 1), /repository path/);
    assert.equal(parseLookasidePath(`../../etc@sha256=${hex}/signature-1`), undefined);
    assert.equal(parseLookasidePath(`team/app@sha256=${hex}/signature-0`), undefined);
  });

  it('refuses what is not an OpenPGP private key', async () => {
    await assert.rejects(
      pgpKeyFromArmored('junk', '/k.asc'),
      (e: SigningError) => e.code === 'FERRY_PGP_KEY_INVALID' && e.path === '/k.asc',
    );
    const pubOnly = (await generatePgpKey({ name: 'P' })).publicKeyArmored;
    await assert.rejects(
      pgpKeyFromArmored(pubOnly),
      (e: SigningError) => e.code === 'FERRY_PGP_KEY_INVALID',
    );
    await assert.rejects(
      verifySimpleSigning(Buffer.from('x'), 'not a key'),
      (e: SigningError) => e.code === 'FERRY_PGP_KEY_INVALID',
    );
  });
});
