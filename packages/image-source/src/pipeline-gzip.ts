/**
 * The compress step: raw bytes are an uncompressed tar; hash them (the
 * diffID), gzip them on libuv's thread pool (adaptive-gzip.ts: blocks that
 * cannot shrink are stored), hash the gzip output (the digest) and hand it
 * to the reader. A stated diffID that does not match
 * fails the stream before gzip writes its trailer.
 */
import { createHash } from 'node:crypto';
import { AdaptiveGzip } from './adaptive-gzip';
import { SourceError, SourceErrorCodes } from './errors';
import { GZIP_CHUNK_SIZE, ZLIB_INPUT_QUEUE, hex, type PipelineOptions } from './pipeline';
import type { PipelineCore } from './pipeline-core';

export function compressStep(
  core: PipelineCore,
  level: number,
  expect: NonNullable<PipelineOptions['expect']>,
): void {
  const rawHash = createHash('sha256');
  let rawSize = 0;
  // A few MB of input may queue in front of zlib, so the next file read overlaps compression.
  const z = new AdaptiveGzip({
    level,
    chunkSize: GZIP_CHUNK_SIZE,
    queueLimit: ZLIB_INPUT_QUEUE,
    release: (c) => core.source.release?.(c),
    onData: (c) => {
      if (core.settled) return;
      core.outHash.update(c);
      core.outSize += c.length;
      if (!core.deliver(c)) {
        core.outBlocked = true;
        z.pause();
      }
    },
    onDrain: () => {
      core.zBlocked = false;
      core.updatePause();
    },
    onError: (e) => core.fail(e),
    onEnd: () =>
      core.finish({
        digest: hex(core.outHash),
        size: core.outSize,
        diffId: hex(rawHash),
        uncompressedSize: rawSize,
      }),
  });
  core.zstream = z;
  core.onReaderReady = () => z.resume();
  const onEnd = (): void => {
    if (core.settled) return;
    if (expect.diffId) {
      const diffId = 'sha256:' + rawHash.copy().digest('hex');
      if (diffId !== expect.diffId) {
        // Fail before gzip writes its trailer: the reader never sees a complete blob.
        core.fail(
          new SourceError(
            SourceErrorCodes.DIFFID_MISMATCH,
            `${core.description}: uncompressed content hashes to ${diffId}, but the image config states ${expect.diffId}`,
            core.description,
          ),
        );
        return;
      }
    }
    z.end();
  };
  core.source.start(
    (c) => {
      if (core.settled) return;
      rawHash.update(c);
      rawSize += c.length;
      if (!z.write(c)) {
        core.zBlocked = true;
        core.updatePause();
      }
    },
    onEnd,
    (e) => core.fail(e),
  );
}
