/**
 * Retry policy: which failures are retried, how long to wait (jittered
 * exponential backoff, or the registry's Retry-After), and the wait itself —
 * during which the caller's permit is given back and its AbortSignal heard.
 * (go-containerregistry: transport/retry.go.)
 */
import type { Logger } from '@ferry/log';
import { ErrorCodes, RegistryError } from './errors';
import type { CallOptions, RetryInfo } from './types';

export interface RetryPolicyOptions {
  attempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  maxRetryAfterMs?: number;
  log?: Logger;
  onRetry?: (info: RetryInfo) => void;
}

export function abortError(): RegistryError {
  return new RegistryError(ErrorCodes.ABORTED, 'operation aborted');
}

/** Retry-After: seconds or an HTTP date → ms; undefined if absent or unusable. */
export function parseRetryAfter(v: string | undefined, now = Date.now()): number | undefined {
  if (!v) return undefined;
  const t = v.trim();
  if (/^\d+$/.test(t)) return Number(t) * 1000;
  const d = Date.parse(t);
  if (Number.isNaN(d)) return undefined;
  return Math.max(0, d - now);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError());
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(abortError());
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Waits for work that others may share (a token fetch, a ping): an abort of
 * this caller's signal stops only this caller's wait; the work goes on.
 */
export function waitFor<T>(work: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return work;
  if (signal.aborted) return Promise.reject(abortError());
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortError());
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e as Error);
      },
    );
  });
}

export class RetryPolicy {
  readonly attempts: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly maxRetryAfterMs: number;
  private readonly log?: Logger;
  private readonly onRetry?: (info: RetryInfo) => void;

  constructor(opts: RetryPolicyOptions = {}) {
    const attempts = opts.attempts ?? 5;
    if (!Number.isInteger(attempts) || attempts < 1) {
      throw new RegistryError(
        ErrorCodes.INVALID_ARGUMENT,
        `retry.attempts must be an integer ≥ 1, got ${attempts}`,
      );
    }
    this.attempts = attempts;
    this.baseDelayMs = opts.baseDelayMs ?? 250;
    this.maxDelayMs = opts.maxDelayMs ?? 15_000;
    this.maxRetryAfterMs = opts.maxRetryAfterMs ?? 60_000;
    this.log = opts.log;
    this.onRetry = opts.onRetry;
  }

  private delayMs(attempt: number, err: RegistryError): number {
    if (err.retryAfterMs !== undefined) return err.retryAfterMs;
    const exp = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** attempt);
    return Math.round(exp / 2 + Math.random() * (exp / 2));
  }

  /**
   * Sleeps before retry number attempt+1, or rethrows when the error is
   * permanent, the attempts are spent, or the registry asks for a longer wait
   * than maxRetryAfterMs.
   */
  async backoff(
    reg: string,
    what: string,
    attempt: number,
    err: unknown,
    call: CallOptions = {},
  ): Promise<void> {
    if (!(err instanceof RegistryError) || !err.transient || attempt + 1 >= this.attempts)
      throw err;
    if (err.retryAfterMs !== undefined && err.retryAfterMs > this.maxRetryAfterMs) throw err;
    const delayMs = this.delayMs(attempt, err);
    this.log?.warn('registry request failed; retrying', {
      registry: reg,
      what,
      attempt: attempt + 1,
      delayMs,
      code: err.code,
      status: err.status,
    });
    await this.pause(delayMs, call, () =>
      this.onRetry?.({ registry: reg, what, attempt: attempt + 1, delayMs, error: err }),
    );
  }

  /**
   * Waits ms without holding the caller's permit: release, sleep (abortable),
   * acquire. An abort during the sleep fails with FERRY_ABORTED, permit not held.
   */
  async pause(ms: number, call: CallOptions, beforeSleep?: () => void): Promise<void> {
    if (call.signal?.aborted) throw abortError();
    if (call.permit) await call.permit.release();
    beforeSleep?.();
    await sleep(ms, call.signal);
    if (call.permit) await call.permit.acquire();
    if (call.signal?.aborted) throw abortError();
  }
}
