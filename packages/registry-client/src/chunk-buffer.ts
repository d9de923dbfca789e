/**
 * The one buffer a chunked upload holds: 1 MiB for a small blob, else the
 * chunk size (grown once, in one step, so no ladder of half-sized copies is
 * left for the GC), refilled for every chunk; it keeps the chunk in flight so
 * a failed PATCH can be re-sent from it without regenerating the blob.
 */
const INITIAL = 1024 * 1024;

export class ChunkBuffer {
  private buf: Buffer;
  private fill = 0;

  constructor(readonly limit: number) {
    this.buf = Buffer.allocUnsafe(Math.min(limit, INITIAL));
  }

  get length(): number {
    return this.fill;
  }

  get full(): boolean {
    return this.fill >= this.limit;
  }

  /** The bytes held, as a view (valid until the next take or clear). */
  get bytes(): Buffer {
    return this.buf.subarray(0, this.fill);
  }

  /** Copies as much of data as fits; returns how many bytes it took. */
  take(data: Buffer): number {
    const n = Math.min(data.length, this.limit - this.fill);
    if (this.fill + n > this.buf.length) {
      const grown = Buffer.allocUnsafe(this.limit);
      this.buf.copy(grown, 0, 0, this.fill);
      this.buf = grown;
    }
    data.copy(this.buf, this.fill, 0, n);
    this.fill += n;
    return n;
  }

  clear(): void {
    this.fill = 0;
  }
}
