/**
 * The layer stream engine: raw bytes from a source → (gzip) → SHA-256
 * counters → the consumer, with an optional start offset. Every byte is
 * hashed, including the ones skipped before the offset; a mismatch with what
 * the source states fails the stream BEFORE it ends, so an uploader never
 * finalises a blob whose bytes are wrong. Constant memory (backpressure
 * end to end), no temp files; gzip and gunzip run on libuv's thread pool and
 * hashing happens chunk by chunk, so the event loop is never held for long.
 */
import type { Hash } from 'node:crypto';
import { Readable } from 'node:stream';
import { SourceError, SourceErrorCodes } from './errors';
import { PipelineCore } from './pipeline-core';
import { compressStep } from './pipeline-gzip';
import { passthroughStep } from './pipeline-verify';
import { releaseReadBuffer } from './read-pool';

export interface LayerResult {
  /** `sha256:` of the bytes the stream produces (the blob digest). */
  digest: string;
  /** Number of bytes the stream produces in total (from 0, not from the offset). */
  size: number;
  /** `sha256:` of the uncompressed tar. */
  diffId: string;
  /** Size of the uncompressed tar; -1 when it cannot be known (a zstd blob passed through). */
  uncompressedSize: number;
}

export interface LayerStream {
  /** The (compressed) bytes from `offset` on. */
  stream: Readable;
  /** Settles when every byte has been hashed; rejects when the stream fails. */
  done: Promise<LayerResult>;
  /**
   * The reader is done with a chunk of `stream` (copied it, keeps no reference): its
   * memory may be read into again (read-pool.ts). Optional for the reader; only the one
   * reader of the stream may call it, once per chunk.
   */
  release(chunk: Buffer): void;
}

/** A producer of raw bytes with flow control. */
export interface ByteSource {
  start(onData: (chunk: Buffer) => void, onEnd: () => void, onError: (err: Error) => void): void;
  pause(): void;
  resume(): void;
  /** Stop producing and release files; later data/end/error callbacks are ignored. */
  cancel(): void;
  /**
   * The consumer is done with a chunk onData gave it (hashed or copied it, keeps no
   * reference, nor does anything it handed the chunk to): the source may read into its
   * memory again. Optional on both sides: a chunk never given back is garbage-collected.
   */
  release?(chunk: Buffer): void;
}

/**
 * zlib output chunk size. Every full output buffer is a thread-pool round trip: the zlib
 * thread stops until the main thread has taken the chunk (hash, push) and queued the next
 * step. With two layers gzipping on two cores the main thread must first win a core back
 * from a zlib thread, so each round trip idles one; 1 MiB (one round trip per 1 MiB read
 * from tar even for incompressible data) instead of 128 KiB cut the two-layer wall time by
 * ~14% with the same bytes out (chunking never changes deflate's output). It does change
 * where a level switch of adaptive-gzip.ts falls (zlib's deflateParams flushes into the
 * room left in the output buffer), so it is part of what makes a dir: layer's bytes:
 * changing it changes their digests.
 */
export const GZIP_CHUNK_SIZE = 1024 * 1024;
/** Input bytes that may wait in front of zlib (read-ahead). */
export const ZLIB_INPUT_QUEUE = 4 * 1024 * 1024;
/** Read size for files and byte ranges. */
export const READ_CHUNK_SIZE = 1024 * 1024;

export function fromReadable(r: Readable): ByteSource {
  let cancelled = false;
  return {
    start(onData, onEnd, onError) {
      r.on('data', (c: Buffer) => !cancelled && onData(c));
      r.on('end', () => !cancelled && onEnd());
      r.on('error', (e) => !cancelled && onError(e));
    },
    pause: () => r.pause(),
    resume: () => r.resume(),
    cancel() {
      cancelled = true;
      r.destroy();
    },
  };
}

export type PipelineMode =
  /** Raw bytes are an uncompressed tar; gzip them (digest of the gzip output, diffId of the input). */
  | { kind: 'gzip'; level: number }
  /** Raw bytes are the blob as stored; pass through. `content` tells how to find the diffId. */
  | { kind: 'passthrough'; content: 'gzip' | 'tar' | 'opaque' };

export interface PipelineOptions {
  source: ByteSource;
  mode: PipelineMode;
  offset?: number;
  /** For messages: which blob / layer this is. */
  description: string;
  /** What the source states; checked before the stream ends. */
  expect?: { digest?: string; size?: number; diffId?: string };
  /** The diffId to report when it cannot be computed (passthrough 'opaque'). */
  statedDiffId?: string;
  /** Output highWaterMark. */
  highWaterMark?: number;
}

export function hex(h: Hash): string {
  return 'sha256:' + h.digest('hex');
}

/** Runs one layer stream: source → (gzip) → SHA-256 counters → reader. See the module comment. */
export function runPipeline(opts: PipelineOptions): LayerStream {
  const offset = opts.offset ?? 0;
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new SourceError(
      SourceErrorCodes.OFFSET_OUT_OF_RANGE,
      `offset ${offset} is not a non-negative integer`,
      'offset',
    );
  }
  const core = new PipelineCore(opts.source, opts.description, offset, opts.highWaterMark);
  if (opts.mode.kind === 'gzip') compressStep(core, opts.mode.level, opts.expect ?? {});
  else passthroughStep(core, opts.mode.content, opts.expect ?? {}, opts.statedDiffId);
  return { stream: core.out, done: core.done, release: releaseReadBuffer };
}

export { hashOnly } from './hash-only';
