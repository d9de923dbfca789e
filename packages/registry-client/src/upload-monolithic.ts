/**
 * The monolithic upload: one PUT with the whole body. It needs the digest
 * before the body goes out, so a source that states none is read twice (hash,
 * then send), and a source that states one is checked against its bytes.
 */
import type { Readable } from 'node:stream';
import type { BlobStream } from './digest';
import { classifyError, ErrorCodes, RegistryError } from './errors';
import type { Upload } from './upload';

const DONE_TIMEOUT_MS = 60_000;

/** What ended one attempt of the upload loop. */
export type Outcome =
  | { kind: 'done'; digest: string; size: number }
  /** Ask the registry its offset, then reopen the source there. */
  | { kind: 'resume' }
  /** this.offset already holds the registry's offset: reopen the source there. */
  | { kind: 'reopen' }
  | { kind: 'restart'; why: string };

/** Thrown inside an attempt: the session is of no more use, open a fresh one. */
export class RestartSignal extends Error {}

/** Awaits p, or fails naming who did not answer. */
export function settle<T>(p: Promise<T>, ms: number, who: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_r, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new RegistryError(
            ErrorCodes.INVALID_ARGUMENT,
            `${who} did not report its digest (BlobStream.done) within ${ms / 1000} s of its end`,
          ),
        ),
      ms,
    );
    timer.unref();
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/** First pass when the source states no digest: read everything, hash only, then reopen. */
async function hashFirst(up: Upload, bs: BlobStream): Promise<{ digest: string; bs: BlobStream }> {
  (bs.stream as Readable).resume();
  const first = await bs.done; // the whole stream is read here, so done settles
  up.checkProduced(first.digest, first.size);
  const again = await up.source.open(0);
  again.done.catch(() => undefined);
  return { digest: first.digest, bs: again };
}

/** After a rejected PUT of a source that states its digest: did the source lie? Then no fresh session helps. */
async function checkStatedDigest(up: Upload, bs: BlobStream): Promise<void> {
  const produced = await Promise.race([
    bs.done.catch(() => undefined),
    new Promise<undefined>((r) => setTimeout(() => r(undefined), 2000).unref()),
  ]);
  if (produced && produced.digest !== up.source.digest) {
    throw new RegistryError(
      ErrorCodes.DIGEST_MISMATCH,
      `${up.what}: the source states ${up.source.digest} but its bytes hash to ${produced.digest}`,
      { registry: up.reg },
    );
  }
}

export async function monolithicUpload(up: Upload, opened: BlobStream): Promise<Outcome> {
  const size = up.source.size!;
  if (up.offset !== 0) throw new RestartSignal('a monolithic upload cannot resume');
  let bs = opened;
  let digest = up.source.digest;
  if (digest === undefined) ({ digest, bs } = await hashFirst(up, bs));
  const counter = up.counted(bs, 0, true);
  try {
    const out = await up.put(digest, size, counter, { 'content-length': String(size) });
    const produced = await settle(bs.done, DONE_TIMEOUT_MS, 'the blob source');
    up.checkProduced(produced.digest, produced.size);
    if (produced.digest !== digest) {
      throw new RegistryError(
        ErrorCodes.DIGEST_MISMATCH,
        `${up.what}: the source's bytes changed between passes (${digest} then ${produced.digest})`,
        { registry: up.reg },
      );
    }
    return out;
  } catch (e) {
    const err = classifyError(e, up.reg, up.what);
    const rejected =
      e instanceof RestartSignal ||
      (err instanceof RegistryError && err.code === ErrorCodes.DIGEST_MISMATCH);
    if (rejected && up.source.digest) await checkStatedDigest(up, bs);
    if (e instanceof RestartSignal) throw e;
    if (err instanceof RegistryError && err.transient && up.sourceError === undefined) {
      // A monolithic PUT has no offset to resume from: back off, then a fresh session.
      const n = up.countFailure(err);
      await up.rq.retry.backoff(up.reg, up.what, n - 1, err, up.call);
      throw new RestartSignal(err.message);
    }
    throw e;
  } finally {
    counter.destroy();
  }
}
