/**
 * One retry budget (issue 9): a push fails when it has gone FERRY_RETRY_BUDGET
 * seconds without progress, never on a count of attempts or stalls. Real
 * redis-server and BullMQ; the processors fail on purpose.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import type { Job } from 'bullmq';
import { loadConfig, type FerryConfig } from '@ferry/config';
import { createLogger } from '@ferry/log';
import {
  openQueueContext,
  QUEUE_NAMES,
  type PushEvent,
  type PushRequest,
  type PushStore,
  type QueueContext,
} from '@ferry/queue';
import { RegistryError } from '@ferry/registry-client';
import { RetryBudget, startWorker, type RoleHandle } from '../src';
import { startRedis, type RedisHandle } from '../../../test/helpers';

const REGISTRY = '127.0.0.1:5999';

interface TestJob {
  pushId: string;
  target: string;
}

const request: PushRequest = {
  source: 'oci:/nowhere/image',
  target: `${REGISTRY}/team/app:1`,
  tags: [],
  format: 'oci',
};

async function until<T>(fn: () => Promise<T | undefined>, what: string, ms = 90_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('runtime: one retry budget per push', function () {
  this.timeout(120_000);
  let redis: RedisHandle;
  const open: { role?: RoleHandle; ctx?: QueueContext }[] = [];

  before(async () => {
    redis = await startRedis();
  });
  afterEach(async () => {
    for (const o of open.splice(0)) {
      await o.role?.close().catch(() => undefined);
      await o.ctx?.close().catch(() => undefined);
    }
  });
  after(async () => {
    await redis?.stop();
  });

  function config(env: Record<string, string> = {}): FerryConfig {
    return loadConfig({
      FERRY_REDIS_URL: redis.url,
      FERRY_QUEUE_PREFIX: `{b${randomBytes(4).toString('hex')}}`,
      FERRY_LOG_LEVEL: 'error',
      FERRY_SHUTDOWN_TIMEOUT: '5',
      ...env,
    });
  }

  async function setUp(
    cfg: FerryConfig,
    processor: (job: Job<TestJob>) => Promise<string>,
    extra: {
      lockDurationMs?: number;
      backoffMs?: (n: number) => number;
      concurrency?: number;
    } = {},
  ) {
    const logger = createLogger({ level: 'error', format: 'json', silent: true });
    const ctx = await openQueueContext(cfg, { role: 'producer', name: 'budget-test' });
    open.push({ ctx });
    const role = await startWorker<TestJob, string>({
      role: 'test',
      queueName: QUEUE_NAMES.lookup,
      concurrency: extra.concurrency ?? 2,
      config: cfg,
      logger,
      lockDurationMs: extra.lockDurationMs,
      backoffMs: extra.backoffMs ?? (() => 20),
      processor: () => processor,
    });
    open.push({ role });
    const pushId = randomUUID();
    assert.ok(await ctx.store.create(pushId, request));
    return { ctx, pushId };
  }

  async function events(ctx: QueueContext, pushId: string): Promise<PushEvent[]> {
    return (await ctx.store.readEvents(pushId)).map((e) => e.event);
  }

  async function finalState(ctx: QueueContext, id: string) {
    const job = await until(async () => {
      const j = await ctx.queues.lookup.getJob(id);
      const s = await j?.getState();
      return s === 'completed' || s === 'failed' ? { state: s, job: j! } : undefined;
    }, `job ${id} to end`);
    return job;
  }

  it('a job failing transiently 6 times (attempts 5, as jobs used to have) then succeeding finishes', async () => {
    let calls = 0;
    const { ctx, pushId } = await setUp(config(), async () => {
      calls++;
      if (calls <= 6) {
        throw new RegistryError('FERRY_REGISTRY_UNAVAILABLE', `HTTP 503 (call ${calls})`, {
          registry: REGISTRY,
          status: 503,
        });
      }
      return 'done';
    });
    // A job queued by the old policy: 5 attempts, exponential backoff.
    await ctx.queues.lookup.add('lookup', { pushId, target: request.target } as never, {
      jobId: `${pushId}-old`,
      attempts: 5,
      backoff: { type: 'exponential', delay: 10 },
    });
    const { state, job } = await finalState(ctx, `${pushId}-old`);
    assert.equal(state, 'completed', `failed: ${job.failedReason}`);
    assert.equal(calls, 7);
    assert.equal(await ctx.store.status(pushId), 'queued', 'the push was not failed');
    const waiting = (await events(ctx, pushId)).filter((e) => e.type === 'waiting');
    assert.deepEqual(
      waiting.map((e) => e.type === 'waiting' && e.attempt),
      [1, 2, 3, 4, 5, 6],
    );
    for (const e of waiting) {
      assert.ok(e.type === 'waiting');
      assert.equal(e.registry, REGISTRY);
      assert.equal(e.cause.code, 'FERRY_REGISTRY_UNAVAILABLE');
      assert.equal(new Date(e.nextTryAt).toISOString(), e.nextTryAt);
      assert.ok(
        e.budgetLeftSeconds > 800 && e.budgetLeftSeconds <= 900,
        String(e.budgetLeftSeconds),
      );
    }
    const state2 = await ctx.store.get(pushId);
    assert.equal(state2?.lastCause?.code, 'FERRY_REGISTRY_UNAVAILABLE');
  });

  it('with the budget spent and no progress the push fails FERRY_RETRY_BUDGET_SPENT naming the last cause', async () => {
    let calls = 0;
    const { ctx, pushId } = await setUp(
      config({ FERRY_RETRY_BUDGET: '1' }),
      async () => {
        calls++;
        throw new RegistryError(
          'FERRY_REGISTRY_UNAVAILABLE',
          `upload to ${REGISTRY}: ECONNREFUSED (call ${calls})`,
          { registry: REGISTRY },
        );
      },
      { backoffMs: () => 200 },
    );
    await ctx.queues.lookup.add('lookup', { pushId, target: request.target } as never, {
      jobId: `${pushId}-a`,
      ...{ attempts: ctx.queues.policy.attempts, backoff: { type: 'ferry', delay: 10 } },
    });
    const { state } = await finalState(ctx, `${pushId}-a`);
    assert.equal(state, 'failed');
    const push = await until(async () => {
      const s = await ctx.store.get(pushId);
      return s?.status === 'failed' ? s : undefined;
    }, 'the push to fail');
    assert.equal(push.error?.code, 'FERRY_RETRY_BUDGET_SPENT');
    assert.match(push.error?.message ?? '', /FERRY_REGISTRY_UNAVAILABLE: upload to .*ECONNREFUSED/);
    assert.ok(calls >= 2, `retried before failing (${calls} calls)`);
    const evs = await events(ctx, pushId);
    assert.ok(evs.some((e) => e.type === 'waiting'));
    // The last event is the failure, after every wait.
    const last = evs[evs.length - 1];
    assert.ok(last.type === 'status' && last.status === 'failed');
  });

  it('a job stalled 5 times (more than the old maxStalledCount of 3) does not fail its push while the budget lasts', async () => {
    const cfg = config();
    let calls = 0;
    const hung: (() => void)[] = [];
    const { ctx, pushId } = await setUp(
      cfg,
      async (job) => {
        calls++;
        if (calls <= 5) {
          // Act like a worker that died: its lock is gone and it never answers.
          await ctx.connection.del(`${cfg.queuePrefix}:${QUEUE_NAMES.lookup}:${job.id}:lock`);
          return new Promise<string>((resolve) => hung.push(() => resolve('late')));
        }
        return 'done';
      },
      { lockDurationMs: 1_000, concurrency: 8 },
    );
    await ctx.queues.lookup.add('lookup', { pushId, target: request.target } as never, {
      jobId: `${pushId}-s`,
      attempts: ctx.queues.policy.attempts,
      backoff: { type: 'ferry', delay: 10 },
    });
    try {
      const { state, job } = await finalState(ctx, `${pushId}-s`);
      assert.equal(state, 'completed', `failed: ${job.failedReason}`);
      assert.equal(calls, 6);
      assert.ok(job.stalledCounter >= 5, `stalled ${job.stalledCounter} times`);
      const push = await ctx.store.get(pushId);
      assert.notEqual(push?.status, 'failed', JSON.stringify(push?.error));
      assert.equal(push?.lastCause?.code, 'FERRY_JOB_STALLED');
    } finally {
      for (const h of hung) h();
    }
  });
});

describe('runtime: RetryBudget.progress writes at most once per interval per push', () => {
  it('a burst of job starts and ends of one push is one write; another push or a later one writes again', async () => {
    const touched: string[] = [];
    const store = {
      touchProgress: async (id: string) => {
        touched.push(id);
        return true;
      },
    } as unknown as PushStore;
    // A 4 s budget: at most one write per 200 ms (5 % of it).
    const budget = new RetryBudget(store, 4_000);
    for (let i = 0; i < 5; i++) await budget.progress('a');
    await budget.progress('b');
    assert.deepEqual(touched, ['a', 'b']);
    await new Promise((r) => setTimeout(r, 250));
    await budget.progress('a');
    assert.deepEqual(touched, ['a', 'b', 'a']);
  });
});
