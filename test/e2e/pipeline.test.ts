import assert from 'node:assert/strict';
import { join } from 'node:path';
import { skopeo, skopeoInspect, tmpDir, type RegistryHandle } from '../helpers';
import {
  submitPush,
  waitForPush,
  pushAndWait,
  startLocalStack,
  type WorkerStack,
  type LocalStack,
} from './stack';

const repoRoot = join(__dirname, '..', '..');

describe('pipeline: workers push to a real registry', function () {
  this.timeout(180_000);
  let local: LocalStack;
  let registry: RegistryHandle;
  let stack: WorkerStack;

  before(async () => {
    local = await startLocalStack('pipeline', {
      env: {
        FERRY_SOURCE_ROOT: repoRoot,
      },
    });
    ({ registry, stack } = local);
  });
  after(async () => {
    await local?.stop();
  });

  it('pushes a dir: image, then finds every layer present on the second push', async () => {
    const source = `dir:${join(repoRoot, 'examples', 'hello')}`;
    const target = `${registry.host}/demo/hello:1.0`;
    const id = await submitPush(stack, { source, target, tags: ['latest'] });
    const state = await waitForPush(stack.ctx, id);
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    assert.ok(state.manifest?.digest.startsWith('sha256:'));
    assert.deepEqual(
      state.layers.map((l) => l.state),
      ['uploaded', 'uploaded'],
    );
    const info = await skopeoInspect(`docker://${target}`);
    assert.equal(info.Digest, state.manifest!.digest);
    assert.equal(info.Layers.length, 2);
    const latest = await skopeoInspect(`docker://${registry.host}/demo/hello:latest`);
    assert.equal(latest.Digest, state.manifest!.digest);

    const again = await pushAndWait(stack, { source, target });
    assert.equal(again.status, 'succeeded');
    assert.deepEqual(
      again.layers.map((l) => [l.state, l.bytesSent]),
      [
        ['exists', 0],
        ['exists', 0],
      ],
    );
    assert.equal(again.manifest!.digest, state.manifest!.digest);

    const other = await pushAndWait(stack, {
      source,
      target: `${registry.host}/other/hello:1.0`,
    });
    assert.equal(other.status, 'succeeded');
    assert.deepEqual(
      other.layers.map((l) => [l.state, l.bytesSent, l.mountedFrom]),
      [
        ['mounted', 0, 'demo/hello'],
        ['mounted', 0, 'demo/hello'],
      ],
    );

    const out = tmpDir('copy-back');
    await skopeo([
      'copy',
      '--insecure-policy',
      '--src-tls-verify=false',
      '--preserve-digests',
      `docker://${target}`,
      `oci:${out}:x`,
    ]);
  });
});
