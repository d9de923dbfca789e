/**
 * cosign signatures in a real docker-registry: attached through the injected
 * SignatureStore (here over @ferry/registry-client), read back by skopeo and
 * plain HTTP, checked structurally without Ferry's code, by openssl over the
 * payload blob the registry serves, and by Ferry's verifier; appends never
 * lose a signature, also when another writer replaces the manifest between
 * Ferry's write and its read-back.
 */
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { MediaTypes, buildManifest } from '@ferry/manifest';
import { bufferBlobSource, RegistryClient, RegistryError } from '@ferry/registry-client';
import {
  appendCosignSignature,
  attachCosignSignature,
  signCosign,
  signingKeyFromPem,
  verifyCosignSignatures,
  type LockFn,
  type SignatureStore,
  type SigningKey,
} from '@ferry/signing';
import { skopeo, startRegistry, tmpDir, type RegistryHandle } from '../../../test/helpers';
import { requireTool, run } from './support/tools';

const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');

function newKey(): SigningKey {
  const pem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
    type: 'pkcs8',
    format: 'pem',
  });
  return signingKeyFromPem(pem as string, 'test key');
}

/** One lock per key, in process: what a Redis lease gives across coordinators. */
function memoryLock(): LockFn & { taken: string[] } {
  const tails = new Map<string, Promise<unknown>>();
  const taken: string[] = [];
  const lock = (async <T>(key: string, fn: () => Promise<T>): Promise<T> => {
    const prev = tails.get(key) ?? Promise.resolve();
    const mine = prev.then(() => {
      taken.push(key);
      return fn();
    });
    tails.set(
      key,
      mine.catch(() => undefined),
    );
    return mine;
  }) as LockFn & { taken: string[] };
  lock.taken = taken;
  return lock;
}

describe('cosign signatures in docker-registry', function () {
  this.timeout(120_000);
  let reg: RegistryHandle;
  let client: RegistryClient;
  const repoName = 'team/signed';
  const repo = () => ({ registry: reg.host, repository: repoName });

  before(async () => {
    reg = await startRegistry();
    client = new RegistryClient({
      allow: ['127.0.0.1'],
      retry: { attempts: 3, baseDelayMs: 20, maxDelayMs: 200 },
    });
  });
  after(async () => {
    await client?.close();
    await reg?.stop();
  });

  /** Pushes a small image by digest; returns its manifest digest. */
  async function pushImage(seed: string): Promise<string> {
    const layer = Buffer.from(`layer ${seed}`);
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', seed }));
    await client.uploadBlob(repo(), bufferBlobSource(layer));
    await client.uploadBlob(repo(), bufferBlobSource(config));
    const m = buildManifest(
      'oci',
      { mediaType: MediaTypes.ociConfig, digest: sha256(config), size: config.length },
      [{ mediaType: MediaTypes.ociLayerTar, digest: sha256(layer), size: layer.length }],
    );
    return (await client.putManifest(repo(), m.digest, m.bytes, m.mediaType)).digest;
  }

  const store: () => SignatureStore = () => ({
    async getManifest(tag) {
      try {
        return (
          await client.getManifest(repo(), tag, [MediaTypes.ociManifest, MediaTypes.dockerManifest])
        ).body;
      } catch (e) {
        if ((e as RegistryError).code === 'FERRY_MANIFEST_UNKNOWN') return undefined;
        throw e;
      }
    },
    async putBlob(blob) {
      if (!(await client.blobExists(repo(), blob.digest))) {
        await client.uploadBlob(repo(), bufferBlobSource(blob.bytes, blob.digest));
      }
    },
    async putManifest(tag, bytes, mediaType) {
      await client.putManifest(repo(), tag, bytes, mediaType);
    },
  });

  async function plainGet(path: string): Promise<Buffer> {
    const res = await request(`${reg.url}/v2/${repoName}/${path}`, {
      headers: { accept: MediaTypes.ociManifest },
    });
    const body = Buffer.from(await res.body.arrayBuffer());
    assert.equal(res.statusCode, 200, `GET ${path}`);
    return body;
  }

  it('two keys sign one image: both signatures stay, each verifies (openssl and Ferry), the layout is cosign’s', async function () {
    const openssl = requireTool(this, 'openssl');
    const imageDigest = await pushImage('two-keys');
    const keys = [newKey(), newKey()];
    const ref = `${reg.host}/${repoName}`;
    const lock = memoryLock();
    const sigs = keys.map((k) =>
      signCosign(k, { dockerReference: ref, manifestDigest: imageDigest }),
    );
    // Started together; the lock makes the second read what the first wrote.
    const results = await Promise.all(
      sigs.map((s) => attachCosignSignature(store(), s, { lock, lockKey: `${ref}/${s.tag}` })),
    );
    assert.deepEqual(
      results.map((r) => r.added),
      [true, true],
    );
    assert.deepEqual(lock.taken, [`${ref}/${sigs[0]?.tag}`, `${ref}/${sigs[1]?.tag}`]);

    // Structural check, independent of Ferry's code: read with skopeo and plain HTTP.
    const tag = `sha256-${imageDigest.slice(7)}.sig`;
    const raw = JSON.parse(
      (
        await skopeo([
          'inspect',
          '--tls-verify=false',
          '--raw',
          `docker://${reg.host}/${repoName}:${tag}`,
        ])
      ).stdout,
    );
    assert.equal(raw.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    assert.equal(raw.layers.length, 2);
    const dir = tmpDir('cosign-registry');
    for (const [i, layer] of raw.layers.entries()) {
      assert.equal(layer.mediaType, 'application/vnd.dev.cosign.simplesigning.v1+json');
      const payload = await plainGet(`blobs/${layer.digest}`);
      assert.equal(sha256(payload), layer.digest);
      const parsed = JSON.parse(payload.toString());
      assert.equal(parsed.critical.image['docker-manifest-digest'], imageDigest);
      assert.equal(parsed.critical.type, 'cosign container image signature');
      assert.equal(parsed.critical.identity['docker-reference'], ref);
      writeFileSync(join(dir, 'payload'), payload);
      writeFileSync(
        join(dir, 'sig.der'),
        Buffer.from(layer.annotations['dev.cosignproject.cosign/signature'], 'base64'),
      );
      writeFileSync(join(dir, 'pub.pem'), keys[i]?.publicKeyPem as string);
      const v = await run(
        openssl,
        ['dgst', '-sha256', '-verify', 'pub.pem', '-signature', 'sig.der', 'payload'],
        { cwd: dir },
      );
      assert.equal(v.code, 0, `openssl verifies signature ${i + 1}: ${v.stderr}`);
    }
    const config = await plainGet(`blobs/${raw.config.digest}`);
    assert.deepEqual(
      JSON.parse(config.toString()).rootfs.diff_ids,
      raw.layers.map((l: { digest: string }) => l.digest),
    );

    const signatureManifest = await plainGet(`manifests/${tag}`);
    const fetchBlob = (d: string) => plainGet(`blobs/${d}`);
    for (const [i, k] of keys.entries()) {
      const r = await verifyCosignSignatures({
        imageDigest,
        signatureManifest,
        fetchBlob,
        publicKey: k.publicKeyPem,
        dockerReference: ref,
      });
      assert.deepEqual(
        r.layers.map((l) => l.valid),
        [i === 0, i === 1],
      );
    }

    // Signing again with the same key adds nothing.
    const again = signCosign(keys[0] as SigningKey, {
      dockerReference: ref,
      manifestDigest: imageDigest,
    });
    const r = await attachCosignSignature(store(), again, { lock, dedupeKey: keys[0]?.publicKey });
    assert.equal(r.added, false);
    assert.equal(r.layerCount, 2);
  });

  it('re-appends when another writer replaced the manifest between write and read-back', async () => {
    const imageDigest = await pushImage('overwrite');
    const ref = `${reg.host}/${repoName}`;
    const mine = signCosign(newKey(), { dockerReference: ref, manifestDigest: imageDigest });
    const theirs = signCosign(newKey(), { dockerReference: ref, manifestDigest: imageDigest });
    const base = store();
    let interfered = false;
    const racing: SignatureStore = {
      ...base,
      async putManifest(tag, bytes, mt) {
        await base.putManifest(tag, bytes, mt);
        if (interfered) return;
        interfered = true;
        // The other writer read before our write and writes after it: our layer is gone.
        const other = appendCosignSignature(undefined, theirs);
        for (const b of other.blobs) await base.putBlob(b);
        await base.putManifest(tag, other.manifest.bytes, other.manifest.mediaType);
      },
    };
    const result = await attachCosignSignature(racing, mine);
    assert.ok(interfered);
    assert.equal(result.layerCount, 2);
    const final = JSON.parse(((await base.getManifest(mine.tag)) as Buffer).toString());
    assert.deepEqual(
      final.layers.map((l: { digest: string }) => l.digest),
      [theirs.payloadDigest, mine.payloadDigest],
    );
  });

  it('gives up with FERRY_SIGNATURE_CONFLICT when the signature never sticks', async () => {
    const imageDigest = await pushImage('conflict');
    const sig = signCosign(newKey(), { dockerReference: 'x/y', manifestDigest: imageDigest });
    const base = store();
    const lossy: SignatureStore = { ...base, putManifest: async () => undefined };
    await assert.rejects(
      attachCosignSignature(lossy, sig, { attempts: 2 }),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, 'FERRY_SIGNATURE_CONFLICT');
        return true;
      },
    );
  });
});
