import { UnrecoverableError } from 'bullmq';
import type { QueueContext } from '@ferry/queue';
import { isTransient } from '@ferry/registry-client';

/*
 * The errors a role's jobs end with. Each has a stable FERRY_ code (shown in
 * the push state) and says whether a retry may cure it.
 */

/**
 * A failure a retry cannot cure (bad content, 401 after refresh, 404, digest
 * mismatch). Registry errors are classified by @ferry/registry-client's
 * isTransient — the one list of transient codes; other errors say so with a
 * `transient` flag; any other FERRY_ code (bad source, tampered blob, path
 * outside the root) never heals by retrying; an unknown error is retried.
 */
export function isPermanent(err: unknown): boolean {
  if (err instanceof UnrecoverableError) return true;
  const e = err as { transient?: unknown; code?: unknown } | null;
  if (e && typeof e.transient === 'boolean') return !e.transient;
  if (e && typeof e.code === 'string' && e.code.startsWith('FERRY_')) return !isTransient(e.code);
  return false;
}

/**
 * The stable code and message of any error, for the push state. An error
 * BullMQ hands back with only a message (`FERRY_X: text`, as wrapProcessor
 * writes failedReason) gets its code back from the message.
 */
export function errorInfo(err: unknown): { code: string; message: string } {
  const e = err as { code?: unknown; message?: unknown } | null;
  const message = e && typeof e.message === 'string' ? e.message : String(err);
  if (e && typeof e.code === 'string' && e.code.startsWith('FERRY_')) {
    return { code: e.code, message };
  }
  const m = /^(FERRY_[A-Z0-9_]+): ([\s\S]*)$/.exec(message);
  if (m) return { code: m[1]!, message: m[2]! };
  return { code: 'FERRY_INTERNAL', message };
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

/** This worker's upload lease on a blob was taken over (it stalled, or Redis lost it): a retry looks again. */
export class LeaseLostError extends Error {
  readonly code = 'FERRY_LEASE_LOST';
  readonly transient = true;
  constructor(leaseKey: string) {
    super(`lost the upload lease for ${leaseKey}`);
    this.name = 'LeaseLostError';
  }
}
