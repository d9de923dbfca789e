import { hostname } from 'node:os';
import { DelayedError, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { FerryConfig } from '@ferry/config';
import type { Logger } from '@ferry/log';
import { createConnection, openQueueContext, type QueueContext } from '@ferry/queue';
import { startHealthServer } from './health';
import { closeWithDeadline, type Closable } from './shutdown';

/** What every role's start() returns. */
export interface RoleHandle {
  close(): Promise<void>;
}

/** A failure a retry cannot cure (bad content, 401 after refresh, 404, digest mismatch). */
export function isPermanent(err: unknown): boolean {
  if (err instanceof UnrecoverableError) return true;
  const e = err as { transient?: unknown; code?: unknown } | null;
  if (e && typeof e.transient === 'boolean') return !e.transient;
  // Source errors (bad layout, tampered blob, path outside the root) never heal by retrying.
  if (e && typeof e.code === 'string' && e.code.startsWith('FERRY_')) {
    return ![
      'FERRY_REGISTRY_UNAVAILABLE',
      'FERRY_RATE_LIMITED',
      'FERRY_UPLOAD_SESSION_LOST',
    ].includes(e.code);
  }
  return false;
}

/** The stable code and message of any error, for the push state. */
export function errorInfo(err: unknown): { code: string; message: string } {
  const e = err as { code?: unknown; message?: unknown } | null;
  const code =
    e && typeof e.code === 'string' && e.code.startsWith('FERRY_') ? e.code : 'FERRY_INTERNAL';
  const message = e && typeof e.message === 'string' ? e.message : String(err);
  return { code, message };
}

/** A failure no retry can cure, with its stable code (shown in the push state). */
export class PermanentError extends UnrecoverableError {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'PermanentError';
  }
}

/** Thrown by a job of a push that was cancelled or has already ended: stops the job without retries. */
export class CancelledError extends UnrecoverableError {
  readonly code: string;
  constructor(pushId: string, status: string = 'cancelled') {
    super(
      status === 'cancelled'
        ? `push ${pushId} was cancelled`
        : `push ${pushId} has ended (${status}); its remaining jobs stop`,
    );
    this.code = status === 'cancelled' ? 'FERRY_CANCELLED' : 'FERRY_PUSH_ENDED';
    this.name = 'CancelledError';
  }
}

/** Throws CancelledError unless the push is still queued or running (cancelled, failed, expired: stop). */
export async function assertActive(ctx: QueueContext, pushId: string): Promise<void> {
  const status = await ctx.store.status(pushId);
  if (status === 'queued' || status === 'running') return;
  throw new CancelledError(pushId, status ?? 'cancelled');
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
  const processor = opts.processor(ctx);
  const wrapped = async (job: Job<T>, token?: string): Promise<R> => {
    const started = Date.now();
    try {
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
        await ctx.store.finish(job.data.pushId, { error: info }).catch(() => undefined);
      } else {
        logger.warn(
          `${opts.role}: job ${job.id} attempt ${job.attemptsMade + 1}/${attempts} failed, will retry: ${info.code}: ${info.message}`,
          { pushId: job.data.pushId, ms: Date.now() - started },
        );
      }
      if (permanent && !(err instanceof UnrecoverableError)) {
        const u = new UnrecoverableError(`${info.code}: ${info.message}`);
        throw u;
      }
      throw err;
    }
  };
  const workerConnection = createConnection(config.redisUrl, {
    role: 'worker',
    name: `ferry-${opts.role}-worker`,
  });
  const worker = new Worker<T, R>(opts.queueName, wrapped, {
    connection: workerConnection,
    prefix: config.queuePrefix,
    concurrency: opts.concurrency,
    // A dead worker's job is taken over once its lock lapses (FERRY_JOB_LOCK_TIMEOUT).
    lockDuration: opts.lockDurationMs ?? config.jobLockTimeout * 1000,
    stalledInterval: Math.max(
      1000,
      Math.floor((opts.lockDurationMs ?? config.jobLockTimeout * 1000) / 2),
    ),
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
    void ctx.store.finish(job.data.pushId, { error: errorInfo(err) }).catch(() => undefined);
  });
  await worker.waitUntilReady();

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
  logger.info(`${opts.role}: worker started (concurrency ${opts.concurrency})`);
  return {
    worker,
    ctx,
    async close() {
      await closeWithDeadline(parts, config.shutdownTimeout * 1000, logger);
    },
  };
}
