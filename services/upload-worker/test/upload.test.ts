/**
 * The upload processor against a real redis-server and docker-registry: a
 * blob leased by another owner (the job waits delayed, holding no slot, then
 * finds the blob present) and a lease lost mid-upload (nothing published,
 * nothing committed in the registry).
 */
import assert from 'node:assert/strict';
import { Worker, type Job } from 'bullmq';
import { zlibIdentity } from '@ferry/image-source';
import { JOB_VERSION, QUEUE_NAMES, blockingDuplicate, type UploadJob } from '@ferry/queue';
import { blobLeaseKey, type LayerOutcome } from '@ferry/runtime';
import { uploadProcessor } from '@ferry/upload-worker';
import { SourceCache } from '@ferry/runtime';
import {
  createPush,
  layerFacts,
  layersOf,
  startServiceEnv,
  until,
  writeDirImage,
  type CreatedPush,
  type ServiceEnv,
} from './helpers';

function uploadData(push: CreatedPush, layerIndex: number, diffId: string): UploadJob {
  const r = push.request;
  return {
    v: JOB_VERSION,
    pushId: push.id,
    imageIndex: 0,
    layerIndex,
    source: r.source,
    target: r.target,
    gzipLevel: 1,
    ...(r.dirOptions ? { dirOptions: r.dirOptions } : {}),
    ...(r.pin ? { pin: r.pin } : {}),
    diffId,
  };
}

describe('upload-worker: uploadProcessor (real redis-server and docker-registry)', function () {
  this.timeout(120_000);
  let env: ServiceEnv;
  let sources: SourceCache;

  before(async () => {
    env = await startServiceEnv('upload-proc', { FERRY_UPLOAD_CHUNK_SIZE: String(1024 * 1024) });
    sources = new SourceCache(env.config);
  });
  after(async () => {
    await env?.stop();
  });

  it('a blob leased by another owner: the job moves to delayed holding no slot, then finds it present', async () => {
    const img = writeDirImage(env.root, 'leased', { '01-a': 'first layer\n', '02-b': 'second\n' });
    const target = `${env.registry.host}/leased/img:1`;
    const push = await createPush(env, `dir:${img}`, target);
    const [la, lb] = await layersOf(env, push.request);
    const a = await layerFacts(la);
    const b = await layerFacts(lb);
    const repo = { registry: env.registry.host, repository: 'leased/img' };
    const leaseKey = blobLeaseKey(env.registry.host, undefined, a.diffId, 1, zlibIdentity(1));
    // Someone else is uploading layer a.
    const otherToken = await env.ctx.uploadLease.acquire(leaseKey, 'someone-else', 60_000);
    assert.ok(otherToken !== null);

    const order: string[] = [];
    const processor = uploadProcessor({
      ctx: env.ctx,
      client: env.client,
      sources,
      logger: env.logger,
      chunkSize: 1024 * 1024,
      waitMs: 100,
    });
    const worker = new Worker<UploadJob, LayerOutcome>(
      QUEUE_NAMES.upload,
      async (job: Job<UploadJob>, token?: string) => {
        order.push(`start ${job.data.layerIndex}`);
        const r = await processor(job, token);
        order.push(`done ${job.data.layerIndex} ${r.state}`);
        return r;
      },
      {
        connection: blockingDuplicate(env.ctx.connection),
        prefix: env.config.queuePrefix,
        concurrency: 1,
      },
    );
    try {
      const jobA = await env.ctx.queues.upload.add('upload', uploadData(push, 0, a.diffId), {
        jobId: 'lease-a',
        attempts: 3,
      });
      await until(async () => (await jobA.getState()) === 'delayed');
      // The waiting job holds no slot: with concurrency 1, another blob's job runs and finishes.
      const jobB = await env.ctx.queues.upload.add('upload', uploadData(push, 1, b.diffId), {
        jobId: 'lease-b',
        attempts: 3,
      });
      await until(async () => (await jobB.getState()) === 'completed');
      // A is still waiting for the lease: delayed, or just woken to look again (its delay is short).
      assert.ok(['delayed', 'active', 'waiting'].includes(await jobA.getState()));
      assert.ok(!order.some((o) => o.startsWith('done 0')), order.join(', '));
      assert.ok(order.includes('done 1 uploaded'), order.join(', '));

      // The other owner finishes: blob in the registry, its digest cached, lease released.
      const up = await env.client.uploadBlob(repo, {
        size: a.size,
        digest: undefined,
        open: async (offset: number) => {
          const s = await la.open(offset);
          return {
            stream: s.stream,
            done: s.done.then((r) => ({ digest: r.digest, size: r.size })),
          };
        },
      });
      assert.equal(up.digest, a.digest);
      await env.ctx.blobs.cacheCompressed(a.diffId, 1, zlibIdentity(1), a.digest, a.size);
      await env.ctx.uploadLease.release(leaseKey, 'someone-else', otherToken);

      await until(async () => (await jobA.getState()) === 'completed');
      const fresh = await env.ctx.queues.upload.getJob('lease-a');
      assert.equal(fresh?.returnvalue.state, 'exists');
      assert.equal(fresh?.returnvalue.digest, a.digest);
      assert.ok((fresh?.data.waits ?? 0) >= 1, 'the job never waited');
      // Started, handed back (no "done"), b ran to the end, then a again and finished without sending.
      assert.equal(order[0], 'start 0');
      assert.ok(order.indexOf('done 1 uploaded') < order.indexOf('done 0 exists'), order.join());
      assert.equal(order.filter((o) => o.startsWith('done 0')).length, 1, order.join());
      const state = await env.ctx.store.get(push.id);
      assert.equal(state?.layers[0].state, 'exists');
      assert.equal(state?.layers[0].bytesSent, 0);
    } finally {
      await worker.close();
    }
  });

  it('a first attempt asks the registry only where Ferry knows the blob; a job that waited looks first', async () => {
    const img = writeDirImage(env.root, 'looks', { '01-a': 'looked at once\n' });
    const target = `${env.proxy.host}/looks/img:1`;
    const push = await createPush(env, `dir:${img}`, target);
    const [layer] = await layersOf(env, push.request);
    const facts = await layerFacts(layer);
    // The compressed digest is known, so each look would be a HEAD on the registry.
    await env.ctx.blobs.cacheCompressed(facts.diffId, 1, zlibIdentity(1), facts.digest, facts.size);
    const processor = uploadProcessor({
      ctx: env.ctx,
      client: env.client,
      sources,
      logger: env.logger,
      chunkSize: 1024 * 1024,
    });
    const run = async (jobId: string, data: UploadJob) => {
      const heads = env.proxy.requests('HEAD');
      const puts = env.proxy.requests('PUT');
      const job = await env.ctx.queues.upload.add('upload', data, { jobId });
      const out = await processor(job, undefined);
      return {
        state: out.state,
        heads: env.proxy.requests('HEAD') - heads,
        puts: env.proxy.requests('PUT') - puts,
      };
    };
    // 1. The lookup has just looked, and the blob index knows no repository of this registry
    //    holding it: no HEAD at all, uploaded.
    assert.deepEqual(await run('looks-0', uploadData(push, 0, facts.diffId)), {
      state: 'uploaded',
      heads: 0,
      puts: 1,
    });
    assert.deepEqual(await env.ctx.blobs.reposWithBlob(env.proxy.host, facts.digest), [
      'looks/img',
    ]);
    // 2. Another repository of the registry, now that the index knows the blob there: it looks
    //    (HEAD, absent) under the lease and mounts instead of sending the bytes.
    const other = await createPush(env, `dir:${img}`, `${env.proxy.host}/looks/other:1`);
    const mounted = await run('looks-1', uploadData(other, 0, facts.diffId));
    assert.equal(mounted.state, 'mounted');
    assert.equal(mounted.puts, 0);
    assert.ok(mounted.heads >= 1);
    // 3. A job that waited for another owner's lease looks before taking one: present, nothing sent.
    assert.deepEqual(await run('looks-2', { ...uploadData(push, 0, facts.diffId), waits: 1 }), {
      state: 'exists',
      heads: 1,
      puts: 0,
    });
  });

  it('a lease lost mid-upload stops it with FERRY_LEASE_LOST and publishes nothing', async () => {
    const img = writeDirImage(env.root, 'lost', { '01-data': { mb: 6 } });
    const target = `${env.proxy.host}/lost/img:1`;
    const push = await createPush(env, `dir:${img}`, target);
    const [layer] = await layersOf(env, push.request);
    const facts = await layerFacts(layer);
    const leaseKey = blobLeaseKey(env.proxy.host, undefined, facts.diffId, 1, zlibIdentity(1));
    const processor = uploadProcessor({
      ctx: env.ctx,
      client: env.client,
      sources,
      logger: env.logger,
      chunkSize: 1024 * 1024,
      leaseMs: 3_000,
    });
    const job = await env.ctx.queues.upload.add('upload', uploadData(push, 0, facts.diffId), {
      jobId: 'lost-0',
      attempts: 1,
    });
    const putsBefore = env.proxy.requests('PUT');
    // Hold the third PATCH: two chunks are in the registry's session.
    const held = env.proxy.holdNext('PATCH', { skip: 2 });
    const run = processor(job, undefined).then(
      (r) => ({ ok: r }),
      (err: unknown) => ({ err }),
    );
    await held;
    // Another owner takes the lease over while the PATCH waits.
    await env.ctx.connection.del(env.ctx.uploadLease.keys.lease(leaseKey));
    const taken = await env.ctx.uploadLease.acquire(leaseKey, 'the-new-owner', 60_000);
    assert.ok(taken !== null);
    env.proxy.release();
    const out = await run;
    assert.ok('err' in out, `the upload went on: ${JSON.stringify(out)}`);
    assert.equal((out.err as { code?: string }).code, 'FERRY_LEASE_LOST', String(out.err));
    // Nothing committed: no final PUT went through, the registry has no such blob.
    assert.equal(env.proxy.requests('PUT'), putsBefore);
    const repo = { registry: env.registry.host, repository: 'lost/img' };
    assert.equal(await env.client.blobExists(repo, facts.digest), undefined);
    // Nothing published: no blob-index entry, no compressed-digest cache entry.
    assert.deepEqual(await env.ctx.blobs.reposWithBlob(env.proxy.host, facts.digest), []);
    assert.equal(await env.ctx.blobs.lookupCompressed(facts.diffId, 1, zlibIdentity(1)), null);
    // The new owner's lease was left alone.
    assert.equal((await env.ctx.uploadLease.holder(leaseKey))?.owner, 'the-new-owner');
  });
});
