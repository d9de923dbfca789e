/**
 * Keys: PEM loading (EC P-256, RSA, encrypted both ways), the errors a
 * misconfigured FERRY_SIGNING_KEY gets (naming the file, never its bytes),
 * fingerprints as openssl computes them, keygen, and x5c chains.
 */
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  SigningError,
  certChainFromPem,
  generateKeys,
  loadCertChain,
  loadSigningKey,
  publicKeyFingerprint,
  readPassphraseFile,
  signCosign,
  signingKeyFromPem,
} from '@ferry/signing';
import { tmpDir } from '../../../test/helpers';
import { requireTool, runOk } from './support/tools';

const ecPair = () => generateKeyPairSync('ec', { namedCurve: 'P-256' });

/** Asserts err is a SigningError with code, naming path, without any 24-char piece of secret. */
function expectCode(code: string, path: string, secret?: string) {
  return (err: unknown) => {
    assert.ok(err instanceof SigningError, `not a SigningError: ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.ok(err.message.includes(path), `message names the file: ${err.message}`);
    if (secret) {
      const body = secret.replace(/-----[^-]+-----|\s/g, '');
      for (let i = 0; i + 24 <= body.length; i += 24) {
        assert.ok(!err.message.includes(body.slice(i, i + 24)), 'key bytes in the message');
      }
    }
    return true;
  };
}

describe('signing keys', () => {
  let dir: string;
  before(() => {
    dir = tmpDir('signing-keys');
  });

  function write(name: string, text: string | Buffer): string {
    const p = join(dir, name);
    writeFileSync(p, text, { mode: 0o600 });
    return p;
  }

  it('loads EC P-256 keys in PKCS#8 and SEC1 PEM, and RSA keys, with a sha256 SPKI fingerprint', async () => {
    const ec = ecPair();
    const pkcs8 = write('ec8.pem', ec.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const sec1 = write('ec1.pem', ec.privateKey.export({ type: 'sec1', format: 'pem' }));
    const spki = ec.publicKey.export({ type: 'spki', format: 'der' });
    const fp = 'sha256:' + createHash('sha256').update(spki).digest('hex');
    for (const p of [pkcs8, sec1]) {
      const key = await loadSigningKey(p);
      assert.equal(key.type, 'ec');
      assert.equal(key.bits, 256);
      assert.equal(key.fingerprint, fp);
      assert.equal(key.source, p);
      assert.match(key.publicKeyPem, /^-----BEGIN PUBLIC KEY-----/);
      assert.equal(publicKeyFingerprint(key.publicKeyPem), fp);
    }
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const rsaKey = await loadSigningKey(
      write('rsa.pem', rsa.privateKey.export({ type: 'pkcs1', format: 'pem' })),
    );
    assert.equal(rsaKey.type, 'rsa');
    assert.equal(rsaKey.bits, 2048);
  });

  it('computes the fingerprint openssl computes over the SPKI DER', async function () {
    const openssl = requireTool(this, 'openssl');
    const pem = ecPair().privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    const p = write('fp.pem', pem);
    const der = join(dir, 'fp.der');
    await runOk(openssl, ['pkey', '-in', p, '-pubout', '-outform', 'DER', '-out', der]);
    const expected = 'sha256:' + createHash('sha256').update(readFileSync(der)).digest('hex');
    assert.equal((await loadSigningKey(p)).fingerprint, expected);
  });

  it('decrypts encrypted PEM (PKCS#8 and traditional) with the passphrase, and says which is wrong', async () => {
    const ec = ecPair();
    const enc8 = ec.privateKey.export({
      type: 'pkcs8',
      format: 'pem',
      cipher: 'aes-256-cbc',
      passphrase: 'correct horse',
    }) as string;
    const encTrad = ec.privateKey.export({
      type: 'sec1',
      format: 'pem',
      cipher: 'aes-128-cbc',
      passphrase: 'correct horse',
    }) as string;
    for (const [name, pem] of [
      ['enc8.pem', enc8],
      ['enctrad.pem', encTrad],
    ] as const) {
      const p = write(name, pem);
      const key = await loadSigningKey(p, { passphrase: 'correct horse' });
      assert.equal(key.type, 'ec');
      await assert.rejects(loadSigningKey(p), expectCode('FERRY_SIGNING_KEY_PASSPHRASE', p, pem));
      await assert.rejects(
        loadSigningKey(p, { passphrase: 'wrong' }),
        expectCode('FERRY_SIGNING_KEY_PASSPHRASE', p, pem),
      );
    }
  });

  it('refuses what is not a usable key with a code naming the file', async () => {
    const missing = join(dir, 'nope.pem');
    await assert.rejects(
      loadSigningKey(missing),
      expectCode('FERRY_SIGNING_KEY_UNREADABLE', missing),
    );
    const pub = write('pub.pem', ecPair().publicKey.export({ type: 'spki', format: 'pem' }));
    await assert.rejects(loadSigningKey(pub), expectCode('FERRY_SIGNING_KEY_INVALID', pub));
    const junk = write('junk.pem', 'hello\n');
    await assert.rejects(loadSigningKey(junk), expectCode('FERRY_SIGNING_KEY_INVALID', junk));
    const cosignFormat = write(
      'cosign-native.key',
      '-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\neyJrZGYiOnt9fQ==\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n',
    );
    await assert.rejects(loadSigningKey(cosignFormat), (err: SigningError) => {
      assert.equal(err.code, 'FERRY_SIGNING_KEY_INVALID');
      assert.match(err.message, /cosign's own encrypted key format/);
      return true;
    });
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
    const ed = generateKeyPairSync('ed25519').privateKey;
    const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey;
    for (const [name, k, what] of [
      ['p384.pem', p384, /secp384r1.*only P-256/],
      ['ed.pem', ed, /ed25519/],
      ['rsa1024.pem', rsa1024, /1024 bits/],
    ] as const) {
      const pem = k.export({ type: 'pkcs8', format: 'pem' }) as string;
      const p = write(name, pem);
      await assert.rejects(loadSigningKey(p), (err: SigningError) => {
        expectCode('FERRY_SIGNING_KEY_TYPE', p, pem)(err);
        assert.match(err.message, what);
        return true;
      });
    }
  });

  it('refuses an RSA key for cosign signatures', async () => {
    const pem = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    }) as string;
    const key = signingKeyFromPem(pem, '/etc/ferry/rsa.key');
    assert.throws(
      () => signCosign(key, { dockerReference: 'r/x', manifestDigest: 'sha256:' + '0'.repeat(64) }),
      expectCode('FERRY_SIGNING_KEY_TYPE', '/etc/ferry/rsa.key', pem),
    );
  });

  it('reads a passphrase file without its trailing newline', async () => {
    assert.equal(await readPassphraseFile(write('pass1', 'secret\n')), 'secret');
    assert.equal(await readPassphraseFile(write('pass2', 'secret\r\n')), 'secret');
    assert.equal(await readPassphraseFile(write('pass3', ' secret \n\n')), ' secret \n');
  });
});

describe('keygen', () => {
  it('writes an EC P-256 pair (private 0600) that loads back, and never overwrites', async () => {
    const dir = join(tmpDir('signing-keygen'), 'keys');
    const out = await generateKeys(dir);
    assert.equal(out.privateKeyPath, join(dir, 'cosign.key'));
    assert.equal(out.publicKeyPath, join(dir, 'cosign.pub'));
    assert.equal(statSync(out.privateKeyPath).mode & 0o777, 0o600);
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    const key = await loadSigningKey(out.privateKeyPath);
    assert.equal(key.type, 'ec');
    assert.equal(key.fingerprint, out.fingerprint);
    assert.equal(publicKeyFingerprint(readFileSync(out.publicKeyPath, 'utf8')), out.fingerprint);
    const before = readFileSync(out.privateKeyPath);
    await assert.rejects(generateKeys(dir), expectCode('FERRY_SIGNING_KEY_EXISTS', 'cosign.key'));
    assert.deepEqual(readFileSync(out.privateKeyPath), before, 'the old key is untouched');
    const again = await generateKeys(dir, { force: true });
    assert.notEqual(again.fingerprint, out.fingerprint);
  });

  it('encrypts the private key with a passphrase', async () => {
    const dir = tmpDir('signing-keygen-enc');
    const out = await generateKeys(dir, { passphrase: 'pw' });
    assert.match(readFileSync(out.privateKeyPath, 'utf8'), /BEGIN ENCRYPTED PRIVATE KEY/);
    await assert.rejects(loadSigningKey(out.privateKeyPath), /passphrase/);
    assert.equal(
      (await loadSigningKey(out.privateKeyPath, { passphrase: 'pw' })).fingerprint,
      out.fingerprint,
    );
  });

  it('--rsa writes an RSA key with a self-signed certificate for it, usable as an x5c chain', async () => {
    const dir = tmpDir('signing-keygen-rsa');
    const out = await generateKeys(dir, { rsa: 2048, commonName: 'ferry test' });
    assert.ok(out.certificatePath);
    const key = await loadSigningKey(out.privateKeyPath);
    assert.equal(key.type, 'rsa');
    assert.equal(key.bits, 2048);
    const cert = new X509Certificate(readFileSync(out.certificatePath));
    assert.ok(cert.verify(cert.publicKey), 'self-signed');
    assert.equal(cert.subject, 'CN=ferry test');
    assert.ok(cert.checkPrivateKey(key.privateKey), 'certificate is for the key');
    const x5c = await loadCertChain(out.certificatePath, key);
    assert.equal(x5c.length, 1);
    assert.deepEqual(Buffer.from(x5c[0] as string, 'base64'), cert.raw);
  });
});

describe('certificate chains (FERRY_SIGNING_CERT)', () => {
  it('keeps the order of a chain, leaf first, as base64 DER', async () => {
    const dir = tmpDir('signing-chain');
    const a = await generateKeys(join(dir, 'a'), { rsa: 2048 });
    const b = await generateKeys(join(dir, 'b'), { rsa: 2048 });
    const pemA = readFileSync(a.certificatePath as string, 'utf8');
    const pemB = readFileSync(b.certificatePath as string, 'utf8');
    const key = await loadSigningKey(a.privateKeyPath);
    const chain = certChainFromPem(pemA + pemB, 'chain.pem', key);
    assert.deepEqual(
      chain.map((c) => Buffer.from(c, 'base64')),
      [new X509Certificate(pemA).raw, new X509Certificate(pemB).raw],
    );
    assert.throws(
      () => certChainFromPem(pemB + pemA, 'chain.pem', key),
      expectCode('FERRY_SIGNING_CERT_MISMATCH', 'chain.pem'),
    );
    assert.throws(
      () => certChainFromPem('nothing here', 'c.pem'),
      expectCode('FERRY_SIGNING_CERT_INVALID', 'c.pem'),
    );
    const broken = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n';
    assert.throws(
      () => certChainFromPem(broken, 'b.pem'),
      expectCode('FERRY_SIGNING_CERT_INVALID', 'b.pem'),
    );
  });

  it('reads an EC certificate made by openssl (node-forge cannot parse one)', async function () {
    const openssl = requireTool(this, 'openssl');
    const dir = tmpDir('signing-ec-cert');
    const out = await generateKeys(dir);
    const crt = join(dir, 'ec.crt');
    await runOk(openssl, [
      'req',
      '-x509',
      '-new',
      '-key',
      out.privateKeyPath,
      '-subj',
      '/CN=ferry-ec',
      '-days',
      '2',
      '-out',
      crt,
    ]);
    const key = await loadSigningKey(out.privateKeyPath);
    const chain = await loadCertChain(crt, key);
    assert.equal(chain.length, 1);
    const other = await generateKeys(join(dir, 'other'));
    await assert.rejects(
      loadCertChain(crt, await loadSigningKey(other.privateKeyPath)),
      expectCode('FERRY_SIGNING_CERT_MISMATCH', crt),
    );
  });
});
