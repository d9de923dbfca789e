import assert from 'node:assert/strict';
import {
  copyFileSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readlinkSync,
  symlinkSync,
  utimesSync,
} from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { openSource } from '@ferry/image-source';
import { skopeo, skopeoInspect, startRedis, tmpDir, type RegistryHandle } from '../helpers';
import {
  makeDirImage,
  writeOciImage,
  writeOciIndex,
} from '../../packages/image-source/test/support/images';
import {
  stackConfig,
  startWorkers,
  pushAndWait,
  startLocalStack,
  type WorkerStack,
  type LocalStack,
} from './stack';

describe('pipeline: multi-platform indexes and reproducible dir: images', function () {
  this.timeout(180_000);
  let local: LocalStack;
  let registry: RegistryHandle;
  let stack: WorkerStack;
  let root: string;
  let index: { digest: string };
  let manifests: string[];

  before(async () => {
    local = await startLocalStack('platforms');
    ({ registry, stack, root } = local);
    makeDirImage(join(root, 'img'));
    const dirImage = (await openSource('dir:img', { root })).images[0];
    const layout = join(root, 'multi');
    const amd = await writeOciImage(layout, dirImage, {
      platform: { os: 'linux', architecture: 'amd64' },
      writeIndex: false,
    });
    const arm = await writeOciImage(layout, dirImage, {
      platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
      writeIndex: false,
    });
    index = await writeOciIndex(layout, [amd.manifest, arm.manifest], 'v1');
    manifests = [amd.manifest.digest, arm.manifest.digest];
  });
  after(async () => {
    await local?.stop();
  });

  it('pushes every platform and then the index, which skopeo copies back whole', async () => {
    const target = `${registry.host}/multi/app:v1`;
    const state = await pushAndWait(stack, { source: `oci:${join(root, 'multi')}:v1`, target });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    assert.equal(state.manifest!.digest, index.digest);
    assert.equal(state.manifest!.mediaType, 'application/vnd.oci.image.index.v1+json');
    assert.deepEqual(
      state.manifests!.map((m) => [m.digest, m.platform]),
      [
        [manifests[0], 'linux/amd64'],
        [manifests[1], 'linux/arm64/v8'],
      ],
    );
    const raw = await skopeoInspect(`docker://${target}`, ['--raw']);
    assert.deepEqual(
      raw.manifests.map((m: { digest: string }) => m.digest),
      manifests,
    );
    const back = tmpDir('multi-back');
    await skopeo([
      'copy',
      '--all',
      '--insecure-policy',
      '--src-tls-verify=false',
      '--preserve-digests',
      `docker://${target}`,
      `oci:${back}:v1`,
    ]);
    const again = await openSource(`oci:${back}:v1`, { root: back });
    assert.equal(again.indexDigest, index.digest);
  });

  it('a stored index of one image is pushed as that index, not as the bare manifest', async () => {
    const layout = join(root, 'one');
    const dirImage = (await openSource('dir:img', { root })).images[0];
    const only = await writeOciImage(layout, dirImage, {
      platform: { os: 'linux', architecture: 'amd64' },
      writeIndex: false,
    });
    const idx = await writeOciIndex(layout, [only.manifest], 'v1');
    const target = `${registry.host}/one/app:v1`;
    const state = await pushAndWait(stack, { source: `oci:${layout}:v1`, target });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    assert.equal(state.manifest!.digest, idx.digest);
    const raw = await skopeoInspect(`docker://${target}`, ['--raw']);
    assert.equal(raw.mediaType, 'application/vnd.oci.image.index.v1+json');
    assert.deepEqual(
      raw.manifests.map((m: { digest: string }) => m.digest),
      [only.manifest.digest],
    );
  });

  it('with a platform, pushes that one image alone', async () => {
    const target = `${registry.host}/single/app:arm`;
    const state = await pushAndWait(stack, {
      source: `oci:${join(root, 'multi')}:v1`,
      target,
      platform: 'linux/arm64/v8',
    });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    assert.equal(state.manifest!.digest, manifests[1]);
    const info = await skopeoInspect(`docker://${target}`, [
      '--override-arch',
      'arm64',
      '--override-variant',
      'v8',
    ]);
    assert.equal(info.Architecture, 'arm64');
  });

  it('a dir: image pushed again from a copy (other mtimes, other order) with a fresh Redis has the same digest', async () => {
    const first = await pushAndWait(stack, {
      source: `dir:${join(root, 'img')}`,
      target: `${registry.host}/repro/a:1`,
    });
    assert.equal(first.status, 'succeeded');
    // The copy: entries created in reverse order, every mtime moved.
    const copy = join(root, 'img-copy');
    const src = join(root, 'img');
    const entries = (dir: string): string[] =>
      readdirSync(dir).flatMap((n) => {
        const p = join(dir, n);
        return lstatSync(p).isDirectory() ? [p, ...entries(p)] : [p];
      });
    const all = entries(src).reverse();
    for (const p of all) {
      const to = join(copy, relative(src, p));
      const st = lstatSync(p);
      mkdirSync(dirname(to), { recursive: true });
      if (st.isSymbolicLink()) symlinkSync(readlinkSync(p), to);
      else if (st.isDirectory()) mkdirSync(to, { recursive: true });
      else copyFileSync(p, to);
    }
    for (const p of entries(copy)) {
      if (!lstatSync(p).isSymbolicLink()) utimesSync(p, new Date(2001, 1, 1), new Date(2011, 1, 1));
    }

    const redis2 = await startRedis();
    const stack2 = await startWorkers(
      stackConfig({
        FERRY_REDIS_URL: redis2.url,
        FERRY_REGISTRY_ALLOW: registry.host,
        FERRY_SOURCE_ROOT: root,
      }),
    );
    try {
      const second = await pushAndWait(stack2, {
        source: `dir:${copy}`,
        target: `${registry.host}/repro/b:1`,
      });
      assert.equal(second.status, 'succeeded');
      assert.equal(second.manifest!.digest, first.manifest!.digest);
      assert.deepEqual(
        second.layers.map((l) => l.digest),
        first.layers.map((l) => l.digest),
      );
    } finally {
      await stack2.stop();
      await redis2.stop();
    }
  });
});
