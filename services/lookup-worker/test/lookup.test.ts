/**
 * The lookup processor against a real redis-server and docker-registry: a
 * digest the OCI source states and the target has → 'exists', no upload job;
 * a missing one → exactly one upload child in the same flow, a current
 * payload carrying platform and pin; a version-1 payload (no `v`, no
 * platform) is read with the platform from the push state's request. A job
 * of a whole image (version 4) does the same for each of its layers in one
 * job, and fails only once every layer has been looked at.
 */
import assert from 'node:assert/strict';
import {
  imageLookupJobId,
  JOB_VERSION,
  lookupJobId,
  uploadJobId,
  type LookupJob,
  type UploadJob,
} from '@ferry/queue';
import { bufferBlobSource } from '@ferry/registry-client';
import { PushRequests, SourceCache } from '@ferry/runtime';
import { createLogger, type Logger } from '@ferry/log';
import { Writable } from 'node:stream';
import { lookupProcessor } from '@ferry/lookup-worker';
import {
  createPush,
  startServiceEnv,
  until,
  writeOciImage,
  type ServiceEnv,
} from '../../upload-worker/test/helpers';
import { enqueue } from '../../upload-worker/test/processes';

describe('lookup-worker: lookupProcessor (real redis-server and docker-registry)', function () {
  this.timeout(120_000);
  let env: ServiceEnv;

  before(async () => {
    env = await startServiceEnv('lookup-proc');
  });
  after(async () => {
    await env?.stop();
  });

  /** An OCI layout of two layers, a push of it, and the target holding layer 0 already. */
  async function preparePush(name: string, present = 1) {
    const { dir, layers, config } = writeOciImage(env.root, name);
    const repo = { registry: env.registry.host, repository: `lookup/${name}` };
    // The target has the first `present` layers already.
    for (const l of layers.slice(0, present)) {
      await env.client.uploadBlob(repo, bufferBlobSource(l.bytes, l.digest));
    }
    const push = await createPush(
      env,
      `oci:${dir}:latest`,
      `${env.registry.host}/lookup/${name}:1`,
      {
        platform: 'linux/amd64',
      },
    );
    return { push, layers, config };
  }

  function processor(parallel?: number, logger: Logger = env.logger) {
    return lookupProcessor({
      ctx: env.ctx,
      client: env.client,
      sources: new SourceCache(env.config),
      requests: new PushRequests(env.ctx.store),
      logger,
      ...(parallel !== undefined ? { parallel } : {}),
    });
  }

  /** A JSON logger at info whose lines are kept. */
  function capturingLogger(): { logger: Logger; messages: () => string[] } {
    let text = '';
    const stream = new Writable({
      write(chunk: Buffer, _enc, done) {
        text += chunk.toString();
        done();
      },
    });
    const logger = createLogger({ format: 'json', stream, level: 'info' });
    return {
      logger,
      messages: () =>
        text
          .split('\n')
          .filter(Boolean)
          .map((l) => (JSON.parse(l) as { message: string }).message),
    };
  }

  /** The uploads the push's lookups added. */
  async function uploadsOf(pushId: string) {
    const uploads = await env.ctx.queues.upload.getJobs(['waiting', 'delayed', 'active']);
    return uploads.filter((j) => j.data.pushId === pushId);
  }

  /** One lookup job per layer (as for a source Ferry compresses, or an older API). */
  async function runLookups(name: string, v1: boolean) {
    const { push, layers } = await preparePush(name);
    assert.equal(push.layout.lookupPerImage, true, 'an OCI layout states its digests');
    await enqueue(env, { ...push, layout: { images: push.layout.images } });
    const run = processor();
    const outcomes = [];
    for (const l of [0, 1]) {
      const job = await env.ctx.queues.lookup.getJob(lookupJobId(push.id, 0, l));
      assert.ok(job);
      if (v1) {
        // As the previous release wrote it: no version, no platform, no pin.
        const { v: _v, platform: _p, pin: _pin, ...old } = job.data;
        await job.updateData(old as LookupJob);
        assert.equal(job.data.v, undefined);
      }
      outcomes.push(await run(job));
    }
    return { push, layers, outcomes };
  }

  for (const v1 of [false, true]) {
    it(`${v1 ? 'a version-1 payload (platform read back)' : `version ${JOB_VERSION}`}: present → exists, no upload; missing → one upload child with platform and pin`, async () => {
      const { push, layers, outcomes } = await runLookups(v1 ? 'old' : 'new', v1);
      assert.equal(outcomes[0].state, 'exists');
      assert.equal(outcomes[0].digest, layers[0].digest);
      assert.equal(outcomes[1].state, 'upload');
      assert.equal(outcomes[1].digest, layers[1].digest);
      const mine = await uploadsOf(push.id);
      assert.deepEqual(
        mine.map((j) => j.id),
        [uploadJobId(push.id, 0, 1)],
      );
      const data: UploadJob = mine[0].data;
      assert.equal(data.v, JOB_VERSION);
      assert.equal(data.layerIndex, 1);
      assert.equal(data.platform, 'linux/amd64');
      assert.equal(data.pin?.key, push.request.pin?.key);
      // The upload job is a child of the push's assemble job, like the lookups.
      assert.equal(mine[0].parent?.id, `push-${push.id}`);
      const state = await env.ctx.store.get(push.id);
      assert.equal(state?.layers[0].state, 'exists');
      assert.equal(state?.layers[1].state, 'pending');
    });
  }

  it('one job of the whole image (version 4): each layer looked at, the missing one handed to one upload child, the config looked for', async () => {
    const { push, layers, config } = await preparePush('image');
    await enqueue(env, push);
    const job = await env.ctx.queues.lookup.getJob(imageLookupJobId(push.id, 0));
    assert.ok(job, 'one job for the image');
    assert.equal(job.data.v, JOB_VERSION);
    assert.equal(job.data.layers, 2);
    assert.equal(await env.ctx.queues.lookup.getJob(lookupJobId(push.id, 0, 1)), undefined);
    const outcome = await processor()(job);
    assert.deepEqual(
      outcome.layers?.map((o) => [o.layerIndex, o.state, o.digest]),
      [
        [0, 'exists', layers[0].digest],
        [1, 'upload', layers[1].digest],
      ],
    );
    // The top fields are the first layer's (what an older coordinator reads of a one-layer job).
    assert.equal(outcome.layerIndex, 0);
    assert.equal(outcome.state, 'exists');
    // The config, looked for beside the layers: not in the target yet (the coordinator puts it).
    assert.deepEqual(outcome.config, {
      digest: config.digest,
      targets: { [push.request.target]: 'missing' },
    });
    const mine = await uploadsOf(push.id);
    assert.deepEqual(
      mine.map((j) => [j.id, j.data.layerIndex, j.parent?.id]),
      [[uploadJobId(push.id, 0, 1), 1, `push-${push.id}`]],
    );
    const state = await env.ctx.store.get(push.id);
    assert.deepEqual(
      state?.layers.map((l) => l.state),
      ['exists', 'pending'],
    );
  });

  it('a job of several layers fails only after every layer was looked at (no upload hand-off cut short)', async () => {
    const { push, layers } = await preparePush('short');
    await enqueue(env, push);
    const job = await env.ctx.queues.lookup.getJob(imageLookupJobId(push.id, 0));
    assert.ok(job);
    // A third layer the source does not have (only a payload that disagrees with its pin can say so).
    await job.updateData({ ...job.data, layers: 3 });
    await assert.rejects(processor()(job), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'FERRY_SOURCE_CHANGED');
      assert.match(err.message, /no layer 2 in image 0/);
      return true;
    });
    // Layers 0 and 1 were still looked at: present marked, missing handed to its upload.
    const state = await env.ctx.store.get(push.id);
    assert.deepEqual(
      state?.layers.map((l) => [l.state, l.digest]),
      [
        ['exists', layers[0].digest],
        ['pending', layers[1].digest],
      ],
    );
    assert.deepEqual(
      (await uploadsOf(push.id)).map((j) => j.id),
      [uploadJobId(push.id, 0, 1)],
    );
    // A bad count is refused before anything is looked at.
    await job.updateData({ ...job.data, layers: 0 });
    await assert.rejects(processor()(job), /bad layer count 0/);
  });

  it('a config already in the target is found and recorded in the blob index', async () => {
    const { push, config } = await preparePush('with-config');
    const repo = { registry: env.registry.host, repository: 'lookup/with-config' };
    await env.client.uploadBlob(repo, bufferBlobSource(config.bytes, config.digest));
    await enqueue(env, push);
    const job = await env.ctx.queues.lookup.getJob(imageLookupJobId(push.id, 0));
    assert.ok(job);
    const outcome = await processor()(job);
    assert.deepEqual(outcome.config, {
      digest: config.digest,
      targets: { [push.request.target]: 'exists' },
    });
    assert.deepEqual(await env.ctx.blobs.reposWithBlob(repo.registry, config.digest), [
      repo.repository,
    ]);
    // A job of one layer (an older API's, or a source Ferry compresses) leaves the config alone.
    const { push: other } = await preparePush('per-layer-config');
    await enqueue(env, { ...other, layout: { images: other.layout.images } });
    const one = await env.ctx.queues.lookup.getJob(lookupJobId(other.id, 0, 0));
    assert.ok(one);
    assert.equal((await processor()(one)).config, undefined);
  });

  it('records what a job found present together: one script for the layers, one for the blob index, one counter write', async () => {
    const { push, layers, config } = await preparePush('all-present', 2);
    const repo = { registry: env.registry.host, repository: 'lookup/all-present' };
    await env.client.uploadBlob(repo, bufferBlobSource(config.bytes, config.digest));
    await enqueue(env, push);
    const job = await env.ctx.queues.lookup.getJob(imageLookupJobId(push.id, 0));
    assert.ok(job);
    const redis = env.ctx.connection;
    const calls = async (): Promise<Record<string, number>> => {
      const info = (await redis.info('commandstats')) as string;
      return Object.fromEntries(
        [...info.matchAll(/^cmdstat_([a-z]+):calls=(\d+)/gm)].map((m) => [m[1], Number(m[2])]),
      );
    };
    const store = env.ctx.store;
    const blobIndex = env.ctx.blobs;
    const updateLayers = store.updateLayers.bind(store);
    const recordBlobs = blobIndex.recordBlobs.bind(blobIndex);
    const writes: string[] = [];
    store.updateLayers = (id, updates, opts) => {
      writes.push(`layers ${updates.length}`);
      return updateLayers(id, updates, opts);
    };
    blobIndex.recordBlobs = (blobs) => {
      writes.push(`blobs ${blobs.length}`);
      return recordBlobs(blobs);
    };
    let outcome;
    const log = capturingLogger();
    const before = await calls();
    try {
      outcome = await processor(undefined, log.logger)(job);
    } finally {
      store.updateLayers = updateLayers;
      blobIndex.recordBlobs = recordBlobs;
    }
    const after = await calls();
    const delta = (c: string) => (after[c] ?? 0) - (before[c] ?? 0);
    assert.deepEqual(
      outcome.layers?.map((o) => o.state),
      ['exists', 'exists'],
    );
    assert.equal(outcome.config?.targets[push.request.target], 'exists');
    // One of each per job, not one per blob: both layers, and the config in the blob index.
    assert.deepEqual(writes.sort(), ['blobs 3', 'layers 2']);
    assert.equal(delta('multi'), 0, 'no transaction per blob');
    assert.equal(delta('hincrbyfloat'), 1, 'ferry_blobs_total: one write for both layers');
    // One info line for the job (not one per layer), naming the push (written just after).
    await new Promise((r) => setImmediate(r));
    const target = `${env.registry.host}/lookup/all-present`;
    assert.deepEqual(log.messages(), [
      `push ${push.id}: 2 layers of image 0 in ${target}: 2 already exist, skipping, config exists`,
    ]);
    const state = await env.ctx.store.get(push.id);
    assert.deepEqual(
      state?.layers.map((l) => [l.state, l.digest]),
      layers.map((l) => ['exists', l.digest]),
    );
    // Each layer still gets its own event, in layer order.
    const events = (await env.ctx.store.readEvents(push.id)).map((e) => e.event);
    assert.deepEqual(
      events.flatMap((e) => (e.type === 'layer' ? [[e.index, e.state]] : [])),
      [
        [0, 'exists'],
        [1, 'exists'],
      ],
    );
    for (const digest of [layers[1].digest, config.digest]) {
      assert.deepEqual(await env.ctx.blobs.reposWithBlob(env.registry.host, digest), [
        'lookup/all-present',
      ]);
    }
    assert.deepEqual(await uploadsOf(push.id), []);
  });

  it("a whole image takes its lanes' lookup permits in one call, not one per HEAD, and gives them all back", async () => {
    const { push } = await preparePush('lanes', 2);
    await enqueue(env, push);
    const job = await env.ctx.queues.lookup.getJob(imageLookupJobId(push.id, 0));
    assert.ok(job);
    const sem = env.ctx.lookupSemaphore;
    const heads: string[] = [];
    const grants: number[] = [];
    const tryAcquire = sem.tryAcquire.bind(sem);
    const tryAcquireMany = sem.tryAcquireMany.bind(sem);
    const blobExists = env.client.blobExists.bind(env.client);
    sem.tryAcquire = async (...args) => {
      const p = await tryAcquire(...args);
      grants.push(p ? 1 : 0);
      return p;
    };
    sem.tryAcquireMany = async (...args) => {
      const p = await tryAcquireMany(...args);
      grants.push(p.length);
      return p;
    };
    env.client.blobExists = async (repo, digest, call) => {
      heads.push(digest);
      return blobExists(repo, digest, call);
    };
    try {
      const outcome = await processor(2)(job);
      assert.deepEqual(
        outcome.layers?.map((o) => o.state),
        ['exists', 'exists'],
      );
      assert.equal(heads.length, 3, 'two layers and the config');
      assert.deepEqual(grants, [2], 'two lanes, their permits taken in one call');
      // Given back: every permit of the registry is free again.
      await until(async () => (await sem.count(env.registry.host)) === 0);
    } finally {
      sem.tryAcquire = tryAcquire;
      sem.tryAcquireMany = tryAcquireMany;
      env.client.blobExists = blobExists;
    }
  });

  it('a cancelled push: its lookup may look, but writes nothing and stops', async () => {
    const { push, layers } = await preparePush('cancelled');
    await enqueue(env, push);
    const job = await env.ctx.queues.lookup.getJob(imageLookupJobId(push.id, 0));
    assert.ok(job);
    assert.equal((await env.ctx.store.cancel(push.id)).ok, true);
    const before = await env.ctx.store.get(push.id);
    await assert.rejects(processor()(job), (err: Error) => {
      assert.equal(err.name, 'CancelledError');
      return true;
    });
    // No layer state, no upload hand-off, nothing in the blob index.
    const after = await env.ctx.store.get(push.id);
    assert.deepEqual(after?.layers, before?.layers);
    assert.deepEqual(await uploadsOf(push.id), []);
    assert.deepEqual(await env.ctx.blobs.reposWithBlob(env.registry.host, layers[0].digest), []);
  });
});
