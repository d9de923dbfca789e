import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { skopeo, skopeoInspect, tmpDir, type RegistryHandle } from '../helpers';
import {
  pushAndWait,
  copyHello,
  startLocalStack,
  type WorkerStack,
  type LocalStack,
} from './stack';

/** Digests of the manifest and blobs an OCI layout made by skopeo holds for its only image. */
function layoutDigests(dir: string): { manifest: string; config: string; layers: string[] } {
  const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'));
  const manifest = index.manifests[0].digest as string;
  const m = JSON.parse(
    readFileSync(join(dir, 'blobs', 'sha256', manifest.slice('sha256:'.length)), 'utf8'),
  );
  return {
    manifest,
    config: m.config.digest,
    layers: m.layers.map((l: { digest: string }) => l.digest),
  };
}

describe('pipeline: OCI layouts, docker-archives and dir: images, copied back by skopeo', function () {
  this.timeout(180_000);
  let local: LocalStack;
  let registry: RegistryHandle;
  let stack: WorkerStack;
  let root: string;

  before(async () => {
    local = await startLocalStack('sources', {
      env: {
        FERRY_UPLOAD_CHUNK_SIZE: '0',
      },
    });
    ({ registry, stack, root } = local);
    copyHello(root);
    // A dir: image pushed by Ferry is the seed from which skopeo makes the layout and the archive.
    const seed = await pushAndWait(stack, {
      source: `dir:${join(root, 'hello')}`,
      target: `${registry.host}/seed/hello:1`,
    });
    assert.equal(seed.status, 'succeeded', JSON.stringify(seed.error));
    const src = `docker://${registry.host}/seed/hello:1`;
    await skopeo([
      'copy',
      '--insecure-policy',
      '--src-tls-verify=false',
      src,
      `oci:${join(root, 'layout')}:v1`,
    ]);
    await skopeo([
      'copy',
      '--insecure-policy',
      '--src-tls-verify=false',
      src,
      `docker-archive:${join(root, 'image.tar')}:hello:v1`,
    ]);
  });
  after(async () => {
    await local?.stop();
  });

  async function pushAndCopyBack(source: string, repo: string) {
    const target = `${registry.host}/${repo}:one`;
    const state = await pushAndWait(stack, { source, target, tags: ['two'] });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    for (const tag of ['one', 'two']) {
      const info = await skopeoInspect(`docker://${registry.host}/${repo}:${tag}`);
      assert.equal(info.Digest, state.manifest!.digest, `tag ${tag}`);
    }
    const back = tmpDir('back');
    await skopeo([
      'copy',
      '--insecure-policy',
      '--src-tls-verify=false',
      '--preserve-digests',
      `docker://${target}`,
      `oci:${back}:x`,
    ]);
    return { state, back: layoutDigests(back) };
  }

  it('an OCI layout is pushed as stored: the same manifest, config and layer digests come back', async () => {
    const src = layoutDigests(join(root, 'layout'));
    const { state, back } = await pushAndCopyBack(`oci:${join(root, 'layout')}:v1`, 'oci/hello');
    assert.equal(state.manifest!.digest, src.manifest);
    assert.deepEqual(back, src);
  });

  it('a docker-archive is pushed with gzipped layers whose digests come back identical', async () => {
    const { state, back } = await pushAndCopyBack(
      `docker-archive:${join(root, 'image.tar')}`,
      'archive/hello',
    );
    assert.equal(back.manifest, state.manifest!.digest);
    assert.deepEqual(
      back.layers,
      state.layers.map((l) => l.digest),
    );
    // The archive's config is pushed byte for byte: its diff_ids are the uncompressed layers'.
    const inspect = await skopeoInspect(`docker://${registry.host}/archive/hello:one`, [
      '--config',
    ]);
    const seed = await skopeoInspect(`docker://${registry.host}/seed/hello:1`, ['--config']);
    assert.deepEqual(inspect.rootfs.diff_ids, seed.rootfs.diff_ids);
  });

  it('a dir: image is pushed with two tags and comes back identical', async () => {
    const { state, back } = await pushAndCopyBack(`dir:${join(root, 'hello')}`, 'dir/hello');
    assert.equal(back.manifest, state.manifest!.digest);
    assert.deepEqual(
      back.layers,
      state.layers.map((l) => l.digest),
    );
  });

  it('docker format: a Docker schema2 manifest', async () => {
    const target = `${registry.host}/docker/hello:1`;
    const state = await pushAndWait(stack, {
      source: `oci:${join(root, 'layout')}:v1`,
      target,
      format: 'docker',
    });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    assert.equal(state.manifest!.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    const raw = await skopeoInspect(`docker://${target}`, ['--raw']);
    assert.equal(raw.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    assert.equal(raw.config.mediaType, 'application/vnd.docker.container.image.v1+json');
  });
});
