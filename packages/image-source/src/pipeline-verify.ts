/**
 * The pass-through step with verification: raw bytes are the blob as stored.
 * They are hashed (and gunzipped to compute the diffID when the blob is
 * gzip), and the newest chunk is held back until the end, so a blob whose
 * digest, size or diffID does not match what the source states fails the
 * stream before the reader gets its last byte.
 */
import { createHash } from 'node:crypto';
import * as zlib from 'node:zlib';
import { SourceError, SourceErrorCodes } from './errors';
import { GZIP_CHUNK_SIZE, ZLIB_INPUT_QUEUE, hex, type PipelineOptions } from './pipeline';
import type { PipelineCore } from './pipeline-core';

type Expect = NonNullable<PipelineOptions['expect']>;
type Content = 'gzip' | 'tar' | 'opaque';

/** Gunzips the blob beside the stream, only to hash the uncompressed bytes (the diffID). */
class DiffIdTap {
  readonly hash = createHash('sha256');
  size = 0;
  error: Error | undefined;
  ended = false;
  readonly gunzip: zlib.Gunzip;
  constructor(core: PipelineCore, onEnd: () => void) {
    this.gunzip = zlib.createGunzip({
      chunkSize: GZIP_CHUNK_SIZE,
      writableHighWaterMark: ZLIB_INPUT_QUEUE,
    } as zlib.ZlibOptions);
    core.zstream = this.gunzip;
    this.gunzip.on('data', (c: Buffer) => {
      this.hash.update(c);
      this.size += c.length;
    });
    this.gunzip.on('drain', () => {
      core.zBlocked = false;
      core.updatePause();
    });
    this.gunzip.on('error', (e) => {
      // Keep hashing: a corrupt blob is reported as a digest mismatch first.
      this.error = e;
      this.ended = true;
      core.zBlocked = false;
      core.updatePause();
      onEnd();
    });
    this.gunzip.on('end', () => {
      this.ended = true;
      onEnd();
    });
  }
}

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
  const tap = content === 'gzip' ? new DiffIdTap(core, () => verifyAndEnd()) : undefined;

  /** The diffID and uncompressed size, or an error when the blob's content cannot give one. */
  const diffIdOf = (digest: string): { diffId: string; size: number } | Error => {
    if (tap) {
      if (!tap.error) return { diffId: hex(tap.hash), size: tap.size };
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
      if (tap && !tap.error && !tap.gunzip.write(c)) core.zBlocked = true;
      // Hold the newest chunk back until the digest is verified at the end.
      const prev = held;
      held = c;
      if (prev && !core.deliver(prev)) core.outBlocked = true;
      core.updatePause();
    },
    () => {
      if (core.settled) return;
      sourceEnded = true;
      if (tap && !tap.error) tap.gunzip.end();
      verifyAndEnd();
    },
    (e) => core.fail(e),
  );
}
