/**
 * A push is a snapshot of its source: a source changed at the same path
 * between two pushes gives the second push exactly the new image (no opened
 * source is reused by path), and a source changed while a push runs gives
 * exactly the accepted image or FERRY_SOURCE_CHANGED — never a mix, and no tag
 * moves on failure. Each image is read back by skopeo and checked: every
 * layer's uncompressed digest is the config's diff_id at its position.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  appendFileSync,
  cpSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import {
  skopeo,
  skopeoInspect,
  startProxy,
  tmpDir,
  type ProxyHandle,
  type RegistryHandle,
} from '../helpers';
import {
  copyHello,
  pushAndWait,
  stackConfig,
  startLocalStack,
  startWorkers,
  submitPush,
  waitForPush,
  writeRandomFile,
  type LocalStack,
  type WorkerStack,
} from './stack';

interface ReadBack {
  manifest: string;
  diffIds: string[];
  layers: string[];
  env: string[];
}

/**
 * Copies an image out of the registry with skopeo (which checks every blob's
 * digest) and checks that each layer's uncompressed bytes hash to the config's
 * diff_id at the same position: an image mixing two versions of a source fails here.
 */
async function readBack(ref: string): Promise<ReadBack> {
  const dir = tmpDir('readback');
  await skopeo([
    'copy',
    '--insecure-policy',
    '--src-tls-verify=false',
    `docker://${ref}`,
    `oci:${dir}:x`,
  ]);
  const blob = (d: string) => readFileSync(join(dir, 'blobs', 'sha256', d.slice('sha256:'.length)));
  const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'));
  const manifest = JSON.parse(blob(index.manifests[0].digest).toString('utf8'));
  const config = JSON.parse(blob(manifest.config.digest).toString('utf8'));
  const layers = manifest.layers.map((l: { digest: string }) => l.digest) as string[];
  const diffIds = config.rootfs.diff_ids as string[];
  assert.equal(layers.length, diffIds.length, `${ref}: layer count differs from diff_ids`);
  layers.forEach((d, i) => {
    const actual =
      'sha256:' +
      createHash('sha256')
        .update(gunzipSync(blob(d)))
        .digest('hex');
    assert.equal(actual, diffIds[i], `${ref}: layer ${i} does not match diff_ids[${i}]`);
  });
  const info = await skopeoInspect(`docker://${ref}`);
  return { manifest: info.Digest, diffIds, layers, env: config.config?.Env ?? [] };
}

/** The digest a tag points at now (undefined when the tag does not exist). */
async function tagDigest(ref: string): Promise<string | undefined> {
  try {
    return (await skopeoInspect(`docker://${ref}`)).Digest;
  } catch {
    return undefined;
  }
}

describe('snapshot: a push is one consistent version of its source', function () {
  this.timeout(240_000);
  let local: LocalStack;
  let registry: RegistryHandle;
  let stack: WorkerStack;
  let root: string;
  /** Images "a" (examples/hello) and "b" (hello plus a layer), as dir:, OCI layouts and archives. */
  const made: Record<
    'a' | 'b',
    { dir: string; archive: string; layout: string; diffIds: string[] }
  > = {} as never;

  before(async () => {
    local = await startLocalStack('snapshot', { env: { FERRY_UPLOAD_CHUNK_SIZE: '0' } });
    ({ registry, stack, root } = local);
    const a = copyHello(root);
    const b = join(root, 'hello-b');
    cpSync(a, b, { recursive: true, verbatimSymlinks: true });
    mkdirSync(join(b, 'layers', '03-extra'), { recursive: true });
    writeFileSync(join(b, 'layers', '03-extra', 'extra.txt'), 'the second version\n');
    for (const [name, dir] of [
      ['a', a],
      ['b', b],
    ] as const) {
      const seed = await pushAndWait(stack, {
        source: `dir:${dir}`,
        target: `${registry.host}/seed/${name}:1`,
      });
      assert.equal(seed.status, 'succeeded', JSON.stringify(seed.error));
      const src = `docker://${registry.host}/seed/${name}:1`;
      const archive = join(root, `${name}.tar`);
      const layout = join(root, `layout-${name}`);
      const copy = ['copy', '--insecure-policy', '--src-tls-verify=false', src];
      await skopeo([...copy, `docker-archive:${archive}:img/${name}:1`]);
      await skopeo([...copy, `oci:${layout}:app`]);
      made[name] = {
        dir,
        archive,
        layout,
        diffIds: (await readBack(`${registry.host}/seed/${name}:1`)).diffIds,
      };
    }
    assert.notDeepEqual(made.a.diffIds, made.b.diffIds);
  });
  after(async () => {
    await local?.stop();
  });

  /** Pushes source to repo:tag and returns what skopeo reads back. */
  async function push(source: string, repo: string, extra: Record<string, unknown> = {}) {
    const target = `${registry.host}/${repo}:t`;
    const state = await pushAndWait(stack, { source, target, ...extra });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    const back = await readBack(target);
    assert.equal(back.manifest, state.manifest!.digest);
    return back;
  }

  describe('changed between two pushes (within the old 30 s cache window)', () => {
    it('a docker-archive replaced at the same path: the second push is exactly the new archive', async () => {
      const swap = join(root, 'swap.tar');
      cpSync(made.a.archive, swap);
      const first = await push(`docker-archive:${swap}`, 'swap/archive');
      assert.deepEqual(first.diffIds, made.a.diffIds);
      cpSync(made.b.archive, join(root, 'new.tar'));
      renameSync(join(root, 'new.tar'), swap);
      const second = await push(`docker-archive:${swap}`, 'swap/archive');
      assert.deepEqual(second.diffIds, made.b.diffIds, 'the new archive config and layers');
    });

    it('an OCI ref re-pointed to another image: the second push sends the new image', async () => {
      const layout = join(root, 'layout-swap');
      cpSync(made.a.layout, layout, { recursive: true });
      const first = await push(`oci:${layout}:app`, 'swap/oci');
      assert.deepEqual(first.diffIds, made.a.diffIds);
      await skopeo(['copy', '--insecure-policy', `oci:${made.b.layout}:app`, `oci:${layout}:app`]);
      const second = await push(`oci:${layout}:app`, 'swap/oci');
      assert.deepEqual(second.diffIds, made.b.diffIds);
      const b = await readBack(`${registry.host}/seed/b:1`);
      assert.equal(second.manifest, b.manifest);
    });

    it('dir: config.json edited: the edit is in the second push', async () => {
      const dir = join(root, 'dir-config');
      cpSync(made.a.dir, dir, { recursive: true, verbatimSymlinks: true });
      const first = await push(`dir:${dir}`, 'swap/dir-config');
      const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
      cfg.config.Env = [...cfg.config.Env, 'EDITED=yes'];
      writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
      const second = await push(`dir:${dir}`, 'swap/dir-config');
      assert.ok(!first.env.includes('EDITED=yes'));
      assert.ok(second.env.includes('EDITED=yes'), JSON.stringify(second.env));
      assert.deepEqual(second.diffIds, first.diffIds);
    });

    it('dir: a layer added, then removed: each push has exactly the layers there were', async () => {
      const dir = join(root, 'dir-layers');
      cpSync(made.a.dir, dir, { recursive: true, verbatimSymlinks: true });
      const first = await push(`dir:${dir}`, 'swap/dir-layers');
      assert.deepEqual(first.diffIds, made.a.diffIds);
      cpSync(join(made.b.dir, 'layers', '03-extra'), join(dir, 'layers', '03-extra'), {
        recursive: true,
      });
      const second = await push(`dir:${dir}`, 'swap/dir-layers');
      assert.deepEqual(second.diffIds, made.b.diffIds);
      rmSync(join(dir, 'layers', '03-extra'), { recursive: true });
      const third = await push(`dir:${dir}`, 'swap/dir-layers');
      assert.deepEqual(third.diffIds, made.a.diffIds);
    });
  });

  describe('changed while the push runs (a layer upload held at the proxy)', () => {
    const started: { stop(): Promise<unknown> }[] = [];
    afterEach(async () => {
      for (const s of started.splice(0).reverse()) await s.stop().catch(() => undefined);
    });

    /**
     * A fresh stack (its own Redis and registry, so no blob is present or mountable)
     * whose registry is reached through a proxy that can hold a request; one upload at a time.
     */
    async function heldStack(): Promise<{ stack: WorkerStack; proxy: ProxyHandle }> {
      const fresh = await startLocalStack('snapshot-held');
      started.push(fresh);
      const proxy = await startProxy({ host: '127.0.0.1', port: fresh.registry.port });
      started.push(proxy);
      await fresh.stack.stop();
      fresh.stack = await startWorkers(
        stackConfig({
          FERRY_REDIS_URL: fresh.redis.url,
          FERRY_REGISTRY_ALLOW: proxy.host,
          FERRY_SOURCE_ROOT: root,
          FERRY_UPLOAD_CHUNK_SIZE: '0',
          FERRY_UPLOAD_CONCURRENCY: '1',
        }),
      );
      return { stack: fresh.stack, proxy };
    }

    /**
     * Pushes `source` (accepted as it is now) to a tag that already points at
     * another image, holds its first layer upload, runs `change`, releases it.
     * `expected` is the digest the accepted version gives (pushed to the other
     * stack's registry before the change).
     */
    async function pushWhileChanging(source: string, repo: string, change: () => void) {
      const expected = (await push(source, `expected/${repo}`)).manifest;
      const { stack: held, proxy } = await heldStack();
      const target = `${proxy.host}/${repo}:t`;
      const prior = join(root, `prior-${repo.replace('/', '-')}`);
      mkdirSync(join(prior, 'layers', '01'), { recursive: true });
      writeFileSync(join(prior, 'layers', '01', 'prior.txt'), `the tag's earlier image ${repo}\n`);
      const before = await pushAndWait(held, { source: `dir:${prior}`, target });
      assert.equal(before.status, 'succeeded', JSON.stringify(before.error));
      const hold = proxy.holdNext('PATCH');
      const id = await submitPush(held, { source, target });
      await hold;
      change();
      proxy.release();
      const state = await waitForPush(held.ctx, id);
      return { state, expected, prior: before.manifest!.digest, target };
    }

    function assertExactOrChanged(
      r: {
        state: { status: string; error?: { code: string }; manifest?: { digest: string } };
        expected: string;
        prior: string;
      },
      tagNow: string | undefined,
    ) {
      if (r.state.status === 'succeeded') {
        assert.equal(r.state.manifest!.digest, r.expected, 'exactly the accepted version');
        assert.equal(tagNow, r.expected);
      } else {
        assert.equal(r.state.status, 'failed');
        assert.equal(r.state.error?.code, 'FERRY_SOURCE_CHANGED', JSON.stringify(r.state.error));
        assert.equal(tagNow, r.prior, 'the tag did not move');
      }
    }

    it('dir: a file rewritten while its layer streams: FERRY_SOURCE_CHANGED, nothing tagged', async () => {
      const dir = join(root, 'dir-live');
      cpSync(made.a.dir, dir, { recursive: true, verbatimSymlinks: true });
      writeRandomFile(join(dir, 'layers', '01-base', 'big.bin'), 48);
      const r = await pushWhileChanging(`dir:${dir}`, 'live/dir', () => {
        appendFileSync(join(dir, 'layers', '01-base', 'big.bin'), 'more');
        appendFileSync(join(dir, 'layers', '02-app', 'hello.txt'), 'more');
      });
      assert.equal(r.state.status, 'failed', 'the changed layers were read after the change');
      assertExactOrChanged(r, await tagDigest(r.target));
    });

    it('dir: config.json edited while a layer uploads: the accepted config or FERRY_SOURCE_CHANGED', async () => {
      const dir = join(root, 'dir-live-config');
      cpSync(made.a.dir, dir, { recursive: true, verbatimSymlinks: true });
      const r = await pushWhileChanging(`dir:${dir}`, 'live/dir-config', () => {
        writeFileSync(join(dir, 'config.json'), JSON.stringify({ config: { Env: ['X=1'] } }));
      });
      // The roles of one process share the opening of the pinned source (config.json read
      // and checked against the pin before the edit): the push may complete with exactly the
      // accepted config; a coordinator that opens the source afresh fails it instead.
      assertExactOrChanged(r, await tagDigest(r.target));
      if (r.state.status === 'succeeded') {
        assert.ok(!(await readBack(r.target)).env.includes('X=1'), 'never the edited config');
      }
    });

    it('docker-archive replaced while a layer uploads: the accepted image or FERRY_SOURCE_CHANGED', async () => {
      const swap = join(root, 'live.tar');
      cpSync(made.a.archive, swap);
      const r = await pushWhileChanging(`docker-archive:${swap}`, 'live/archive', () => {
        cpSync(made.b.archive, join(root, 'live-new.tar'));
        renameSync(join(root, 'live-new.tar'), swap);
      });
      assertExactOrChanged(r, await tagDigest(r.target));
      if (r.state.status === 'succeeded') {
        assert.deepEqual((await readBack(r.target)).diffIds, made.a.diffIds);
      }
    });

    it('OCI ref re-pointed while a layer uploads: exactly the accepted image is pushed', async () => {
      const layout = join(root, 'layout-live');
      cpSync(made.a.layout, layout, { recursive: true });
      const r = await pushWhileChanging(`oci:${layout}:app`, 'live/oci', () => {
        // Re-point the ref as skopeo would (the change must happen while the upload is held):
        // b's blobs added, index.json naming b's manifest for "app".
        cpSync(join(made.b.layout, 'blobs'), join(layout, 'blobs'), { recursive: true });
        cpSync(join(made.b.layout, 'index.json'), join(layout, 'index.json'));
      });
      assert.equal(r.state.status, 'succeeded', JSON.stringify(r.state.error));
      assertExactOrChanged(r, await tagDigest(r.target));
      assert.deepEqual((await readBack(r.target)).diffIds, made.a.diffIds);
    });
  });
});
