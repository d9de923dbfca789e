import { hostname } from 'node:os';
import { DelayedError, Job, UnrecoverableError, Worker, type Queue } from 'bullmq';
import { checkSourceRoot, type FerryConfig } from '@ferry/config';
import type { Logger } from '@ferry/log';
import {
  createConnection,
  ferryBackoffMs,
  jobVersion,
  JOB_VERSIONS_KNOWN,
  openQueueContext,
  type PushError,
  type QueueContext,
} from '@ferry/queue';
import { JOB_STALLED, registryOfJob, RetryBudget, type RetryDecision } from './budget';
import { CancelledError, errorInfo, isPermanent, PermanentError } from './errors';
import { finishPush } from './finish';
import { createMetricsEndpoint, startHealthServer, type HealthServer } from './health';
import type { MetricSnapshot } from '@ferry/queue';
import { closeWithDeadline, type Closable } from './shutdown';

/** What every role's start() returns. */
export interface RoleHandle {
  close(): Promise<void>;
}

export type Processor<T, R> = (job: Job<T>, token: string | undefined) => Promise<R>;

/** What a role's processor gets besides the queue context. */
export interface ProcessorTools {
  /** The push's retry budget (FERRY_RETRY_BUDGET): ask it before cleaning up after a failure. */
  budget: RetryBudget;
}

/** Stalls never fail a job first: the retry budget does (BullMQ fails a job past maxStalledCount). */
export const UNLIMITED_STALLS = 1_000_000_000;

export interface StartWorkerOptions<T extends { pushId: string }, R> {
  role: string;
  queueName: string;
  concurrency: number;
  config: FerryConfig;
  logger: Logger;
  /** Builds the processor once the queue context is open. */
  processor: (ctx: QueueContext, tools: ProcessorTools) => Processor<T, R>;
  /** Wait before the next try after n transient failures in a row (default: 1 s doubling to 30 s, jittered). */
  backoffMs?: (attempt: number) => number;
  /** More things to close on shutdown (after the worker, before Redis). */
  closables?: Closable[];
  /** Lock duration; jobs renew it while they run. */
  lockDurationMs?: number;
  /** Payload versions this role runs (default JOB_VERSIONS_KNOWN). */
  versions?: readonly number[];
  /**
   * A job of another version waits (delayed, no slot held) this long for a
   * worker that knows it — during a rolling upgrade — then fails with
   * FERRY_JOB_VERSION. Default 10 min.
   */
  unknownVersionGraceMs?: number;
}

/** How long a job of an unknown payload version is put back before looking again. */
const UNKNOWN_VERSION_RETRY_MS = 5_000;

/**
 * Refuses to misread a payload: a job of a version this worker does not know
 * is handed back (delayed) for a worker that does, and fails with a clear
 * error once it has waited `graceMs`.
 */
async function checkVersion(
  job: Job<{ pushId: string }>,
  token: string | undefined,
  known: readonly number[],
  graceMs: number,
): Promise<void> {
  const v = jobVersion(job.data);
  if (known.includes(v)) return;
  const shown = String((job.data as { v?: unknown }).v);
  if (Date.now() - job.timestamp < graceMs && token !== undefined) {
    await job.moveToDelayed(Date.now() + UNKNOWN_VERSION_RETRY_MS, token);
    throw new DelayedError(`payload version ${shown} is unknown here; left to another worker`);
  }
  throw new PermanentError(
    'FERRY_JOB_VERSION',
    `job ${job.id} has payload version ${shown}; this worker knows ${known.join(', ')} — upgrade the workers`,
  );
}

/**
 * Runs a BullMQ worker for one role: its own blocking connection, the queue
 * context (store, queues, lease, semaphore) on another, errors classified for
 * BullMQ (permanent → UnrecoverableError, transient → thrown as is so BullMQ
 * retries with backoff), the push marked failed when its job fails for good,
 * a health server on FERRY_HEALTH_PORT, and shutdown with a deadline.
 */
export async function startWorker<T extends { pushId: string }, R>(
  opts: StartWorkerOptions<T, R>,
): Promise<RoleHandle & { worker: Worker<T, R>; ctx: QueueContext }> {
  const { config, logger } = opts;
  // Every worker role (lookup, upload, coordinator) reads sources: a bad root stops the start.
  checkSourceRoot(config);
  const ctx = await openQueueContext(config, {
    role: 'producer',
    name: `ferry-${opts.role}`,
  });
  const workerConnection = createConnection(config.redis, {
    role: 'worker',
    name: `ferry-${opts.role}-worker`,
  });
  const lockMs = opts.lockDurationMs ?? config.jobLockTimeout * 1000;
  const backoffMs = opts.backoffMs ?? ((n: number) => ferryBackoffMs(n));
  const budget = new RetryBudget(ctx.store, config.retryBudget * 1000, { backoffMs });
  const worker = new Worker<T, R>(opts.queueName, wrapProcessor(opts, ctx, budget), {
    connection: workerConnection,
    prefix: config.queuePrefix,
    concurrency: opts.concurrency,
    // A dead worker's job is taken over once its lock lapses (FERRY_JOB_LOCK_TIMEOUT).
    lockDuration: lockMs,
    stalledInterval: Math.max(1000, Math.floor(lockMs / 2)),
    // Stalls spend the push's retry budget; they are not counted against a limit of their own.
    maxStalledCount: UNLIMITED_STALLS,
    // BullMQ's own retry (used only when the wrapper could not delay the job itself).
    settings: {
      backoffStrategy: (attemptsMade: number) => backoffMs(attemptsMade),
    },
    name: `${hostname()}-${process.pid}-${opts.role}`,
  });
  worker.on('error', (e) => logger.warn(`${opts.role}: worker error: ${e.message}`));
  worker.on('failed', (job, err) => onFailed(opts, ctx, job, err));
  worker.on('stalled', (jobId) => void noteStall(opts, ctx, jobId));
  await worker.waitUntilReady();
  const parts = await closableParts(opts, ctx, worker, workerConnection);
  logger.info(`${opts.role}: worker started (concurrency ${opts.concurrency})`);
  return {
    worker,
    ctx,
    async close() {
      await closeWithDeadline(parts, config.shutdownTimeout * 1000, logger);
    },
  };
}

/** Errors the wrapper has logged and ended the push with (the 'failed' backstop skips them). */
const handled = new WeakSet<object>();

/**
 * Backstop: BullMQ can fail a job without running the processor (a lock lost
 * at completion, a deferred failure). Whatever the path, a job failed for
 * good is logged with its push, job and cause, and ends its push.
 */
function onFailed<T extends { pushId: string }, R>(
  opts: StartWorkerOptions<T, R>,
  ctx: QueueContext,
  job: Job<T> | undefined,
  err: Error,
): void {
  if (!job || err instanceof DelayedError || err?.name === 'DelayedError') return;
  const attempts = job.opts.attempts ?? 1;
  const final =
    err?.name === 'UnrecoverableError' ||
    err instanceof UnrecoverableError ||
    job.attemptsMade >= attempts ||
    Boolean(job.finishedOn);
  const info = errorInfo(err);
  if (!final) {
    if (!handled.has(err)) {
      opts.logger.warn(
        `${opts.role}: job ${job.id} failed, BullMQ retries it: ${info.code}: ${info.message}`,
        {
          pushId: job.data.pushId,
          jobId: job.id,
        },
      );
    }
    return;
  }
  if (!handled.has(err) && !(err instanceof CancelledError)) {
    opts.logger.error(
      `${opts.role}: job ${job.id} failed for good: ${info.code}: ${info.message}`,
      {
        pushId: job.data.pushId,
        jobId: job.id,
        code: info.code,
      },
    );
  }
  void finishPush(ctx, job.data.pushId, { error: info }, opts.logger);
}

/** A stalled job (its worker died or lost its lock) is the push's last transient cause. */
async function noteStall<T extends { pushId: string }, R>(
  opts: StartWorkerOptions<T, R>,
  ctx: QueueContext,
  jobId: string,
): Promise<void> {
  try {
    const queue = (ctx.queues as unknown as Record<string, Queue | undefined>)[opts.queueName];
    const job = queue ? await Job.fromId<T>(queue, jobId) : undefined;
    if (!job?.data?.pushId) return;
    const cause: PushError = {
      code: JOB_STALLED,
      message: `job ${jobId} stalled (its worker died or could not renew its lock; stall ${job.stalledCounter})`,
    };
    await ctx.store.budget(job.data.pushId, cause);
    opts.logger.warn(`${opts.role}: ${cause.message}; it runs again`, {
      pushId: job.data.pushId,
      jobId,
    });
  } catch (e) {
    opts.logger.warn(
      `${opts.role}: could not record the stall of job ${jobId}: ${(e as Error).message}`,
    );
  }
}

/**
 * The processor BullMQ runs: the payload version and the retry budget
 * checked, errors classified — permanent → the push fails at once
 * (UnrecoverableError); transient → the job waits, delayed without holding a
 * slot, with growing waits and a `waiting` event, until the push's retry
 * budget is spent (FERRY_RETRY_BUDGET_SPENT) — and progress recorded when a
 * job finishes.
 */
export function wrapProcessor<T extends { pushId: string }, R>(
  opts: StartWorkerOptions<T, R>,
  ctx: QueueContext,
  budget: RetryBudget,
): Processor<T, R> {
  const { logger } = opts;
  const processor = opts.processor(ctx, { budget });
  const versions = opts.versions ?? JOB_VERSIONS_KNOWN;
  const graceMs = opts.unknownVersionGraceMs ?? 10 * 60_000;
  return async (job: Job<T>, token?: string): Promise<R> => {
    const started = Date.now();
    let result: R;
    try {
      await checkVersion(job, token, versions, graceMs);
      await budget.atStart(job);
      result = await processor(job, token);
    } catch (err) {
      if (err instanceof DelayedError) throw err;
      if (err instanceof CancelledError) {
        logger.info(`${opts.role}: job ${job.id} stopped: ${errorInfo(err).message}`, {
          pushId: job.data.pushId,
          jobId: job.id,
        });
        throw err;
      }
      if (isPermanent(err)) return failForGood(opts, ctx, job, err);
      return retryLater(opts, ctx, budget, job, token, err, Date.now() - started);
    }
    // A job finished: progress. Best effort, not waited for — the push goes on either way.
    void budget.progress(job.data.pushId).catch(() => undefined);
    return result;
  };
}

/** Logs a job's final failure with push, job and cause, ends the push, and fails the job in BullMQ. */
async function failForGood<T extends { pushId: string }, R>(
  opts: StartWorkerOptions<T, R>,
  ctx: QueueContext,
  job: Job<T>,
  err: unknown,
): Promise<never> {
  const info = errorInfo(err);
  opts.logger.error(`${opts.role}: job ${job.id} failed for good: ${info.code}: ${info.message}`, {
    pushId: job.data.pushId,
    jobId: job.id,
    code: info.code,
  });
  await finishPush(ctx, job.data.pushId, { error: info }, opts.logger);
  // BullMQ keeps only the message as failedReason (what Bull Board shows): lead it with the code.
  const out = new UnrecoverableError(`${info.code}: ${info.message}`);
  handled.add(out);
  throw out;
}

/**
 * A transient failure: the job waits (delayed, no slot held) and the push
 * gets a `waiting` event — or, with the budget spent, the push fails. When
 * Redis cannot be reached to decide, the error goes to BullMQ, which retries
 * the job with the same backoff (attempts are unlimited).
 */
async function retryLater<T extends { pushId: string; tries?: number }, R>(
  opts: StartWorkerOptions<T, R>,
  ctx: QueueContext,
  budget: RetryBudget,
  job: Job<T>,
  token: string | undefined,
  err: unknown,
  ms: number,
): Promise<never> {
  const { logger } = opts;
  let decision: RetryDecision;
  try {
    decision = await budget.decide(job, err);
  } catch (e) {
    logger.warn(
      `${opts.role}: job ${job.id} failed (${errorInfo(err).message}) and its budget could not be read (${(e as Error).message}); BullMQ retries it`,
      { pushId: job.data.pushId, jobId: job.id },
    );
    throw err;
  }
  if (!decision.retry) {
    if ('gone' in decision) throw new CancelledError(job.data.pushId, 'expired');
    return failForGood(opts, ctx, job, decision.error);
  }
  const { attempt, nextTryAt, cause } = decision;
  const registry = registryOfJob(job.data, err);
  const budgetLeftSeconds = Math.max(0, Math.floor(decision.budgetLeftMs / 1000));
  logger.warn(
    `${opts.role}: job ${job.id} failed (${cause.code}: ${cause.message}); try ${attempt + 1} in ${decision.delayMs} ms, ${budgetLeftSeconds} s of the retry budget left`,
    { pushId: job.data.pushId, jobId: job.id, registry, ms },
  );
  try {
    await job.updateData({ ...job.data, tries: attempt });
    await job.moveToDelayed(nextTryAt, token);
  } catch (e) {
    logger.warn(
      `${opts.role}: job ${job.id} could not be delayed (${(e as Error).message}); BullMQ retries it`,
      {
        pushId: job.data.pushId,
        jobId: job.id,
      },
    );
    throw err;
  }
  await ctx.store
    .appendEvent(job.data.pushId, {
      type: 'waiting',
      registry,
      attempt,
      nextTryAt: new Date(nextTryAt).toISOString(),
      budgetLeftSeconds,
      cause,
      ...(job.id ? { jobId: job.id } : {}),
    })
    .catch(() => undefined);
  throw new DelayedError(
    `${cause.code}: ${cause.message} (waiting until ${new Date(nextTryAt).toISOString()})`,
  );
}

/** What a role closes on shutdown, in order: the worker, its health server, extras, Redis. */
async function closableParts<T, R>(
  opts: StartWorkerOptions<T & { pushId: string }, R>,
  ctx: QueueContext,
  worker: Worker<T, R>,
  workerConnection: ReturnType<typeof createConnection>,
): Promise<Closable[]> {
  const { config, logger } = opts;
  const parts: Closable[] = [{ name: `${opts.role} worker`, close: () => worker.close() }];
  if (config.healthPort !== undefined) {
    const health = await joinHealthServer(config, {
      role: opts.role,
      ready: async () => (await ctx.connection.ping()) === 'PONG' && worker.isRunning(),
      cluster: () =>
        ctx.metrics.clusterSnapshot([ctx.queues.lookup, ctx.queues.upload, ctx.queues.assemble]),
    });
    logger.info(`${opts.role}: health and metrics on port ${health.port}`);
    parts.push({ name: 'health server', close: health.leave });
  }
  parts.push(...(opts.closables ?? []));
  parts.push({ name: 'queue context', close: () => ctx.close() });
  parts.push({
    name: 'worker connection',
    close: async () => {
      workerConnection.disconnect();
    },
  });
  return parts;
}

/** One role's part of its process' health server. */
interface HealthMember {
  role: string;
  ready: () => Promise<boolean>;
  cluster: () => Promise<MetricSnapshot[]>;
}

interface SharedHealth {
  started: Promise<HealthServer>;
  members: Set<HealthMember>;
}

/** Health servers of this process by host:port: roles run together (`ferry serve`) share one. */
const healthServers = new Map<string, SharedHealth>();

/**
 * Joins (or starts) this process' health server on FERRY_HEALTH_PORT:
 * /readyz is ready when every role in the process is, /metrics serves the
 * process' default metrics, ferry_redis_up and the cluster metrics read
 * through a role still running. The server closes when its last role leaves.
 */
async function joinHealthServer(
  config: FerryConfig,
  member: HealthMember,
): Promise<{ port: number; leave(): Promise<void> }> {
  const port = config.healthPort ?? 0;
  // Port 0 (any free port) is never shared: each caller asked for a server of its own.
  const key = port === 0 ? undefined : `${config.host}:${port}`;
  let shared = key ? healthServers.get(key) : undefined;
  if (!shared) {
    const members = new Set<HealthMember>();
    const endpoint = createMetricsEndpoint({
      prefix: 'ferry_worker_',
      cluster: () => {
        const first = members.values().next();
        return first.done ? Promise.reject(new Error('no role running')) : first.value.cluster();
      },
    });
    const started = startHealthServer({
      port,
      host: config.host,
      ready: async () => {
        if (members.size === 0) return false;
        const all = await Promise.all([...members].map((m) => m.ready().catch(() => false)));
        return all.every(Boolean);
      },
      metrics: () => endpoint.metrics(),
      metricsContentType: endpoint.contentType,
    });
    const created: SharedHealth = { started, members };
    shared = created;
    if (key) {
      healthServers.set(key, created);
      started.catch(() => healthServers.delete(key));
    }
  }
  const server = await shared.started;
  shared.members.add(member);
  const { members } = shared;
  return {
    port: server.port,
    async leave() {
      if (!members.delete(member)) return;
      if (members.size > 0) return;
      if (key && healthServers.get(key)?.members === members) healthServers.delete(key);
      await server.close();
    },
  };
}
