import { hostname } from 'node:os';
import { DelayedError, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { FerryConfig } from '@ferry/config';
import type { Logger } from '@ferry/log';
import {
  createConnection,
  jobVersion,
  JOB_VERSIONS_KNOWN,
  openQueueContext,
  type QueueContext,
} from '@ferry/queue';
import { CancelledError, errorInfo, isPermanent, PermanentError } from './errors';
import { finishPush } from './finish';
import { startHealthServer } from './health';
import { closeWithDeadline, type Closable } from './shutdown';

/** What every role's start() returns. */
export interface RoleHandle {
  close(): Promise<void>;
}

export type Processor<T, R> = (job: Job<T>, token: string | undefined) => Promise<R>;

export interface StartWorkerOptions<T extends { pushId: string }, R> {
  role: string;
  queueName: string;
  concurrency: number;
  config: FerryConfig;
  logger: Logger;
  /** Builds the processor once the queue context is open. */
  processor: (ctx: QueueContext) => Processor<T, R>;
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
  const ctx = await openQueueContext(config, {
    role: 'producer',
    name: `ferry-${opts.role}`,
  });
  const workerConnection = createConnection(config.redisUrl, {
    role: 'worker',
    name: `ferry-${opts.role}-worker`,
  });
  const lockMs = opts.lockDurationMs ?? config.jobLockTimeout * 1000;
  const worker = new Worker<T, R>(opts.queueName, wrapProcessor(opts, ctx), {
    connection: workerConnection,
    prefix: config.queuePrefix,
    concurrency: opts.concurrency,
    // A dead worker's job is taken over once its lock lapses (FERRY_JOB_LOCK_TIMEOUT).
    lockDuration: lockMs,
    stalledInterval: Math.max(1000, Math.floor(lockMs / 2)),
    maxStalledCount: 3,
    name: `${hostname()}-${process.pid}-${opts.role}`,
  });
  worker.on('error', (e) => logger.warn(`${opts.role}: worker error: ${e.message}`));
  // Backstop: BullMQ can fail a job without running the processor (stalled too often, a
  // lock lost at completion). Whatever the path, a job failed for good ends its push.
  worker.on('failed', (job, err) => {
    if (!job || err instanceof DelayedError) return;
    const attempts = job.opts.attempts ?? 1;
    const final =
      err?.name === 'UnrecoverableError' ||
      err instanceof UnrecoverableError ||
      job.attemptsMade >= attempts ||
      Boolean(job.finishedOn);
    if (!final) return;
    void finishPush(ctx, job.data.pushId, { error: errorInfo(err) }, logger);
  });
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

/**
 * The processor BullMQ runs: the payload version checked, errors classified
 * (permanent → UnrecoverableError, transient → thrown as is so BullMQ retries
 * with backoff), and the push marked failed when its job fails for good.
 */
function wrapProcessor<T extends { pushId: string }, R>(
  opts: StartWorkerOptions<T, R>,
  ctx: QueueContext,
): Processor<T, R> {
  const { logger } = opts;
  const processor = opts.processor(ctx);
  const versions = opts.versions ?? JOB_VERSIONS_KNOWN;
  const graceMs = opts.unknownVersionGraceMs ?? 10 * 60_000;
  return async (job: Job<T>, token?: string): Promise<R> => {
    const started = Date.now();
    try {
      await checkVersion(job, token, versions, graceMs);
      return await processor(job, token);
    } catch (err) {
      if (err instanceof DelayedError) throw err;
      const permanent = isPermanent(err);
      const attempts = job.opts.attempts ?? 1;
      const final = permanent || job.attemptsMade + 1 >= attempts;
      const info = errorInfo(err);
      if (err instanceof CancelledError) {
        logger.info(`${opts.role}: job ${job.id} stopped: ${info.message}`);
      } else if (final) {
        logger.error(`${opts.role}: job ${job.id} failed for good: ${info.code}: ${info.message}`, {
          pushId: job.data.pushId,
        });
        await finishPush(ctx, job.data.pushId, { error: info }, logger);
      } else {
        logger.warn(
          `${opts.role}: job ${job.id} attempt ${job.attemptsMade + 1}/${attempts} failed, will retry: ${info.code}: ${info.message}`,
          { pushId: job.data.pushId, ms: Date.now() - started },
        );
      }
      // BullMQ keeps only the message as failedReason (what Bull Board shows): lead it with the code.
      if (permanent && !(err instanceof CancelledError)) {
        throw new UnrecoverableError(`${info.code}: ${info.message}`);
      }
      throw err;
    }
  };
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
    const health = await startHealthServer({
      port: config.healthPort,
      host: config.host,
      ready: async () => (await ctx.connection.ping()) === 'PONG' && worker.isRunning(),
    });
    logger.info(`${opts.role}: health on port ${health.port}`);
    parts.push({ name: 'health server', close: health.close });
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
