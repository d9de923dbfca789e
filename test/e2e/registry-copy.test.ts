/**
 * docker:// sources and fan-out against real docker-registry processes,
 * checked with skopeo and byte-counting proxies: copies keep every digest,
 * same-registry promotion moves no blob bytes, a source behind basic auth
 * and a target behind token auth in one push, cosign signatures copied along,
 * wrong source bytes fail the push untagged, and a fan-out reads the source
 * once for every target, a failing target failing alone.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openSource } from '@ferry/image-source';
import { RegistryClient, bufferBlobSource } from '@ferry/registry-client';
import {
  skopeo,
  skopeoInspect,
  startProxy,
  startRedis,
  startRegistry,
  tmpDir,
  type ProxyHandle,
  type RedisHandle,
  type RegistryHandle,
} from '../helpers';
import {
  makeDirImage,
  writeOciImage,
  writeOciIndex,
} from '../../packages/image-source/test/support/images';
import {
  pushAndWait,
  stackConfig,
  startWorkers,
  submitPush,
  waitForPush,
  type WorkerStack,
} from './stack';

const COSIGN_LAYER = 'application/vnd.dev.cosign.simplesigning.v1+json';

/** One docker config.json with the `auths` of every registry given. */
function mergedDockerConfig(path: string, registries: RegistryHandle[]): string {
  const auths: Record<string, unknown> = {};
  for (const r of registries) {
    Object.assign(auths, JSON.parse(readFileSync(r.dockerConfigPath, 'utf8')).auths ?? {});
  }
  writeFileSync(path, JSON.stringify({ auths }), { mode: 0o600 });
  return path;
}

describe('e2e: docker:// sources and fan-out', function () {
  this.timeout(300_000);
  let redis: RedisHandle;
  let a: RegistryHandle; // plain source (behind proxyA)
  let b: RegistryHandle; // plain target (behind proxyB)
  let basic: RegistryHandle; // htpasswd source
  let token: RegistryHandle; // token-auth target
  let proxyA: ProxyHandle;
  let proxyB: ProxyHandle;
  let stack: WorkerStack;
  let root: string;
  let authfile: string;
  let index: { digest: string };
  let platformManifests: string[];
  let blobBytes: number;

  before(async () => {
    [redis, a, b, basic, token] = await Promise.all([
      startRedis(),
      startRegistry(),
      startRegistry(),
      startRegistry({ auth: 'basic' }),
      // Tokens for locked/* grant pull only: a push there is refused.
      startRegistry({ auth: 'token', readOnlyRepositories: /^locked\// }),
    ]);
    [proxyA, proxyB] = await Promise.all([
      startProxy({ host: '127.0.0.1', port: a.port }),
      startProxy({ host: '127.0.0.1', port: b.port }),
    ]);
    root = tmpDir('registry-copy');
    authfile = mergedDockerConfig(join(root, 'auth.json'), [basic, token]);
    // A two-platform OCI index with a 3 MB incompressible layer, put in the sources by skopeo.
    makeDirImage(join(root, 'img'), { big: 3 * 1024 * 1024 });
    const image = (await openSource('dir:img', { root })).images[0];
    const layout = join(root, 'multi');
    const amd = await writeOciImage(layout, image, {
      platform: { os: 'linux', architecture: 'amd64' },
      writeIndex: false,
    });
    const arm = await writeOciImage(layout, image, {
      platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
      writeIndex: false,
    });
    index = await writeOciIndex(layout, [amd.manifest, arm.manifest], 'v1');
    platformManifests = [amd.manifest.digest, arm.manifest.digest];
    blobBytes = amd.layers.reduce((n, l) => n + l.size, 0);
    for (const dest of [`${a.host}/src/app:v1`, `${basic.host}/src/app:v1`]) {
      await skopeo([
        'copy',
        '--all',
        '--preserve-digests',
        '--dest-tls-verify=false',
        '--dest-authfile',
        authfile,
        `oci:${layout}:v1`,
        `docker://${dest}`,
      ]);
    }
    stack = await startWorkers(
      stackConfig({
        FERRY_REDIS_URL: redis.url,
        FERRY_REGISTRY_ALLOW: '127.0.0.1,localhost',
        FERRY_SOURCE_ROOT: root,
        FERRY_DOCKER_CONFIG: authfile,
      }),
    );
  });
  after(async () => {
    await stack?.stop();
    await Promise.allSettled([proxyA, proxyB, redis, a, b, basic, token].map((x) => x?.stop()));
  });

  it('copies a two-platform index between registries byte for byte; skopeo copy --all gives it back', async () => {
    const target = `${b.host}/copy/app:v1`;
    const state = await pushAndWait(stack, { source: `docker://${a.host}/src/app:v1`, target });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    assert.equal(state.manifest?.digest, index.digest);
    const raw = await skopeoInspect(`docker://${target}`, ['--raw']);
    assert.deepEqual(
      raw.manifests.map((m: { digest: string }) => m.digest),
      platformManifests,
    );
    const back = join(tmpDir('copy-back'), 'layout');
    await skopeo([
      'copy',
      '--all',
      '--preserve-digests',
      '--src-tls-verify=false',
      `docker://${target}`,
      `oci:${back}:v1`,
    ]);
    const got = JSON.parse(readFileSync(join(back, 'index.json'), 'utf8'));
    assert.equal(got.manifests[0].digest, index.digest, 'the same index digest read back');
  });

  it('same-registry promotion mounts from the source repository: zero blob bytes', async () => {
    proxyA.resetCounters();
    const state = await pushAndWait(stack, {
      source: `docker://${proxyA.host}/src/app:v1`,
      target: `${proxyA.host}/prod/app:v1`,
      platform: 'linux/amd64',
    });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    assert.equal(state.manifest?.digest, platformManifests[0]);
    for (const l of state.layers) assert.equal(l.state, 'mounted', JSON.stringify(l));
    // Manifests and HEADs only: far less than one layer's bytes in either direction.
    assert.ok(proxyA.bytesUp < 64 * 1024, `sent ${proxyA.bytesUp} bytes`);
    assert.ok(proxyA.bytesDown < 64 * 1024, `read ${proxyA.bytesDown} bytes`);
  });

  it('a source behind htpasswd basic auth and a target behind token auth, in one push', async () => {
    const target = `${token.host}/team/app:v1`;
    const state = await pushAndWait(stack, {
      source: `docker://${basic.host}/src/app:v1`,
      target,
    });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    assert.equal(state.manifest?.digest, index.digest);
    const raw = await skopeoInspect(`docker://${target}`, ['--raw', '--authfile', authfile]);
    assert.equal(raw.manifests.length, 2);
  });

  it("copies the source's cosign signature tag along; copySignatures: false leaves it", async () => {
    // A signature manifest as cosign stores it, for the amd64 image's digest.
    const client = new RegistryClient({ allow: ['127.0.0.1'] });
    const repo = { registry: a.host, repository: 'src/app' };
    const payload = Buffer.from(
      JSON.stringify({
        critical: {
          identity: { 'docker-reference': `${a.host}/src/app` },
          image: { 'docker-manifest-digest': platformManifests[0] },
          type: 'cosign container image signature',
        },
        optional: null,
      }),
    );
    const config = Buffer.from(
      '{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}',
    );
    const sha = (x: Buffer) => `sha256:${createHash('sha256').update(x).digest('hex')}`;
    for (const blob of [payload, config]) {
      await client.uploadBlob(repo, bufferBlobSource(blob, sha(blob)), { monolithic: true });
    }
    const sigManifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: {
          mediaType: 'application/vnd.oci.image.config.v1+json',
          digest: sha(config),
          size: config.length,
        },
        layers: [
          {
            mediaType: COSIGN_LAYER,
            digest: sha(payload),
            size: payload.length,
            annotations: { 'dev.cosignproject.cosign/signature': 'MEUCIQ==' },
          },
        ],
      }),
    );
    const tag = `${platformManifests[0].replace(':', '-')}.sig`;
    await client.putManifest(repo, tag, sigManifest, 'application/vnd.oci.image.manifest.v1+json');
    await client.close();

    const src = `docker://${a.host}/src/app:v1`;
    const state = await pushAndWait(stack, {
      source: src,
      target: `${b.host}/signed/app:v1`,
      platform: 'linux/amd64',
    });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    const copied = await skopeoInspect(`docker://${b.host}/signed/app:${tag}`, ['--raw']);
    assert.equal(copied.layers[0].mediaType, COSIGN_LAYER);
    assert.equal(copied.layers[0].digest, sha(payload));

    const none = await pushAndWait(stack, {
      source: src,
      target: `${b.host}/unsigned/app:v1`,
      platform: 'linux/amd64',
      copySignatures: false,
    });
    assert.equal(none.status, 'succeeded', JSON.stringify(none.error));
    await assert.rejects(skopeoInspect(`docker://${b.host}/unsigned/app:${tag}`, ['--raw']));
  });

  it('fan-out to two registries: both hold the image, the source blobs read once', async () => {
    // Two registries that hold nothing yet: every blob must be copied to both.
    const [x, y] = await Promise.all([startRegistry(), startRegistry()]);
    try {
      proxyA.resetCounters();
      const targets = [`${x.host}/fan/app:v1`, `${y.host}/fan/app:v1`];
      const state = await pushAndWait(stack, {
        source: `docker://${proxyA.host}/src/app:v1`,
        target: targets[0],
        targets: [targets[1]],
        platform: 'linux/amd64',
      });
      assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
      assert.deepEqual(
        state.targets?.map((t) => [t.target, t.status, t.manifest?.digest]),
        targets.map((t) => [t, 'succeeded', platformManifests[0]]),
      );
      for (const ref of targets) {
        const raw = await skopeoInspect(`docker://${ref}`, ['--raw']);
        assert.equal(raw.layers.length, state.layers.length);
        for (const l of state.layers) assert.equal(l.state, 'uploaded');
      }
      // One copy of the layers came out of the source registry, not two.
      assert.ok(proxyA.bytesDown >= blobBytes, `read ${proxyA.bytesDown} of ${blobBytes}`);
      assert.ok(
        proxyA.bytesDown < blobBytes * 1.5,
        `read ${proxyA.bytesDown} for ${blobBytes} bytes of blobs`,
      );
    } finally {
      await Promise.allSettled([x.stop(), y.stop()]);
    }
  });

  it('fan-out with a target that refuses: that target fails alone, the other is pushed and tagged', async () => {
    // The basic-auth registry under another name (localhost): no credentials for it, so 401.
    const state = await pushAndWait(stack, {
      source: `docker://${a.host}/src/app:v1`,
      target: `${b.host}/half/app:v1`,
      targets: [`localhost:${basic.port}/half/app:v1`],
      platform: 'linux/amd64',
    });
    assert.equal(state.status, 'failed');
    const byTarget = Object.fromEntries((state.targets ?? []).map((t) => [t.target, t]));
    assert.equal(byTarget[`${b.host}/half/app:v1`]?.status, 'succeeded');
    assert.equal(byTarget[`localhost:${basic.port}/half/app:v1`]?.status, 'failed');
    const raw = await skopeoInspect(`docker://${b.host}/half/app:v1`, ['--raw']);
    assert.equal(raw.schemaVersion, 2);
  });

  it('fan-out to two repositories of one registry, the first refusing pushes: the second is still pushed', async () => {
    // Same registry, so one upload would serve both (the second mounting from the first);
    // the first refuses, and the second must get its own upload rather than that failure.
    const locked = `${token.host}/locked/app:v1`;
    const open = `${token.host}/open/app:v1`;
    const state = await pushAndWait(stack, {
      source: `docker://${a.host}/src/app:v1`,
      target: locked,
      targets: [open],
      platform: 'linux/amd64',
    });
    assert.equal(state.status, 'failed');
    const byTarget = Object.fromEntries((state.targets ?? []).map((t) => [t.target, t]));
    assert.equal(byTarget[locked]?.status, 'failed', JSON.stringify(byTarget[locked]));
    assert.equal(byTarget[open]?.status, 'succeeded', JSON.stringify(byTarget[open]));
    assert.equal(byTarget[open]?.manifest?.digest, platformManifests[0]);
    const raw = await skopeoInspect(`docker://${open}`, ['--raw', '--authfile', authfile]);
    assert.equal(raw.layers.length, state.layers.length);
    await assert.rejects(skopeoInspect(`docker://${locked}`, ['--raw', '--authfile', authfile]));
  });

  it('--all-tags copies every tag of a repository as one push, digests equal', async () => {
    const src = `${a.host}/src/many`;
    const tls = ['--src-tls-verify=false', '--dest-tls-verify=false'];
    await skopeo(['copy', '--all', ...tls, `docker://${a.host}/src/app:v1`, `docker://${src}:one`]);
    await skopeo([
      'copy',
      ...tls,
      `docker://${a.host}/src/app@${platformManifests[0]}`,
      `docker://${src}:two`,
    ]);
    await skopeo([
      'copy',
      ...tls,
      `docker://${a.host}/src/app@${platformManifests[1]}`,
      `docker://${src}:three`,
    ]);
    const state = await pushAndWait(stack, {
      source: `docker://${src}`,
      target: `${b.host}/mirror/many`,
      allTags: true,
    });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    const want: Record<string, string> = {
      one: index.digest,
      two: platformManifests[0],
      three: platformManifests[1],
    };
    assert.deepEqual(
      Object.fromEntries((state.manifests ?? []).map((m) => [m.tag, m.digest])),
      want,
    );
    const client = new RegistryClient({ allow: ['127.0.0.1'] });
    try {
      for (const [tag, digest] of Object.entries(want)) {
        const m = await client.getManifest({ registry: b.host, repository: 'mirror/many' }, tag);
        assert.equal(`sha256:${createHash('sha256').update(m.body).digest('hex')}`, digest, tag);
        await skopeoInspect(`docker://${b.host}/mirror/many:${tag}`, ['--raw']);
      }
    } finally {
      await client.close();
    }
  });

  it('the tag moved while the copy runs: the digest pinned at the start is what the target gets', async () => {
    // The source tag names the amd64 image; the copy's first blob PUT to the target (a small
    // blob's one body-carrying request) is held while the tag is moved to the arm64 image, then
    // let go.
    const tls = ['--src-tls-verify=false', '--dest-tls-verify=false'];
    const src = `${a.host}/src/moving`;
    await skopeo([
      'copy',
      ...tls,
      `docker://${a.host}/src/app@${platformManifests[0]}`,
      `docker://${src}:v1`,
    ]);
    const fresh = await startRegistry();
    const proxy = await startProxy({ host: '127.0.0.1', port: fresh.port });
    try {
      const held = proxy.holdNext('PUT');
      const id = await submitPush(stack, {
        source: `docker://${src}:v1`,
        target: `${proxy.host}/moved/app:v1`,
      });
      await held;
      await skopeo([
        'copy',
        ...tls,
        `docker://${a.host}/src/app@${platformManifests[1]}`,
        `docker://${src}:v1`,
      ]);
      const moved = await skopeoInspect(`docker://${src}:v1`, ['--raw']);
      assert.ok(moved, 'the tag was moved');
      proxy.release();
      const state = await waitForPush(stack.ctx, id, 120_000);
      assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
      assert.equal(state.manifest?.digest, platformManifests[0], 'the digest pinned at the start');
      const client = new RegistryClient({ allow: ['127.0.0.1'] });
      const m = await client.getManifest({ registry: proxy.host, repository: 'moved/app' }, 'v1');
      await client.close();
      assert.equal(m.digest, platformManifests[0]);
    } finally {
      await proxy.stop();
      await fresh.stop();
    }
  });

  it('a source serving wrong bytes for a digest fails the push: nothing committed, nothing tagged', async () => {
    // Corrupt the big layer's data file in the source registry's storage (same size, other bytes).
    const manifest = await skopeoInspect(`docker://${a.host}/src/app@${platformManifests[1]}`, [
      '--raw',
    ]);
    const layer = manifest.layers.reduce((x: { size: number }, y: { size: number }) =>
      x.size >= y.size ? x : y,
    ) as { digest: string; size: number };
    const hex = layer.digest.slice(7);
    const file = join(
      a.storageDir,
      'docker/registry/v2/blobs/sha256',
      hex.slice(0, 2),
      hex,
      'data',
    );
    const bytes = readFileSync(file);
    bytes[bytes.length >> 1] ^= 0xff;
    writeFileSync(file, bytes);
    // A registry that has none of the image's blobs (nothing to find or mount there).
    const fresh = await startRegistry();
    const target = `${fresh.host}/tampered/app:v1`;
    const state = await pushAndWait(stack, {
      source: `docker://${a.host}/src/app@${platformManifests[1]}`,
      target,
    }).finally(() => undefined);
    assert.equal(state.status, 'failed');
    assert.equal(state.error?.code, 'FERRY_BLOB_DIGEST_MISMATCH', JSON.stringify(state.error));
    await assert.rejects(skopeoInspect(`docker://${target}`, ['--raw']), 'no tag');
    const client = new RegistryClient({ allow: ['127.0.0.1'] });
    const repo = { registry: fresh.host, repository: 'tampered/app' };
    assert.equal(await client.blobExists(repo, layer.digest), undefined, 'not committed');
    await client.close();
    await fresh.stop();
  });
});
