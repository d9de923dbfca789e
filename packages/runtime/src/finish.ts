import type { Logger } from '@ferry/log';
import type { PushError, PushResult, QueueContext, TargetResult } from '@ferry/queue';

export interface FinishOptions {
  /** First wait between tries; doubles up to maxDelayMs. */
  delayMs?: number;
  maxDelayMs?: number;
  /** Give up after this long (the push's state then expires with FERRY_STATE_TTL). Default 1 h. */
  giveUpMs?: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

/**
 * Records the end of a push, trying again until Redis takes it: a push whose
 * last job has ended must never stay `running` because Redis was down at that
 * moment. Returns true once recorded (or the push had already ended).
 */
export async function finishPush(
  ctx: Pick<QueueContext, 'store'>,
  pushId: string,
  outcome: PushResult | { error: PushError; targets?: TargetResult[] },
  logger?: Logger,
  opts: FinishOptions = {},
): Promise<boolean> {
  const giveUpAt = Date.now() + (opts.giveUpMs ?? 3600_000);
  let delay = opts.delayMs ?? 250;
  for (let attempt = 1; ; attempt++) {
    try {
      await ctx.store.finish(pushId, outcome);
      if (attempt > 1) logger?.info(`push ${pushId}: end recorded after ${attempt} tries`);
      return true;
    } catch (err) {
      if (Date.now() >= giveUpAt) {
        logger?.error(`push ${pushId}: could not record its end: ${(err as Error).message}`);
        return false;
      }
      if (attempt === 1) {
        logger?.warn(
          `push ${pushId}: recording its end failed (${(err as Error).message}); retrying until Redis answers`,
        );
      }
      await sleep(delay);
      delay = Math.min(delay * 2, opts.maxDelayMs ?? 5_000);
    }
  }
}
