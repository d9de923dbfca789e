/**
 * File reads into reused buffers.
 *
 * A file source read through fs.createReadStream allocates a new 1 MiB buffer
 * for every read. An upload holds each one for a while (the pipeline keeps the
 * newest chunk back until the digest is checked, the reader's queue, the chunk
 * buffer's copy), long enough for V8 to promote it, and promoted ArrayBuffers
 * are only freed by full collections: profiled, an 8-layer 262 MB push ran 11
 * full mark-compacts of the serve's heap and ~0.9 CPU-s of concurrent marking
 * and sweeping on V8's threads, a quarter of the process's CPU. Reading into
 * buffers the uploader gives back once it has copied them (LayerStream.release)
 * makes none of that garbage (a quarter as many full collections).
 *
 * The rule: a buffer goes back to the pool only through releaseReadBuffer, by
 * the one reader a chunk was delivered to, once it holds no reference to the
 * chunk; every other step copies or hashes a chunk synchronously, or keeps it
 * only until delivering it. A chunk that is never released (another reader,
 * a failed stream, a fan-out branch) is garbage-collected as before. At most
 * MAX_FREE buffers wait in the pool (16 MiB).
 */
import type { FileHandle } from 'node:fs/promises';
import { READ_CHUNK_SIZE, type ByteSource } from './pipeline';

/**
 * Buffers of one size, made here and taken back once their reader is done
 * (the rule above). A chunk is recognised by its ArrayBuffer, so a view of a
 * pooled buffer (a shorter read) comes back whole.
 */
export class BufferPool {
  /** Every buffer this pool made (its ArrayBuffer), so a foreign chunk is never taken in. */
  private readonly made = new WeakSet<ArrayBufferLike>();
  private readonly free: Buffer[] = [];
  /** Buffers made so far (tests and diagnostics: reuse keeps it low). */
  created = 0;

  constructor(
    readonly size: number,
    private readonly maxFree: number,
  ) {}

  take(): Buffer {
    const b = this.free.pop();
    if (b) return b;
    const fresh = Buffer.allocUnsafeSlow(this.size);
    this.made.add(fresh.buffer);
    this.created++;
    return fresh;
  }

  /** Gives a chunk's buffer back; chunks of any other origin and second releases are ignored. */
  release(chunk: Buffer): void {
    const ab = chunk.buffer;
    if (
      !this.made.has(ab) ||
      this.free.length >= this.maxFree ||
      this.free.some((b) => b.buffer === ab)
    )
      return;
    this.free.push(Buffer.from(ab, 0, this.size));
  }

  /** How many buffers wait. */
  get waiting(): number {
    return this.free.length;
  }

  clear(): void {
    this.free.length = 0;
  }
}

const MAX_FREE = 16;
// Made on first use: pipeline.ts, where READ_CHUNK_SIZE lives, imports this module.
let thePool: BufferPool | undefined;
const pool = (): BufferPool => (thePool ??= new BufferPool(READ_CHUNK_SIZE, MAX_FREE));

function takeReadBuffer(): Buffer {
  return pool().take();
}

/**
 * The reader is done with a chunk a file source delivered (it copied it and
 * keeps no reference): its buffer may be read into again. Chunks of any other
 * origin, and a second release of the same buffer, are ignored.
 */
export function releaseReadBuffer(chunk: Buffer): void {
  thePool?.release(chunk);
}

/** Tests: how many buffers wait in the pool. */
export function readPoolSize(): number {
  return thePool?.waiting ?? 0;
}

/** Tests: empties the pool. */
export function clearReadPool(): void {
  thePool?.clear();
}

/**
 * The bytes of an open file from `start` up to `end` (exclusive; the end of
 * the file when absent) as a ByteSource, read READ_CHUNK_SIZE at a time into
 * pooled buffers. The source owns the handle: it is closed at the end, on an
 * error, and on cancel.
 */
export function fileSource(
  fh: FileHandle,
  range: { start?: number; end?: number } = {},
): ByteSource {
  let pos = range.start ?? 0;
  const end = range.end ?? Infinity;
  let paused = false;
  let reading = false;
  let stopped = false;
  let onData: (chunk: Buffer) => void = () => undefined;
  let onEnd: () => void = () => undefined;
  let onError: (err: Error) => void = () => undefined;
  const close = (): void => {
    fh.close().catch(() => undefined);
  };

  const pump = async (): Promise<void> => {
    if (reading) return;
    reading = true;
    try {
      while (!paused && !stopped) {
        const want = Math.min(READ_CHUNK_SIZE, end - pos);
        if (want <= 0) break;
        const buf = takeReadBuffer();
        const { bytesRead } = await fh.read(buf, 0, want, pos);
        if (stopped || bytesRead === 0) {
          releaseReadBuffer(buf);
          if (bytesRead === 0) pos = end;
          break;
        }
        pos += bytesRead;
        // May pause (checked before the next read) or cancel.
        onData(buf.subarray(0, bytesRead));
      }
    } catch (e) {
      if (!stopped) {
        stopped = true;
        close();
        onError(e as Error);
      }
      return;
    } finally {
      reading = false;
    }
    if (!stopped && pos >= end) {
      stopped = true;
      close();
      onEnd();
    }
  };

  return {
    start(data, ended, failed) {
      onData = data;
      onEnd = ended;
      onError = failed;
      void pump();
    },
    pause() {
      paused = true;
    },
    resume() {
      paused = false;
      void pump();
    },
    cancel() {
      if (stopped) return;
      stopped = true;
      // A read in flight finishes first (FileHandle.close waits for it); its buffer is dropped.
      close();
    },
  };
}
