/**
 * The pass-through step with verification: raw bytes are the blob as stored.
 * They are hashed (and gunzipped to compute the diffID when the blob is
 * gzip), and the newest chunk is held back until the end, so a blob whose
 * digest, size or diffID does not match what the source states fails the
 * stream before the reader gets its last byte.
 *
 * Gunzipping is most of the CPU a pushed gzip layer costs (profiled: ~1.7
 * CPU-s for 400 MB of layers, more than the registry spends taking them). It
 * runs on the diffID worker thread (diffid-worker.ts: its output buffers would
 * otherwise make V8 collect the main heap again and again). A gzip blob's
 * diffID is a function of its bytes, so it is computed once per blob per
 * process — see VerifiedDiffIds for the rule.
 */
import { SourceError, SourceErrorCodes } from './errors';
import { WorkerDiffIdTap } from './diffid-worker';
import { ZLIB_INPUT_QUEUE, hex, type PipelineOptions } from './pipeline';
import type { PipelineCore } from './pipeline-core';

type Expect = NonNullable<PipelineOptions['expect']>;
type Content = 'gzip' | 'tar' | 'opaque';

/** Gunzips the blob beside the stream (on the diffID worker), only to hash the uncompressed bytes. */
class DiffIdTap {
  diffId = '';
  size = 0;
  error: Error | undefined;
  ended = false;
  private queued = 0;
  private readonly tap: WorkerDiffIdTap;
  constructor(core: PipelineCore, onEnd: () => void) {
    this.tap = new WorkerDiffIdTap({
      onAck: (n) => {
        this.queued -= n;
        if (core.zBlocked && this.queued <= ZLIB_INPUT_QUEUE) {
          core.zBlocked = false;
          core.updatePause();
        }
      },
      onResult: (r) => {
        if ('gzipError' in r) {
          // Keep hashing: a corrupt blob is reported as a digest mismatch first.
          this.error = r.gzipError;
          core.zBlocked = false;
          core.updatePause();
        } else {
          this.diffId = r.diffId;
          this.size = r.size;
        }
        this.ended = true;
        onEnd();
      },
      onFailure: (e) => core.fail(e),
    });
    core.zstream = this.tap;
  }

  /** Returns false when more than ZLIB_INPUT_QUEUE bytes wait for the worker's gunzip (pause the source). */
  write(c: Buffer): boolean {
    this.queued += c.length;
    this.tap.write(c);
    return this.queued <= ZLIB_INPUT_QUEUE;
  }

  end(): void {
    this.tap.end();
  }
}

/** What this process learnt by gunzipping a blob: its diffID and uncompressed size. */
export interface VerifiedDiffId {
  diffId: string;
  uncompressedSize: number;
}

/**
 * The rule: a gzip blob's diffID (sha256 of its gunzipped bytes) is a fact
 * about its bytes. When THIS process has streamed a blob, hashed its bytes to
 * digest D with size S, AND gunzipped those very bytes to diffID X, it
 * records (D, S) → X. A later stream of a blob stated as D with size S still
 * hashes every byte and fails unless they hash to D with size S — the check
 * that makes the record apply to these bytes — and then compares the diffID
 * the source states with X instead of gunzipping again. A stated diffID that
 * differs from X fails with FERRY_DIFFID_MISMATCH exactly as before, before
 * the reader gets the last byte.
 *
 * A record is written only here, after a gunzip of the streamed bytes ended
 * without error and the bytes matched their stated digest and size; never
 * from what a source states (config diff_ids, manifests, archive names) and
 * never from another process. Records live in this process's memory, bounded
 * (least recently used first out; ~200 bytes each), and are lost on restart.
 */
export class VerifiedDiffIds {
  private readonly records = new Map<string, VerifiedDiffId>();
  /** Streams that used a record (no gunzip) and streams that gunzipped: for tests and profiles. */
  hits = 0;
  misses = 0;
  constructor(readonly maxEntries: number) {}

  private static key(digest: string, size: number): string {
    return `${digest}/${size}`;
  }

  get(digest: string, size: number): VerifiedDiffId | undefined {
    const k = VerifiedDiffIds.key(digest, size);
    const r = this.records.get(k);
    if (r) {
      // Most recently used last: the first key is the one to drop.
      this.records.delete(k);
      this.records.set(k, r);
    }
    return r;
  }

  /** Only passthroughStep calls this, after gunzipping bytes that hashed to `digest`. */
  record(digest: string, size: number, r: VerifiedDiffId): void {
    const k = VerifiedDiffIds.key(digest, size);
    this.records.delete(k);
    this.records.set(k, r);
    while (this.records.size > this.maxEntries) {
      this.records.delete(this.records.keys().next().value as string);
    }
  }

  get size(): number {
    return this.records.size;
  }

  /** Tests: forget everything (the next stream of each blob gunzips again). */
  clear(): void {
    this.records.clear();
    this.hits = 0;
    this.misses = 0;
  }
}

/** The process's records (10,000 blobs, ~2 MB at most). */
export const verifiedDiffIds = new VerifiedDiffIds(10_000);

function digestMismatch(core: PipelineCore, expect: Expect, why: string): SourceError {
  return new SourceError(
    SourceErrorCodes.BLOB_DIGEST_MISMATCH,
    `blob ${expect.digest ?? core.description} (${core.description}) ${why}`,
    expect.digest ?? core.description,
  );
}

export function passthroughStep(
  core: PipelineCore,
  content: Content,
  expect: Expect,
  statedDiffId: string | undefined,
): void {
  let held: Buffer | undefined;
  let sourceEnded = false;
  // A blob stated by digest and size whose diffID this process computed before: no gunzip.
  const known =
    content === 'gzip' && expect.digest !== undefined && expect.size !== undefined
      ? verifiedDiffIds.get(expect.digest, expect.size)
      : undefined;
  if (content === 'gzip') {
    if (known) verifiedDiffIds.hits++;
    else verifiedDiffIds.misses++;
  }
  const tap = content === 'gzip' && !known ? new DiffIdTap(core, () => verifyAndEnd()) : undefined;

  /** The diffID and uncompressed size, or an error when the blob's content cannot give one. */
  const diffIdOf = (digest: string): { diffId: string; size: number } | Error => {
    // Applies to these bytes: they hashed to the record's digest and size (checked before).
    if (known) return { diffId: known.diffId, size: known.uncompressedSize };
    if (tap) {
      if (!tap.error) return { diffId: tap.diffId, size: tap.size };
      return new SourceError(
        SourceErrorCodes.DIFFID_MISMATCH,
        `${core.description}: the blob is not a valid gzip stream (${tap.error.message})`,
        core.description,
        { cause: tap.error },
      );
    }
    if (content === 'tar') return { diffId: digest, size: core.outSize };
    return { diffId: statedDiffId ?? expect.diffId ?? '', size: -1 };
  };

  const verifyAndEnd = (): void => {
    if (core.settled || !sourceEnded || (tap && !tap.ended)) return;
    const digest = hex(core.outHash);
    if (
      (expect.digest !== undefined && digest !== expect.digest) ||
      (expect.size !== undefined && core.outSize !== expect.size)
    ) {
      const sizeNote = expect.size !== undefined ? `, expected ${expect.size} bytes` : '';
      core.fail(
        digestMismatch(
          core,
          expect,
          `is corrupt: its ${core.outSize} bytes hash to ${digest}${sizeNote}`,
        ),
      );
      return;
    }
    const d = diffIdOf(digest);
    if (d instanceof Error) return core.fail(d);
    // A fact about bytes that hashed to `digest` and gunzipped here without error (see VerifiedDiffIds).
    if (tap)
      verifiedDiffIds.record(digest, core.outSize, { diffId: d.diffId, uncompressedSize: d.size });
    if (expect.diffId && content !== 'opaque' && d.diffId !== expect.diffId) {
      core.fail(
        new SourceError(
          SourceErrorCodes.DIFFID_MISMATCH,
          `${core.description}: uncompressed content hashes to ${d.diffId}, but the image config states ${expect.diffId}`,
          core.description,
        ),
      );
      return;
    }
    // Only now does the reader get the last chunk.
    if (held) core.deliver(held);
    held = undefined;
    core.finish({ digest, size: core.outSize, diffId: d.diffId, uncompressedSize: d.size });
  };

  core.source.start(
    (c) => {
      if (core.settled) return;
      core.outHash.update(c);
      core.outSize += c.length;
      if (expect.size !== undefined && core.outSize > expect.size) {
        core.fail(digestMismatch(core, expect, `is longer than its stated ${expect.size} bytes`));
        return;
      }
      if (tap && !tap.error && !tap.write(c)) core.zBlocked = true;
      // Hold the newest chunk back until the digest is verified at the end.
      const prev = held;
      held = c;
      if (prev && !core.deliver(prev)) core.outBlocked = true;
      core.updatePause();
    },
    () => {
      if (core.settled) return;
      sourceEnded = true;
      if (tap && !tap.error) tap.end();
      verifyAndEnd();
    },
    (e) => core.fail(e),
  );
}
