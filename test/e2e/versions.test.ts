/**
 * Job payload versions (issue 8): a worker runs version-1 and version-2
 * payloads side by side, and never misreads an unknown one — a `v: 99` job is
 * handed back (delayed) within the grace period and fails with
 * FERRY_JOB_VERSION after it, its processor never run.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { loadConfig } from '@ferry/config';
import { createLogger } from '@ferry/log';
import { QUEUE_NAMES, type LookupJob } from '@ferry/queue';
import { startWorker } from '@ferry/runtime';
import { startRedis, type RedisHandle } from '../helpers';
import { until } from '../../services/upload-worker/test/helpers';

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
      const v2 = await q.add('lookup', { ...base, v: 2 } as LookupJob, { jobId: 'v2' });
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
