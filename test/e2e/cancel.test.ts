import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RegistryClient } from '@ferry/registry-client';
import { startProxy, type ProxyHandle, type RegistryHandle } from '../helpers';
import { until } from '../../services/upload-worker/test/helpers';
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
  /** In front of the registry, to hold a PATCH and count DELETEs. */
  let proxy: ProxyHandle;

  before(async () => {
    local = await startLocalStack('cancel', {
      env: {
        FERRY_GZIP_LEVEL: '1',
        FERRY_UPLOAD_CHUNK_SIZE: String(8 * 1024 * 1024),
        // Every port of 127.0.0.1: the registry and the proxy started below.
        FERRY_REGISTRY_ALLOW: '127.0.0.1,localhost',
      },
    });
    ({ registry, stack, root } = local);
    proxy = await startProxy({ host: '127.0.0.1', port: registry.port });
    const img = join(root, 'big');
    mkdirSync(join(img, 'layers', '01-data'), { recursive: true });
    writeRandomFile(join(img, 'layers', '01-data', 'blob.bin'), 400);
  });
  after(async () => {
    await proxy?.stop();
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

  it('a cancel mid-upload DELETEs the registry session; the layer ends cancelled, never uploading after the cancel', async () => {
    const repository = 'cancel/session';
    const target = `${proxy.host}/${repository}:1`;
    const deletesBefore = proxy.requests('DELETE');
    // Two 8 MiB chunks reach the registry; the third PATCH is held before a byte goes through.
    const held = proxy.holdNext('PATCH', { skip: 2 });
    const id = await submitPush(stack, { source: `dir:${join(root, 'big')}`, target });
    await held;
    // The session the upload worker stored for resuming, now current: the registry holds 2 chunks.
    const pattern = stack.ctx.uploadLease.keys.uploadSession('*', repository);
    const sessionKey = await until(async () => (await stack.ctx.connection.keys(pattern))[0]);
    const location = new URL((await stack.ctx.connection.get(sessionKey)) ?? '');
    location.host = registry.host; // asked of the registry itself, not through the proxy
    const open = await fetch(location);
    await open.arrayBuffer();
    assert.equal(open.status, 204, 'the stored Location names the open session');
    assert.equal(open.headers.get('range'), `0-${2 * 8 * 1024 * 1024 - 1}`);

    const del = await fetch(`${stack.api.url}/v1/pushes/${id}`, { method: 'DELETE' });
    assert.ok(del.status < 300, `DELETE answered ${del.status}`);
    // Let the upload go on one held PATCH at a time until the worker notices the cancel.
    const job = await stack.ctx.queues.upload.getJob(`${id}-i0-l0-up`);
    assert.ok(job);
    const ended = async () => ['failed', 'completed', 'unknown'].includes(await job.getState());
    proxy.release();
    while (!(await ended())) {
      const next = proxy.holdNext('PATCH');
      const stop = until(ended, 50);
      if ((await Promise.race([next.then(() => 'held'), stop.then(() => 'ended')])) === 'ended') {
        break;
      }
      await new Promise((r) => setTimeout(r, 500));
      proxy.release();
    }
    assert.equal(await job.getState(), 'failed', 'the upload stopped');
    const state = await waitForPush(stack.ctx, id);
    assert.equal(state.status, 'cancelled');

    // The session was cancelled in the registry: a DELETE went out, and it is gone.
    assert.ok(proxy.requests('DELETE') > deletesBefore, 'no DELETE reached the registry');
    const gone = await fetch(location);
    const body = (await gone.json()) as { errors?: { code: string }[] };
    assert.equal(gone.status, 404);
    assert.equal(body.errors?.[0]?.code, 'BLOB_UPLOAD_UNKNOWN', JSON.stringify(body));
    assert.equal(await stack.ctx.connection.get(sessionKey), null, 'no session kept for resuming');

    // The layer is cancelled, and no event said `uploading` once the push was cancelled.
    const shown = (await (await fetch(`${stack.api.url}/v1/pushes/${id}`)).json()) as {
      status: string;
      layers: { state: string }[];
    };
    assert.equal(shown.status, 'cancelled');
    assert.equal(shown.layers[0].state, 'cancelled');
    const events = (await stack.ctx.store.readEvents(id)).map((e) => e.event);
    const cancelledAt = events.findIndex((e) => e.type === 'status' && e.status === 'cancelled');
    assert.ok(cancelledAt >= 0);
    const after = events.slice(cancelledAt + 1).map((e) => (e.type === 'layer' ? e.state : e.type));
    assert.ok(!after.includes('uploading'), `after the cancel: ${after.join(', ')}`);
  });
});
