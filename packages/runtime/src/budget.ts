import type { Job } from 'bullmq';
import { ferryBackoffMs, type PushError, type PushStore } from '@ferry/queue';
import { parseReference } from '@ferry/registry-client';
import { errorInfo, PermanentError } from './errors';

/*
 * One retry budget per push (FERRY_RETRY_BUDGET): a push may go that many
 * seconds without progress — bytes the registry accepted, a job finished —
 * before it fails. Crashes, stalls, resets, 5xx, 429, an unreachable registry
 * and permit timeouts all spend it; no count of attempts or stalls fails a
 * push earlier. The clock is Redis' (PushStore.budget), so workers' clocks
 * need not agree.
 */

/** The push went FERRY_RETRY_BUDGET seconds without progress; the message names the last cause. */
export const RETRY_BUDGET_SPENT = 'FERRY_RETRY_BUDGET_SPENT';
/** The cause recorded when a job stalled (its worker died or could not renew its lock). */
export const JOB_STALLED = 'FERRY_JOB_STALLED';

/** What a transient failure leads to. */
export type RetryDecision =
  | {
      retry: true;
      /** Transient failures of this job in a row, this one included. */
      attempt: number;
      delayMs: number;
      nextTryAt: number;
      budgetLeftMs: number;
      cause: PushError;
    }
  /** The budget is spent: fail the push with `error`. */
  | { retry: false; error: PermanentError; cause: PushError }
  /** The push's state is gone (expired): stop. */
  | { retry: false; gone: true; cause: PushError };

/** The fields of a job the budget reads (a BullMQ Job fits). */
export type BudgetJob = Pick<Job<{ pushId: string; tries?: number }>, 'data' | 'id'> &
  Partial<Pick<Job, 'attemptsMade' | 'stalledCounter' | 'attemptsStarted'>>;

export interface RetryBudgetOptions {
  /** Wait before the next try after `attempt` transient failures in a row (default ferryBackoffMs). */
  backoffMs?: (attempt: number) => number;
}

/** The host[:port] a job talks to: the error's own, else its push target's. */
export function registryOfJob(data: unknown, err?: unknown): string {
  const fromErr = (err as { registry?: unknown } | null)?.registry;
  if (typeof fromErr === 'string' && fromErr) return fromErr;
  const d = data as { target?: unknown; request?: { target?: unknown } } | null;
  const target = typeof d?.target === 'string' ? d.target : d?.request?.target;
  if (typeof target !== 'string') return 'unknown';
  try {
    return parseReference(target).registry;
  } catch {
    return 'unknown';
  }
}

export class RetryBudget {
  private readonly decided = new WeakMap<object, Promise<RetryDecision>>();
  private readonly backoffMs: (attempt: number) => number;
  /** When this process last recorded progress of a push: one write per push per touchEveryMs. */
  private readonly touched = new Map<string, number>();
  private readonly touchEveryMs: number;

  /** @param budgetMs FERRY_RETRY_BUDGET in ms */
  constructor(
    private readonly store: PushStore,
    readonly budgetMs: number,
    opts: RetryBudgetOptions = {},
  ) {
    if (!(budgetMs > 0)) throw new Error(`retry budget must be > 0 ms, got ${budgetMs}`);
    this.backoffMs = opts.backoffMs ?? ((n) => ferryBackoffMs(n));
    this.touchEveryMs = Math.min(1_000, budgetMs / 20);
  }

  /**
   * A job of this push finished, or bytes were accepted: the budget counts
   * again from now. Written at most once per touchEveryMs (≤ 1 s, ≤ 5 % of the
   * budget) per push by this process: a push's jobs start and end in bursts.
   */
  async progress(pushId: string): Promise<void> {
    const now = Date.now();
    const last = this.touched.get(pushId);
    if (last !== undefined && now - last < this.touchEveryMs) return;
    this.touched.set(pushId, now);
    if (this.touched.size > 10_000) {
      for (const [id, at] of this.touched)
        if (now - at >= this.touchEveryMs) this.touched.delete(id);
    }
    await this.store.touchProgress(pushId);
  }

  /** True when this run of the job follows a failure or a stall of an earlier run. */
  static isRetry(job: BudgetJob): boolean {
    return (
      (job.data.tries ?? 0) > 0 || (job.stalledCounter ?? 0) > 0 || (job.attemptsMade ?? 0) > 0
    );
  }

  /**
   * Runs when a job starts. A retried job (after a transient failure or a
   * stall) fails with FERRY_RETRY_BUDGET_SPENT once its push's budget is
   * spent. A job's very first start counts as progress (the push moved on; a
   * push that waited in a long queue has not spent its budget on faults).
   */
  async atStart(job: BudgetJob): Promise<void> {
    const pushId = job.data.pushId;
    if (!RetryBudget.isRetry(job)) {
      // Best effort, not waited for: it only moves the budget's start forward.
      if ((job.attemptsStarted ?? 1) <= 1) void this.progress(pushId).catch(() => undefined);
      return;
    }
    const reading = await this.store.budget(pushId);
    if (!reading || reading.idleMs < this.budgetMs) return;
    const cause: PushError = reading.lastCause ?? {
      code: JOB_STALLED,
      message: `job ${job.id} stalled ${job.stalledCounter ?? 0} times (its worker died or could not renew its lock)`,
    };
    throw this.spentError(reading.idleMs, cause);
  }

  /**
   * Decides on a transient failure: records it as the push's last cause and
   * either retries after a growing wait (never past the budget's end by much,
   * so a spent budget is noticed promptly) or fails with
   * FERRY_RETRY_BUDGET_SPENT. The decision is made once per error object:
   * a role may ask first (to clean up what a final failure leaves behind)
   * and the worker wrapper then gets the same answer.
   */
  decide(job: BudgetJob, err: unknown): Promise<RetryDecision> {
    const key = typeof err === 'object' && err !== null ? err : undefined;
    const known = key ? this.decided.get(key) : undefined;
    if (known) return known;
    const p = this.decideNow(job, err);
    if (key) this.decided.set(key, p);
    return p;
  }

  private async decideNow(job: BudgetJob, err: unknown): Promise<RetryDecision> {
    const cause = errorInfo(err);
    const reading = await this.store.budget(job.data.pushId, cause);
    if (!reading) return { retry: false, gone: true, cause };
    const left = this.budgetMs - reading.idleMs;
    if (left <= 0) return { retry: false, error: this.spentError(reading.idleMs, cause), cause };
    const attempt = (job.data.tries ?? 0) + 1;
    // Try once more just after the budget's end rather than much later: then it fails at once.
    const delayMs = Math.max(0, Math.min(this.backoffMs(attempt), left + 250));
    return {
      retry: true,
      attempt,
      delayMs,
      nextTryAt: Date.now() + delayMs,
      budgetLeftMs: left,
      cause,
    };
  }

  private spentError(idleMs: number, cause: PushError): PermanentError {
    return new PermanentError(
      RETRY_BUDGET_SPENT,
      `no progress for ${Math.round(idleMs / 1000)} s (FERRY_RETRY_BUDGET is ${Math.round(
        this.budgetMs / 1000,
      )} s); last cause: ${cause.code}: ${cause.message}`,
    );
  }
}
