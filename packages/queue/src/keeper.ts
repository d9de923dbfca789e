/** Why a lease or permit stopped being held: renewal said no, failed, or did not answer in time. */
export class LostError extends Error {
  /** Another attempt (a retry of the job) may take it again. */
  readonly transient = true;
  constructor(
    message: string,
    readonly code: 'FERRY_LEASE_LOST' | 'FERRY_PERMIT_LOST' = 'FERRY_LEASE_LOST',
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'LostError';
  }
}

export interface KeeperOptions {
  /** Renews every intervalMs. */
  intervalMs: number;
  /**
   * Without a successful renewal for this long the hold counts as lost even if
   * no answer came (a renewal stuck in an offline queue while Redis is gone).
   */
  ttlMs: number;
  /** What is kept, for messages: e.g. "lease reg/sha256:…". */
  what: string;
  /** The code of the LostError (default FERRY_LEASE_LOST). */
  code?: LostError['code'];
  /** Called once, when the hold is lost. */
  onLost?: (err: LostError) => void;
}

/** A running renewal loop: `lost` and `signal` tell the holder to stop. */
export interface Keeper {
  /** True once a renewal failed, returned false, or none succeeded within ttlMs. */
  readonly lost: boolean;
  /** Aborts (with a LostError reason) when the hold is lost; never on stop(). */
  readonly signal: AbortSignal;
  /** Throws the LostError when lost: call it right before a commit. */
  throwIfLost(): void;
  /** Stops renewing (does not release). Idempotent. */
  stop(): void;
}

/**
 * Renews a hold every intervalMs with `renew`. A renewal that throws or
 * returns false counts as loss — never silence — and so does a renewal that
 * has not succeeded for ttlMs. Renewals never overlap.
 */
export function startKeeper(renew: () => Promise<boolean>, opts: KeeperOptions): Keeper {
  const controller = new AbortController();
  let lost = false;
  let stopped = false;
  let inFlight = false;
  let lastOk = Date.now();
  const lose = (err: LostError) => {
    if (lost || stopped) return;
    lost = true;
    clearInterval(timer);
    controller.abort(err);
    opts.onLost?.(err);
  };
  const tick = () => {
    if (stopped || lost) return;
    if (Date.now() - lastOk >= opts.ttlMs) {
      lose(new LostError(`${opts.what}: not renewed within ${opts.ttlMs} ms`, opts.code));
      return;
    }
    if (inFlight) return;
    inFlight = true;
    const started = Date.now();
    renew().then(
      (ok) => {
        inFlight = false;
        if (ok) lastOk = started;
        else lose(new LostError(`${opts.what}: lost (renewal refused)`, opts.code));
      },
      (cause: unknown) => {
        inFlight = false;
        lose(
          new LostError(
            `${opts.what}: renewal failed: ${(cause as Error)?.message ?? String(cause)}`,
            opts.code,
            { cause },
          ),
        );
      },
    );
  };
  const timer = setInterval(tick, Math.max(5, opts.intervalMs));
  timer.unref?.();
  return {
    get lost() {
      return lost;
    },
    signal: controller.signal,
    throwIfLost() {
      if (lost) throw controller.signal.reason as LostError;
    },
    stop() {
      stopped = true;
      clearInterval(timer);
    },
  };
}
