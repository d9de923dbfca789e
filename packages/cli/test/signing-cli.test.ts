/**
 * `ferry keygen` and `ferry verify` as a user runs them: keys written with the
 * right modes and never printed; cosign signatures attached (by the signing
 * library, as the coordinator does) to images in a real docker-registry,
 * verified with the right key (exit 0), refused with another key, without a
 * signature, for a missing image; credentials read from $FERRY_DOCKER_CONFIG
 * for a registry that asks for them. Most runs go through main() in-process;
 * one runs bin/ferry.js to prove the binary's wiring and exit status.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, createPublicKey, X509Certificate } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { PassThrough } from 'node:stream';
import { MediaTypes, buildManifest } from '@ferry/manifest';
import { bufferBlobSource, RegistryClient, RegistryError } from '@ferry/registry-client';
import {
  attachCosignSignature,
  loadSigningKey,
  publicKeyFingerprint,
  signCosign,
  type SignatureStore,
  type SigningKey,
} from '@ferry/signing';
import { main } from '@ferry/cli';
import { startRegistry, type RegistryHandle } from '../../../test/helpers/registry';
import { sourceNodeOptions } from '../../../test/helpers/source-env';
import { tmpDir } from '../../../test/helpers/tmp';

const REPO = resolve(__dirname, '../../..');
const BIN = join(REPO, 'bin', 'ferry.js');
const COSIGN2_PUB = resolve(REPO, '../shared/fixtures/cosign/cosign2.pub');
const NO_CREDENTIALS = '/nonexistent/ferry-cli-test/config.json';

const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** main() in this process with its own streams and environment. */
async function ferry(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d) => (out += d));
  stderr.on('data', (d) => (err += d));
  const code = await main(args, {
    stdout,
    stderr,
    env: { HOME: '/nonexistent', FERRY_DOCKER_CONFIG: NO_CREDENTIALS, ...env },
    cwd: REPO,
  });
  return { code, stdout: out, stderr: err };
}

/** node bin/ferry.js on the sources (tsx), as a user's shell runs it. */
function ferryBin(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: REPO,
      env: {
        PATH: process.env.PATH ?? '',
        HOME: '/nonexistent',
        NODE_OPTIONS: sourceNodeOptions(),
        FERRY_DOCKER_CONFIG: NO_CREDENTIALS,
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', fail);
    child.on('close', (code) => {
      clearTimeout(timer);
      done({ code: code ?? -1, stdout, stderr });
    });
  });
}

/** What a run must never show: the PEM body of a private key. */
function assertNoKeyMaterial(run: Run, privateKeyPath: string): void {
  const pem = readFileSync(privateKeyPath, 'utf8');
  const body = pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
  for (const s of [run.stdout, run.stderr]) {
    assert.ok(!s.includes('PRIVATE KEY'), 'no PEM header');
    for (let i = 0; i + 40 <= body.length; i += 40)
      assert.ok(!s.replace(/\s+/g, '').includes(body.slice(i, i + 40)), 'no key bytes');
  }
}

describe('ferry keygen', function () {
  this.timeout(60_000);

  it('writes an EC P-256 pair (private key 0600), prints paths and fingerprint, never the key; refuses to overwrite', async () => {
    const dir = join(tmpDir('keygen'), 'keys');
    const r = await ferry(['keygen', '--out', dir]);
    assert.equal(r.code, 0, r.stderr);
    const key = join(dir, 'cosign.key');
    const pub = join(dir, 'cosign.pub');
    assert.equal(statSync(key).mode & 0o777, 0o600);
    assert.equal(statSync(dir).mode & 0o777, 0o700, 'a new directory is private');
    const publicKey = createPublicKey(readFileSync(pub));
    assert.equal(publicKey.asymmetricKeyType, 'ec');
    assert.equal(publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    const signing = await loadSigningKey(key);
    assert.equal(signing.type, 'ec');
    assert.equal(signing.fingerprint, publicKeyFingerprint(publicKey), 'the pair belongs together');
    assert.ok(r.stdout.includes(key) && r.stdout.includes(pub), r.stdout);
    assert.match(r.stdout, new RegExp(`fingerprint: ${publicKeyFingerprint(publicKey)}\\n`));
    assertNoKeyMaterial(r, key);

    const before = readFileSync(key);
    const again = await ferry(['keygen', '--out', dir]);
    assert.equal(again.code, 1);
    assert.equal(again.stdout, '');
    assert.match(
      again.stderr,
      /^ferry: FERRY_SIGNING_KEY_EXISTS: \S+cosign\.key exists; refusing to overwrite a key .*\n$/,
    );
    assert.equal(again.stderr.split('\n').length, 2, 'one line');
    assert.deepEqual(readFileSync(key), before, 'the key is untouched');
  });

  it('--rsa writes an RSA key (0600), its public key and a self-signed certificate for it', async () => {
    const dir = tmpDir('keygen-rsa');
    const r = await ferry(['keygen', '--out', dir, '--rsa']);
    assert.equal(r.code, 0, r.stderr);
    const key = join(dir, 'schema1.key');
    assert.equal(statSync(key).mode & 0o777, 0o600);
    const pub = createPublicKey(readFileSync(join(dir, 'schema1.pub')));
    assert.equal(pub.asymmetricKeyType, 'rsa');
    assert.ok((pub.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048);
    const cert = new X509Certificate(readFileSync(join(dir, 'schema1.crt')));
    assert.ok(cert.publicKey.equals(pub), 'the certificate is for the key');
    assert.ok(cert.verify(pub), 'self-signed');
    assert.ok(r.stdout.includes(join(dir, 'schema1.crt')), r.stdout);
    assert.match(r.stdout, /fingerprint: sha256:[a-f0-9]{64}\n/);
    assertNoKeyMaterial(r, key);
  });

  it('fails with one line when the directory cannot be written, and without --out is a usage error', async () => {
    const file = join(tmpDir('keygen-file'), 'not-a-dir');
    writeFileSync(file, 'x');
    const r = await ferry(['keygen', '--out', join(file, 'keys')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^ferry: FERRY_KEYGEN_FAILED: cannot write keys to .*not-a-dir\/keys: /);
    assert.equal(r.stderr.split('\n').length, 2, 'one line');
    const usage = await ferry(['keygen']);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /FERRY_USAGE: .*--out/);
  });
});

describe('ferry verify (docker-registry)', function () {
  this.timeout(180_000);
  let reg: RegistryHandle;
  let client: RegistryClient;
  let keyDir: string;
  let otherDir: string;
  let key: SigningKey;
  let other: SigningKey;
  let signed: string;
  let twoSigs: string;
  let unsigned: string;

  /** Pushes a small image by digest and tags it; returns its manifest digest. */
  async function pushImage(c: RegistryClient, r: RegistryHandle, repo: string, seed: string) {
    const ref = { registry: r.host, repository: repo };
    const layer = Buffer.from(`layer ${seed}`);
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', seed }));
    await c.uploadBlob(ref, bufferBlobSource(layer));
    await c.uploadBlob(ref, bufferBlobSource(config));
    const m = buildManifest(
      'oci',
      { mediaType: MediaTypes.ociConfig, digest: sha256(config), size: config.length },
      [{ mediaType: MediaTypes.ociLayerTar, digest: sha256(layer), size: layer.length }],
    );
    await c.putManifest(ref, seed, m.bytes, m.mediaType);
    return (await c.putManifest(ref, m.digest, m.bytes, m.mediaType)).digest;
  }

  /** Attaches a cosign signature of digest by k, as the coordinator does (library, registry client). */
  async function sign(
    c: RegistryClient,
    r: RegistryHandle,
    repo: string,
    digest: string,
    k: SigningKey,
  ) {
    const ref = { registry: r.host, repository: repo };
    const store: SignatureStore = {
      async getManifest(tag) {
        try {
          return (await c.getManifest(ref, tag, [MediaTypes.ociManifest])).body;
        } catch (e) {
          if ((e as RegistryError).code === 'FERRY_MANIFEST_UNKNOWN') return undefined;
          throw e;
        }
      },
      async putBlob(blob) {
        if (!(await c.blobExists(ref, blob.digest)))
          await c.uploadBlob(ref, bufferBlobSource(blob.bytes, blob.digest));
      },
      async putManifest(tag, bytes, mediaType) {
        await c.putManifest(ref, tag, bytes, mediaType);
      },
    };
    const sig = signCosign(k, { dockerReference: `${r.host}/${repo}`, manifestDigest: digest });
    const res = await attachCosignSignature(store, sig, {
      lock: (_name, fn) => fn(),
      lockKey: `${r.host}/${repo}/${sig.tag}`,
    });
    assert.ok(res.added);
  }

  before(async () => {
    reg = await startRegistry();
    client = new RegistryClient({ allow: ['127.0.0.1'], retry: { attempts: 3 } });
    keyDir = tmpDir('verify-keys');
    otherDir = tmpDir('verify-other');
    assert.equal((await ferry(['keygen', '--out', keyDir])).code, 0);
    assert.equal((await ferry(['keygen', '--out', otherDir])).code, 0);
    key = await loadSigningKey(join(keyDir, 'cosign.key'));
    other = await loadSigningKey(join(otherDir, 'cosign.key'));
    signed = await pushImage(client, reg, 'team/app', 'signed');
    await sign(client, reg, 'team/app', signed, key);
    twoSigs = await pushImage(client, reg, 'team/app', 'two');
    await sign(client, reg, 'team/app', twoSigs, other);
    await sign(client, reg, 'team/app', twoSigs, key);
    unsigned = await pushImage(client, reg, 'team/app', 'unsigned');
  });
  after(async () => {
    await client?.close();
    await reg?.stop();
  });

  const pub = () => join(keyDir, 'cosign.pub');

  it('exits 0 with the right key, by tag and by digest, printing the signature layer and docker-reference', async () => {
    for (const target of [`${reg.host}/team/app:signed`, `${reg.host}/team/app@${signed}`]) {
      const r = await ferry(['verify', target, '--key', pub()]);
      assert.equal(r.code, 0, `${target}: ${r.stderr}`);
      const lines = r.stdout.trim().split('\n');
      assert.equal(lines.length, 1, r.stdout);
      assert.match(lines[0]!, new RegExp(`^sha256:[a-f0-9]{64} ${reg.host}/team/app$`));
      assert.match(
        r.stderr,
        new RegExp(`team/app@${signed}: 1 of 1 cosign signature verified with `),
      );
    }
  });

  it('with two signatures by two keys, verifies the one of the given key and says the other does not', async () => {
    const r = await ferry(['verify', `${reg.host}/team/app:two`, '--key', pub()]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim().split('\n').length, 1);
    assert.match(
      r.stderr,
      /not verified: sha256:\S+ \(the signature does not verify with this key\)/,
    );
    assert.match(r.stderr, /1 of 2 cosign signatures verified/);
    const json = await ferry([
      'verify',
      `${reg.host}/team/app:two`,
      '--key',
      join(otherDir, 'cosign.pub'),
      '--json',
    ]);
    assert.equal(json.code, 0, json.stderr);
    const report = JSON.parse(json.stdout);
    assert.equal(report.digest, twoSigs);
    assert.equal(report.signatureTag, `${twoSigs.replace(':', '-')}.sig`);
    assert.equal(report.verified, 1);
    assert.deepEqual(
      report.signatures.map((s: { valid: boolean }) => s.valid),
      [true, false],
    );
    assert.equal(report.signatures[0].dockerReference, `${reg.host}/team/app`);
  });

  it('exits non-zero with another key (a second keygen, and the fixtures’ cosign2.pub)', async () => {
    for (const k of [join(otherDir, 'cosign.pub'), COSIGN2_PUB]) {
      const r = await ferry(['verify', `${reg.host}/team/app:signed`, '--key', k]);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stdout, '');
      assert.match(
        r.stderr,
        new RegExp(
          `^ferry: FERRY_SIGNATURE_NOT_VERIFIED: ${reg.host}/team/app@${signed}: none of its 1 signature verifies with \\S+ \\(the signature does not verify with this key\\)\\n$`,
        ),
      );
    }
    const json = await ferry([
      'verify',
      `${reg.host}/team/app:signed`,
      '--key',
      COSIGN2_PUB,
      '--json',
    ]);
    assert.equal(json.code, 1);
    const report = JSON.parse(json.stdout);
    assert.equal(report.verified, 0);
    assert.equal(report.signatures[0].valid, false);
  });

  it('exits non-zero when there is no signature tag, no image, or the key file is not a key', async () => {
    const none = await ferry(['verify', `${reg.host}/team/app:unsigned`, '--key', pub()]);
    assert.equal(none.code, 1);
    assert.equal(
      none.stderr,
      `ferry: FERRY_NO_SIGNATURE: ${reg.host}/team/app@${unsigned} has no cosign signature (no tag ${unsigned.replace(':', '-')}.sig)\n`,
    );
    const missing = await ferry(['verify', `${reg.host}/team/app:nope`, '--key', pub()]);
    assert.equal(missing.code, 1);
    assert.match(
      missing.stderr,
      /^ferry: FERRY_IMAGE_NOT_FOUND: .*team\/app:nope: no such image\n$/,
    );
    // a file that is no key: the message names the file, never its content
    const garbage = join(tmpDir('verify-bad'), 'bad.pub');
    writeFileSync(garbage, 'not a key\n');
    const bad = await ferry(['verify', `${reg.host}/team/app:signed`, '--key', garbage]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^ferry: FERRY_SIGNING_PUBLIC_KEY_INVALID: \S+bad\.pub: not a PEM/);
    const usage = await ferry(['verify', `${reg.host}/team/app:signed`]);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /FERRY_USAGE: .*--key/);
  });

  it('bin/ferry.js: exit 0 with the right key, 1 with another', async () => {
    const ok = await ferryBin(['verify', `${reg.host}/team/app:signed`, '--key', pub()]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, new RegExp(`^sha256:[a-f0-9]{64} ${reg.host}/team/app\\n$`));
    const no = await ferryBin(['verify', `${reg.host}/team/app:signed`, '--key', COSIGN2_PUB]);
    assert.equal(no.code, 1);
    assert.match(no.stderr, /^ferry: FERRY_SIGNATURE_NOT_VERIFIED: /);
  });

  it('reads registry credentials from $FERRY_DOCKER_CONFIG (basic auth registry)', async () => {
    const basic = await startRegistry({ auth: 'basic' });
    const authed = new RegistryClient({
      allow: ['127.0.0.1'],
      dockerConfigPath: basic.dockerConfigPath,
      retry: { attempts: 3 },
    });
    try {
      const digest = await pushImage(authed, basic, 'private/app', 'secret');
      await sign(authed, basic, 'private/app', digest, key);
      const target = `${basic.host}/private/app:secret`;
      const withCreds = await ferry(['verify', target, '--key', pub()], {
        FERRY_DOCKER_CONFIG: basic.dockerConfigPath,
      });
      assert.equal(withCreds.code, 0, withCreds.stderr);
      assert.ok(!withCreds.stderr.includes(basic.password!), 'no password in the output');
      const without = await ferry(['verify', target, '--key', pub()]);
      assert.equal(without.code, 1);
      assert.match(without.stderr, /^ferry: FERRY_REGISTRY_UNAUTHORIZED: /);
    } finally {
      await authed.close();
      await basic.stop();
    }
  });
});
