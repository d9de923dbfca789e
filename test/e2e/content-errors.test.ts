import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { skopeo, startRegistry, type RegistryHandle } from '../helpers';
import { RegistryClient } from '@ferry/registry-client';
import {
  stackConfig,
  startWorkers,
  submitPush,
  pushAndWait,
  copyHello,
  startLocalStack,
  type ApiRequestError,
  type WorkerStack,
  type LocalStack,
} from './stack';

describe('pipeline: bad content fails the push and tags nothing', function () {
  this.timeout(180_000);
  let local: LocalStack;
  let registry: RegistryHandle;
  let stack: WorkerStack;
  let root: string;
  let client: RegistryClient;

  before(async () => {
    local = await startLocalStack('content');
    ({ registry, stack, root } = local);
    copyHello(root);
    client = new RegistryClient({ allow: [registry.host] });
    const seed = await pushAndWait(stack, {
      source: `dir:${join(root, 'hello')}`,
      target: `${registry.host}/seed/hello:1`,
    });
    assert.equal(seed.status, 'succeeded');
    await skopeo([
      'copy',
      '--insecure-policy',
      '--src-tls-verify=false',
      `docker://${registry.host}/seed/hello:1`,
      `oci:${join(root, 'layout')}:v1`,
    ]);
  });
  after(async () => {
    await client?.close();
    await local?.stop();
  });

  it('a tampered OCI blob fails with FERRY_BLOB_DIGEST_MISMATCH naming the blob; no blob, no tag', async () => {
    // A fresh registry namespace does not hold the blob, so the bytes must be read and sent.
    const fresh = await startRegistry();
    try {
      const layout = join(root, 'layout');
      const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
      const m = JSON.parse(
        readFileSync(join(layout, 'blobs', 'sha256', index.manifests[0].digest.slice(7)), 'utf8'),
      );
      const victim = m.layers[1].digest as string;
      const path = join(layout, 'blobs', 'sha256', victim.slice(7));
      const bytes = readFileSync(path);
      bytes[bytes.length - 10] ^= 0xff;
      writeFileSync(path, bytes);

      const s2 = await startWorkers(
        stackConfig({
          FERRY_REDIS_URL: local.redis.url,
          FERRY_REGISTRY_ALLOW: fresh.host,
          FERRY_SOURCE_ROOT: root,
        }),
      );
      try {
        const state = await pushAndWait(s2, {
          source: `oci:${layout}:v1`,
          target: `${fresh.host}/bad/hello:1`,
        });
        assert.equal(state.status, 'failed');
        assert.equal(state.error?.code, 'FERRY_BLOB_DIGEST_MISMATCH', JSON.stringify(state.error));
        assert.ok(state.error!.message.includes(victim.slice(7, 19)), state.error!.message);
        const c = new RegistryClient({ allow: [fresh.host] });
        try {
          const repo = { registry: fresh.host, repository: 'bad/hello' };
          assert.equal(await c.blobExists(repo, victim), undefined);
          assert.equal(await c.headManifest(repo, '1'), undefined);
        } finally {
          await c.close();
        }
      } finally {
        await s2.stop();
      }
    } finally {
      await fresh.stop();
    }
  });

  it('a source outside the root or a missing path gets a 4xx naming the field; nothing is queued', async () => {
    const before = await stack.ctx.queues.lookup.count();
    await assert.rejects(
      submitPush(stack, { source: 'dir:/etc', target: `${registry.host}/x/y:1` }),
      (e: ApiRequestError) =>
        e.status === 403 && e.code === 'FERRY_SOURCE_OUTSIDE_ROOT' && e.field === 'source',
    );
    await assert.rejects(
      submitPush(stack, { source: `dir:${join(root, 'nope')}`, target: `${registry.host}/x/y:1` }),
      (e: ApiRequestError) => e.status >= 400 && e.status < 500 && e.field === 'source',
    );
    assert.equal(await stack.ctx.queues.lookup.count(), before);
  });
});
