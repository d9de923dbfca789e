import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RegistryClient } from '@ferry/registry-client';
import { type RegistryHandle } from '../helpers';
import {
  submitPush,
  waitForPush,
  pushAndWait,
  writeRandomFile,
  startLocalStack,
  type WorkerStack,
  type LocalStack,
} from './stack';

describe('pipeline: cancelling a push', function () {
  this.timeout(180_000);
  let local: LocalStack;
  let registry: RegistryHandle;
  let stack: WorkerStack;
  let root: string;

  before(async () => {
    local = await startLocalStack('cancel', {
      env: {
        FERRY_GZIP_LEVEL: '1',
        FERRY_UPLOAD_CHUNK_SIZE: String(8 * 1024 * 1024),
      },
    });
    ({ registry, stack, root } = local);
    const img = join(root, 'big');
    mkdirSync(join(img, 'layers', '01-data'), { recursive: true });
    writeRandomFile(join(img, 'layers', '01-data', 'blob.bin'), 400);
  });
  after(async () => {
    await local?.stop();
  });

  it('DELETE stops the upload: the push ends cancelled, nothing is tagged, the worker is free again', async () => {
    const target = `${registry.host}/cancel/big:1`;
    const id = await submitPush(stack, { source: `dir:${join(root, 'big')}`, target });
    for (;;) {
      const s = await stack.ctx.store.get(id);
      if (s?.layers[0]?.state === 'uploading' && s.layers[0].bytesSent > 0) break;
      assert.notEqual(s?.status, 'succeeded', 'finished before it could be cancelled');
      await new Promise((r) => setTimeout(r, 20));
    }
    const del = await fetch(`${stack.api.url}/v1/pushes/${id}`, { method: 'DELETE' });
    assert.ok(del.status < 300, `DELETE answered ${del.status}`);
    const state = await waitForPush(stack.ctx, id);
    assert.equal(state.status, 'cancelled');
    assert.equal(state.error?.code, 'FERRY_CANCELLED');
    // The upload job gives up (no retries), and no tag ever appears.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const job = await stack.ctx.queues.upload.getJob(`${id}-i0-l0-up`);
      const st = job ? await job.getState() : 'gone';
      if (st === 'failed' || st === 'gone') break;
      if (Date.now() > deadline) throw new Error(`upload job still ${st}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const client = new RegistryClient({ allow: [registry.host] });
    try {
      assert.equal(
        await client.headManifest({ registry: registry.host, repository: 'cancel/big' }, '1'),
        undefined,
      );
    } finally {
      await client.close();
    }
    // The same workers still push other images.
    const small = join(root, 'small');
    mkdirSync(join(small, 'layers', '01'), { recursive: true });
    writeFileSync(join(small, 'layers', '01', 'f.txt'), 'hi\n');
    const ok = await pushAndWait(stack, {
      source: `dir:${small}`,
      target: `${registry.host}/cancel/small:1`,
    });
    assert.equal(ok.status, 'succeeded');
  });
});
