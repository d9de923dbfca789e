import type { Logger } from '@ferry/log';

export interface Closable {
  name: string;
  close(): Promise<unknown>;
}

/**
 * Closes each part in order, giving the whole at most `timeoutMs`. BullMQ's
 * worker.close() can hang when Redis is gone, so a part that overruns is
 * abandoned (logged) rather than waited on forever.
 */
export async function closeWithDeadline(
  parts: Closable[],
  timeoutMs: number,
  logger?: Logger,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let clean = true;
  for (const part of parts) {
    const left = Math.max(0, deadline - Date.now());
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), left);
    });
    try {
      const r = await Promise.race([part.close().then(() => 'ok' as const), timedOut]);
      if (r === 'timeout') {
        clean = false;
        logger?.warn(`shutdown: ${part.name} did not stop within the deadline; abandoning it`);
      }
    } catch (e) {
      clean = false;
      logger?.warn(`shutdown: ${part.name} failed to close: ${(e as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  }
  return clean;
}

/** Runs `stop` once on SIGTERM or SIGINT; a second signal exits at once. */
export function onTermination(
  stop: (signal: string) => Promise<void>,
  logger?: Logger,
): () => void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger?.warn(`second ${signal}: exiting now`);
      process.exit(130);
    }
    stopping = true;
    logger?.info(`${signal}: shutting down`);
    stop(signal).then(
      () => process.exit(0),
      (e: Error) => {
        logger?.error(`shutdown failed: ${e.message}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
  return () => {
    process.off('SIGTERM', handler);
    process.off('SIGINT', handler);
  };
}
