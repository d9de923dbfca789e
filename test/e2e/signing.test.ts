/**
 * Signed pushes through the whole pipeline, checked by tools and code that
 * are not the signer: cosign signatures by openssl over the payload fetched
 * from the registry and a structural check of the `.sig` tag; schema1
 * manifests by docker-registry itself (it verifies the JWS on PUT) for an EC
 * and an RSA key, and skopeo reading them back; a push asking for a key no
 * coordinator has is refused before it is enqueued; two coordinators
 * attaching signatures to one image at once keep both (the Redis lock).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RegistryClient, bufferBlobSource } from '@ferry/registry-client';
import {
  attachCosignSignature,
  generateKeys,
  loadSigningKey,
  signCosign,
  verifyCosignSignatures,
  type SignatureStore,
} from '@ferry/signing';
import {
  findBinary,
  skopeoInspect,
  startRedis,
  startRegistry,
  tmpDir,
  type RedisHandle,
  type RegistryHandle,
} from '../helpers';
import {
  ApiRequestError,
  copyHello,
  pushAndWait,
  stackConfig,
  startWorkers,
  submitPush,
  type WorkerStack,
} from './stack';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe('e2e: signing (cosign, schema1) through the coordinator', function () {
  this.timeout(300_000);
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let s1registry: RegistryHandle;
  let ec: Awaited<ReturnType<typeof generateKeys>>;
  let rsa: Awaited<ReturnType<typeof generateKeys>>;
  let root: string;
  let source: string;
  let stack: WorkerStack;
  let client: RegistryClient;

  before(async () => {
    [redis, registry, s1registry] = await Promise.all([
      startRedis(),
      startRegistry(),
      startRegistry({ schema1: true }),
    ]);
    root = tmpDir('signing');
    ec = await generateKeys(join(root, 'ec'));
    rsa = await generateKeys(join(root, 'rsa'), { rsa: 2048 });
    source = `dir:${copyHello(root)}`;
    stack = await startWorkers(
      stackConfig({
        FERRY_REDIS_URL: redis.url,
        FERRY_REGISTRY_ALLOW: '127.0.0.1',
        FERRY_SOURCE_ROOT: root,
        FERRY_SIGNING_KEY: ec.privateKeyPath,
      }),
    );
    client = new RegistryClient({ allow: ['127.0.0.1'] });
  });
  after(async () => {
    await client?.close();
    await stack?.stop();
    await Promise.allSettled([redis, registry, s1registry].map((x) => x?.stop()));
  });

  it('cosign: the .sig tag is cosign’s layout, its payload names the pushed digest, openssl verifies it', async () => {
    const target = `${registry.host}/signed/app:1`;
    const state = await pushAndWait(stack, { source, target, sign: { cosign: true } });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    const digest = state.manifest!.digest;
    assert.deepEqual(
      state.signatures?.map((s) => s.kind),
      ['cosign'],
    );
    // Structure, read with skopeo: tag sha256-<hex>.sig, cosign's media type and annotation key.
    const tag = `sha256-${digest.slice(7)}.sig`;
    const sig = await skopeoInspect(`docker://${registry.host}/signed/app:${tag}`, ['--raw']);
    assert.equal(sig.layers.length, 1);
    const layer = sig.layers[0];
    assert.equal(layer.mediaType, 'application/vnd.dev.cosign.simplesigning.v1+json');
    const b64 = layer.annotations['dev.cosignproject.cosign/signature'];
    assert.ok(b64, 'signature annotation');
    const repo = { registry: registry.host, repository: 'signed/app' };
    const { stream } = await client.getBlob(repo, layer.digest);
    const chunks: Buffer[] = [];
    for await (const c of stream) chunks.push(c as Buffer);
    const payload = Buffer.concat(chunks);
    assert.equal(sha(payload), layer.digest);
    assert.equal(JSON.parse(payload.toString()).critical.image['docker-manifest-digest'], digest);
    // openssl, over the payload blob from the registry, with the public key.
    const openssl = findBinary('openssl');
    assert.ok(openssl, 'openssl is needed');
    const dir = tmpDir('openssl');
    writeFileSync(join(dir, 'payload'), payload);
    writeFileSync(join(dir, 'sig.der'), Buffer.from(b64, 'base64'));
    const out = execFileSync(
      openssl,
      [
        'dgst',
        '-sha256',
        '-verify',
        ec.publicKeyPath,
        '-signature',
        join(dir, 'sig.der'),
        join(dir, 'payload'),
      ],
      { encoding: 'utf8' },
    );
    assert.match(out, /Verified OK/);
    // And the same verifier that accepts real cosign signatures.
    const sigManifest = await client.getManifest(repo, tag);
    const { verified } = await verifyCosignSignatures({
      imageDigest: digest,
      signatureManifest: sigManifest.body,
      fetchBlob: async (d) => {
        const r = await client.getBlob(repo, d);
        const parts: Buffer[] = [];
        for await (const c of r.stream) parts.push(c as Buffer);
        return Buffer.concat(parts);
      },
      publicKey: (await loadSigningKey(ec.privateKeyPath)).publicKeyPem,
    });
    assert.equal(verified.length, 1);
  });

  it('schema1: docker-registry (which verifies the JWS) accepts one signed manifest per tag; skopeo reads it', async () => {
    const target = `${s1registry.host}/legacy/app:1`;
    const state = await pushAndWait(stack, { source, target, schema1: true, tags: ['two'] });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    assert.deepEqual(
      state.manifests?.map((m) => m.tag),
      ['1', 'two'],
    );
    const [one, two] = state.manifests!;
    assert.notEqual(one.digest, two.digest, 'the tag is in the signed payload');
    for (const m of state.manifests!) {
      assert.equal(m.mediaType, 'application/vnd.docker.distribution.manifest.v1+prettyjws');
      const raw = await skopeoInspect(`docker://${s1registry.host}/legacy/app:${m.tag}`, ['--raw']);
      assert.equal(raw.schemaVersion, 1);
      assert.equal(raw.tag, m.tag);
      assert.equal(raw.signatures.length, 1);
      const info = await skopeoInspect(`docker://${s1registry.host}/legacy/app:${m.tag}`);
      assert.equal(info.Digest, m.digest);
    }
  });

  it('schema1 with an RSA key and its certificate (x5c): accepted by the registry', async () => {
    const rsaStack = await startWorkers(
      stackConfig({
        FERRY_REDIS_URL: redis.url,
        FERRY_REGISTRY_ALLOW: '127.0.0.1',
        FERRY_SOURCE_ROOT: root,
        FERRY_SIGNING_KEY: rsa.privateKeyPath,
        FERRY_SIGNING_CERT: rsa.certificatePath!,
      }),
    );
    try {
      const target = `${s1registry.host}/legacy/rsa:1`;
      const state = await pushAndWait(rsaStack, { source, target, schema1: true });
      assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
      const raw = await skopeoInspect(`docker://${target}`, ['--raw']);
      assert.equal(raw.schemaVersion, 1);
      // An RSA key signs no cosign signature: refused before anything is enqueued.
      await assert.rejects(
        submitPush(rsaStack, { source, target, sign: { cosign: true } }),
        (err: unknown) =>
          err instanceof ApiRequestError &&
          err.status === 422 &&
          err.code === 'FERRY_SIGNING_NOT_CONFIGURED' &&
          err.field === 'sign',
      );
    } finally {
      await rsaStack.stop();
    }
  });

  it('a push asking for an OpenPGP signature no coordinator can make is refused (422, field sign)', async () => {
    await assert.rejects(
      submitPush(stack, { source, target: `${registry.host}/x/y:1`, sign: { pgp: true } }),
      (err: unknown) =>
        err instanceof ApiRequestError &&
        err.status === 422 &&
        err.code === 'FERRY_SIGNING_NOT_CONFIGURED' &&
        err.field === 'sign',
    );
  });

  it('two coordinators appending to one .sig tag at once (forced to interleave) keep both signatures', async () => {
    const repo = { registry: registry.host, repository: 'race/app' };
    const image = Buffer.from('{"schemaVersion":2}');
    const digest = sha(image);
    const keys = [ec, await generateKeys(join(root, 'ec2'))];
    // Both read the (empty) tag before either writes, unless the lock keeps them apart.
    let reads = 0;
    const bothRead = new Promise<void>((resolve) => setTimeout(resolve, 300));
    const store: SignatureStore = {
      async getManifest(tag) {
        reads++;
        try {
          return (await client.getManifest(repo, tag)).body;
        } catch {
          return undefined;
        } finally {
          await bothRead;
        }
      },
      async putBlob(blob) {
        await client.uploadBlob(repo, bufferBlobSource(blob.bytes, blob.digest), {
          monolithic: true,
        });
      },
      async putManifest(tag, bytes, mediaType) {
        await client.putManifest(repo, tag, bytes, mediaType);
      },
    };
    const signing = stack.ctx.signing;
    await Promise.all(
      keys.map(async (k) => {
        const key = await loadSigningKey(k.privateKeyPath);
        const sig = signCosign(key, {
          dockerReference: `${repo.registry}/${repo.repository}`,
          manifestDigest: digest,
        });
        await attachCosignSignature(store, sig, {
          lock: (name, fn) => signing.withLock(name, fn),
          lockKey: `${repo.registry}/${repo.repository}/${sig.tag}`,
          attempts: 1,
        });
      }),
    );
    assert.ok(reads >= 2);
    const sig = await client.getManifest(repo, `sha256-${digest.slice(7)}.sig`);
    assert.equal(JSON.parse(sig.body.toString()).layers.length, 2, 'both signatures kept');
  });
});
