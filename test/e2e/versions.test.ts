/**
 * Job payload versions (issue 8): a worker runs version-1 and version-2
 * payloads side by side, and never misreads an unknown one — a `v: 99` job is
 * handed back (delayed) within the grace period and fails with
 * FERRY_JOB_VERSION after it, its processor never run. Two real pushes run
 * side by side through the queues, one written as the previous release wrote
 * it (version-1 payloads, a request with no pin), one as version 2: both give
 * the images skopeo reads back.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { loadConfig } from '@ferry/config';
import { createLogger } from '@ferry/log';
import { randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  assembleJobId,
  enqueuePush,
  JOB_NAMES,
  lookupJobId,
  QUEUE_NAMES,
  type LookupJob,
  type PushRequest,
} from '@ferry/queue';
import { startWorker } from '@ferry/runtime';
import { skopeoInspect, startRedis, type RedisHandle } from '../helpers';
import { createPush, layersOf, until } from '../../services/upload-worker/test/helpers';
import { copyHello, pushAndWait, startLocalStack, waitForPush, type LocalStack } from './stack';

describe('e2e: job payload versions side by side', function () {
  this.timeout(120_000);
  let redis: RedisHandle;

  before(async () => {
    redis = await startRedis();
  });
  after(async () => {
    await redis?.stop();
  });

  it('v1 and v2 run; v99 is delayed within the grace period, then fails FERRY_JOB_VERSION unread', async () => {
    const config = loadConfig({
      FERRY_REDIS_URL: redis.url,
      FERRY_QUEUE_PREFIX: `{v${randomBytes(4).toString('hex')}}`,
      FERRY_DOCKER_CONFIG: '/nonexistent/ferry-test/config.json',
      FERRY_SHUTDOWN_TIMEOUT: '5',
    });
    const seen: unknown[] = [];
    const handle = await startWorker<LookupJob, string>({
      role: 'lookup',
      queueName: QUEUE_NAMES.lookup,
      concurrency: 1,
      config,
      logger: createLogger({ silent: true }),
      unknownVersionGraceMs: 1_500,
      processor: () => async (job) => {
        seen.push(job.data.v ?? 1);
        return 'ran';
      },
    });
    try {
      const q = handle.ctx.queues.lookup;
      const base = {
        pushId: 'p1',
        imageIndex: 0,
        layerIndex: 0,
        source: 'x',
        target: 'y',
        gzipLevel: 1,
      };
      const future = await q.add('lookup', { ...base, v: 99 } as unknown as LookupJob, {
        jobId: 'v99',
        attempts: 5,
      });
      await until(async () => (await future.getState()) === 'delayed');
      const v1 = await q.add('lookup', base as unknown as LookupJob, { jobId: 'v1' });
      const v2 = await q.add('lookup', { ...base, v: 2 } as unknown as LookupJob, { jobId: 'v2' });
      await until(async () => (await v1.getState()) === 'completed');
      await until(async () => (await v2.getState()) === 'completed');
      // Within the grace period the unknown job was handed back, not run and not failed.
      assert.deepEqual(seen.sort(), [1, 2]);
      await until(async () => (await future.getState()) === 'failed', 100);
      const failed = await q.getJob('v99');
      // (runtime rethrows its PermanentError as is, so the code is not in failedReason; the message names the version)
      assert.match(failed?.failedReason ?? '', /payload version 99/);
      // One try only: a permanent error, never retried, and never given to the processor.
      assert.equal(failed?.attemptsMade, 1);
      assert.deepEqual(seen.sort(), [1, 2]);
    } finally {
      await handle.close();
    }
  });
});

describe('e2e: a version-1 push and a version-2 push side by side', function () {
  this.timeout(180_000);
  let local: LocalStack;

  before(async () => {
    local = await startLocalStack('versions-push');
  });
  after(async () => {
    await local?.stop();
  });

  /**
   * Enqueues a push as the previous release did: the push state's request has no
   * pin, the assemble job no `v` and no gzip level, each lookup job no `v`, platform,
   * options or pin.
   */
  async function enqueueVersion1(source: string, target: string): Promise<string> {
    const { stack } = local;
    const request: PushRequest = { source, target, tags: [], format: 'oci' };
    const layers = (await layersOf(stack, request)).length;
    const id = randomUUID();
    assert.ok(await stack.ctx.store.create(id, request, { layout: { images: [{ layers }] } }));
    const policy = stack.ctx.queues.policy;
    const retry = {
      attempts: policy.attempts,
      backoff: { type: 'exponential', delay: policy.backoffMs },
    };
    await stack.ctx.queues.flow.add({
      name: JOB_NAMES.assemble,
      queueName: QUEUE_NAMES.assemble,
      data: { pushId: id, request } as never,
      opts: { jobId: assembleJobId(id), ...retry },
      children: Array.from({ length: layers }, (_, l) => ({
        name: JOB_NAMES.lookup,
        queueName: QUEUE_NAMES.lookup,
        data: {
          pushId: id,
          imageIndex: 0,
          layerIndex: l,
          source,
          target,
          gzipLevel: stack.config.gzipLevel,
        } as never,
        opts: { jobId: lookupJobId(id, 0, l), ...retry, failParentOnFailure: true },
      })),
    });
    return id;
  }

  /** What skopeo reads back: the manifest digest and the layer digests. */
  async function readBack(ref: string): Promise<{ digest: string; layers: string[] }> {
    const info = await skopeoInspect(`docker://${ref}`);
    return { digest: info.Digest, layers: info.Layers };
  }

  it('both succeed with the digests skopeo reads; the version-1 image equals a version-2 push of it', async () => {
    const { stack, registry, root } = local;
    for (const d of ['one', 'two']) mkdirSync(join(root, d));
    const one = copyHello(join(root, 'one'));
    const two = copyHello(join(root, 'two'));
    mkdirSync(join(two, 'layers', '03-more'), { recursive: true });
    writeFileSync(join(two, 'layers', '03-more', 'more.txt'), 'only in the version-2 push\n');
    const target1 = `${registry.host}/versions/one:1`;
    const target2 = `${registry.host}/versions/two:1`;

    const v1 = await enqueueVersion1(`dir:${one}`, target1);
    const p2 = await createPush(stack, `dir:${two}`, target2);
    await enqueuePush(stack.ctx.queues, p2.id, p2.request, p2.layout, {
      gzipLevel: stack.config.gzipLevel,
    });
    const [s1, s2] = await Promise.all([waitForPush(stack.ctx, v1), waitForPush(stack.ctx, p2.id)]);
    assert.equal(s1.status, 'succeeded', JSON.stringify(s1.error));
    assert.equal(s2.status, 'succeeded', JSON.stringify(s2.error));

    // The version-1 jobs ran as they were written (no `v` added to them).
    for (let l = 0; l < s1.layers.length; l++) {
      const job = await stack.ctx.queues.lookup.getJob(lookupJobId(v1, 0, l));
      assert.equal(await job?.getState(), 'completed');
      assert.equal((job?.data as { v?: number }).v, undefined);
    }
    const parent = await stack.ctx.queues.assemble.getJob(assembleJobId(v1));
    assert.equal((parent?.data as { v?: number }).v, undefined);
    assert.equal(parent?.returnvalue?.manifest.digest, s1.manifest?.digest);

    for (const [state, target] of [
      [s1, target1],
      [s2, target2],
    ] as const) {
      const back = await readBack(target);
      assert.equal(back.digest, state.manifest?.digest);
      assert.deepEqual(
        back.layers,
        state.layers.map((l) => l.digest),
      );
    }
    assert.equal(s1.layers.length, 2);
    assert.equal(s2.layers.length, 3);
    // The same source pushed the current way gives the very same image.
    const again = await pushAndWait(stack, {
      source: `dir:${one}`,
      target: `${registry.host}/versions/one-again:1`,
    });
    assert.equal(again.status, 'succeeded', JSON.stringify(again.error));
    assert.equal(again.manifest?.digest, s1.manifest?.digest);
  });
});
