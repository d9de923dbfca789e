/**
 * The state one layer stream shares between its steps: the reader-facing
 * Readable, the hash of the bytes produced, flow control between source,
 * zlib and reader, and the one way to finish or fail.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { SourceError, SourceErrorCodes } from './errors';
import { READ_CHUNK_SIZE, type ByteSource, type LayerResult } from './pipeline';

class LayerOutput extends Readable {
  constructor(
    hwm: number,
    private readonly onRead: () => void,
    private readonly onDestroy: (err: Error | null) => void,
  ) {
    super({ highWaterMark: hwm });
  }
  override _read(): void {
    this.onRead();
  }
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.onDestroy(err);
    cb(err);
  }
}

export class PipelineCore {
  readonly out: LayerOutput;
  readonly done: Promise<LayerResult>;
  /** sha256 of the bytes the stream produces (the blob digest). */
  readonly outHash = createHash('sha256');
  outSize = 0;
  settled = false;
  /** The reader's buffer is full. */
  outBlocked = false;
  /** zlib's input queue is full. */
  zBlocked = false;
  /** The zlib stream (or diffID tap) of the step, destroyed on failure. */
  zstream: { destroy(): void } | undefined;
  /** Called when the reader wants more (the compress step resumes gzip's output). */
  onReaderReady: (() => void) | undefined;
  private delivered = 0;
  private sourcePaused = false;
  private resolveDone!: (r: LayerResult) => void;
  private rejectDone!: (e: Error) => void;

  constructor(
    readonly source: ByteSource,
    readonly description: string,
    readonly offset: number,
    highWaterMark = READ_CHUNK_SIZE,
  ) {
    this.done = new Promise<LayerResult>((res, rej) => {
      this.resolveDone = res;
      this.rejectDone = rej;
    });
    // A caller that only reads the stream must not crash the process with an unhandled rejection.
    this.done.catch(() => undefined);
    this.out = new LayerOutput(
      highWaterMark,
      () => {
        this.outBlocked = false;
        this.onReaderReady?.();
        this.updatePause();
      },
      (err) => this.onReaderDestroy(err),
    );
  }

  private onReaderDestroy(err: Error | null): void {
    if (this.settled) return;
    this.fail(
      err instanceof SourceError
        ? err
        : new SourceError(
            SourceErrorCodes.STREAM_ABORTED,
            `the stream of ${this.description} was closed by its reader before the end`,
            this.description,
            err ? { cause: err } : undefined,
          ),
    );
  }

  /** Pauses the source while the reader or zlib is full, resumes it when both have room. */
  updatePause(): void {
    const want = this.outBlocked || this.zBlocked;
    if (want && !this.sourcePaused) {
      this.sourcePaused = true;
      this.source.pause();
    } else if (!want && this.sourcePaused) {
      this.sourcePaused = false;
      this.source.resume();
    }
  }

  fail(err: Error): void {
    if (this.settled) return;
    this.settled = true;
    this.source.cancel();
    this.zstream?.destroy();
    this.rejectDone(err);
    if (!this.out.destroyed) this.out.destroy(err);
  }

  /** Hands final bytes (already hashed) to the reader, dropping those before the offset. */
  deliver(chunk: Buffer): boolean {
    let c = chunk;
    if (this.delivered < this.offset) {
      const skip = Math.min(this.offset - this.delivered, c.length);
      this.delivered += skip;
      c = c.subarray(skip);
    }
    if (c.length === 0) return true;
    this.delivered += c.length;
    return this.out.push(c);
  }

  finish(result: LayerResult): void {
    if (this.settled) return;
    if (this.offset > result.size) {
      this.fail(
        new SourceError(
          SourceErrorCodes.OFFSET_OUT_OF_RANGE,
          `offset ${this.offset} is past the end of ${this.description} (${result.size} bytes)`,
          'offset',
        ),
      );
      return;
    }
    this.settled = true;
    this.resolveDone(result);
    this.out.push(null);
  }
}
