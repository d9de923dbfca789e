/**
 * gzip that does not spend level-6 effort on bytes that cannot shrink.
 *
 * Images carry many already-compressed files (gz, jpg, woff2, media):
 * deflate at level 6 runs ~40 MB/s on them here and saves ~0.02 %, while
 * storing them runs at ~700 MB/s. The raw tar is cut into BLOCK-byte blocks
 * at absolute offsets; a block whose sampled byte entropy is above
 * THRESHOLD bits/byte is stored (deflate level 0), every other block is
 * compressed at the configured level. Where no block is stored the output is
 * byte-for-byte what `zlib.createGzip({ level })` writes.
 *
 * The output must be reproducible — an interrupted upload resumes by
 * regenerating the same bytes, and the compressed-digest cache is keyed by
 * the scheme (ADAPTIVE_GZIP_SCHEME, part of zlibIdentity) — so what zlib is
 * asked to do depends only on the bytes and their offsets, never on how the
 * input happened to be chunked: a stored block is exactly one zlib write
 * (level 0's output depends on write sizes; levels 1-9 do not, so compressed
 * blocks side by side go as one write), and a level switch (Node's params():
 * a sync flush, then deflateParams) is waited for before the next block is
 * written (a write queued behind it would run while deflateParams changes
 * the stream). Node's Gzip ignores params(), so this
 * is a raw deflate stream with the gzip header and trailer (CRC-32, size)
 * written here.
 */
import * as zlib from 'node:zlib';

/** Raw tar bytes per classified block. */
const BLOCK = 256 * 1024;
/** Sample every STRIDE-th byte of a block for its entropy. */
const STRIDE = 8;
/**
 * Above this (bits/byte, of the sample) a block is stored. Measured on real
 * files: blocks above 7.98 gain 0.17 % from level 6; 7.9–7.95 (jars) still 6 %.
 */
const THRESHOLD = 7.98;

/** Compressed blocks side by side in memory go to zlib in writes of up to this many bytes. */
const RUN = 4 * 1024 * 1024;

/** b2 starts where b1 ends, in the same memory. */
function adjacent(b1: Buffer, b2: Buffer): boolean {
  return b1.buffer === b2.buffer && b1.byteOffset + b1.length === b2.byteOffset;
}

/** Names the block size, sample and threshold: any change to them changes the output. */
export const ADAPTIVE_GZIP_SCHEME = 'store-256k-s8-t798';

const hist = new Uint32Array(256);

/** Shannon entropy (bits per byte) of every STRIDE-th byte of `b`. */
export function sampledEntropy(b: Buffer): number {
  hist.fill(0);
  for (let i = 0; i < b.length; i += STRIDE) hist[b[i]!]!++;
  const n = Math.ceil(b.length / STRIDE);
  let s = 0;
  for (let j = 0; j < 256; j++) {
    const c = hist[j]!;
    if (c !== 0) s += c * Math.log2(c);
  }
  return Math.log2(n) - s / n;
}

const headers = new Map<number, Buffer>();
/** The 10-byte header zlib's gzip writes at `level` (its XFL and OS bytes). */
function gzipHeader(level: number): Buffer {
  let h = headers.get(level);
  if (!h) {
    h = zlib.gzipSync(Buffer.alloc(0), { level }).subarray(0, 10);
    headers.set(level, h);
  }
  return h;
}

/** Counters for tests and profiles. */
export const adaptiveGzipStats = { blocks: 0, stored: 0, switches: 0 };

export interface AdaptiveGzipOptions {
  level: number;
  /** zlib output chunk size. */
  chunkSize: number;
  /** Input bytes that may wait (blocks queued + zlib's own queue) before write() says false. */
  queueLimit: number;
  onData(chunk: Buffer): void;
  /**
   * zlib has consumed every byte of a chunk given to write() (or they were copied): the
   * caller may reuse its memory. Not called for chunks still queued when the stream fails.
   */
  release?(chunk: Buffer): void;
  onDrain(): void;
  onEnd(): void;
  onError(err: Error): void;
}

/** A chunk given to write(), or a block buffer of this stream's own, and its views still queued or in zlib. */
interface Owner {
  refs: number;
  done(): void;
}

/** Block buffers (partial blocks gathered by copying) that wait for reuse, per stream. */
const MAX_SPARE_BLOCKS = 4;

export class AdaptiveGzip {
  private readonly z: zlib.DeflateRaw;
  private readonly level: number;
  private crc = 0;
  private isize = 0;
  private stored = false;
  /** The block being filled, and how much of it is. */
  private cur: Buffer | undefined;
  private fill = 0;
  /** Whole blocks not yet written to zlib. */
  private readonly queue: { b: Buffer; store?: boolean; owner?: Owner }[] = [];
  /** Block buffers zlib is done with, for the next partial blocks. */
  private readonly spareBlocks: Buffer[] = [];
  private queued = 0;
  private switching = false;
  private ending = false;
  private ended = false;
  private wantDrain = false;
  private destroyed = false;
  private started = false;

  constructor(private readonly o: AdaptiveGzipOptions) {
    this.level = o.level;
    this.z = zlib.createDeflateRaw({
      level: o.level,
      chunkSize: o.chunkSize,
      writableHighWaterMark: o.queueLimit,
    } as zlib.ZlibOptions);
    this.z.on('data', (c: Buffer) => o.onData(c));
    this.z.on('drain', () => this.pump());
    this.z.on('error', (e) => this.fail(e));
    this.z.on('end', () => {
      const t = Buffer.allocUnsafe(8);
      t.writeUInt32LE(this.crc >>> 0, 0);
      t.writeUInt32LE(this.isize >>> 0, 4);
      o.onData(t);
      o.onEnd();
    });
  }

  /** Takes raw bytes; false when the caller should wait for onDrain. */
  write(c: Buffer): boolean {
    this.start();
    let off = 0;
    let owner: Owner | undefined;
    while (off < c.length) {
      if (this.fill === 0 && c.length - off >= BLOCK) {
        // A whole block is queued as a view of c: c is given back once zlib has consumed it.
        owner ??= { refs: 0, done: () => this.o.release?.(c) };
        owner.refs++;
        this.enqueue(c.subarray(off, off + BLOCK), owner);
        off += BLOCK;
        continue;
      }
      this.cur ??= this.spareBlocks.pop() ?? Buffer.allocUnsafe(BLOCK);
      const n = c.copy(this.cur, this.fill, off, Math.min(c.length, off + BLOCK - this.fill));
      this.fill += n;
      off += n;
      if (this.fill === BLOCK) {
        this.enqueue(this.cur, this.blockOwner(this.cur));
        this.cur = undefined;
        this.fill = 0;
      }
    }
    // Every byte was copied: c is free now.
    if (!owner) this.o.release?.(c);
    this.pump();
    const ok = this.room();
    if (!ok) this.wantDrain = true;
    return ok;
  }

  end(): void {
    this.start();
    if (this.fill > 0) this.enqueue(this.cur!.subarray(0, this.fill));
    this.cur = undefined;
    this.fill = 0;
    this.ending = true;
    this.pump();
  }

  pause(): void {
    this.z.pause();
  }

  resume(): void {
    this.z.resume();
  }

  destroy(): void {
    this.destroyed = true;
    this.queue.length = 0;
    this.z.destroy();
  }

  /** The header goes out with the first input (not from the constructor: the caller is still being set up). */
  private start(): void {
    if (this.started) return;
    this.started = true;
    this.o.onData(gzipHeader(this.level));
  }

  private room(): boolean {
    return this.queued + this.z.writableLength < this.o.queueLimit;
  }

  private enqueue(b: Buffer, owner?: Owner): void {
    this.queue.push(owner ? { b, owner } : { b });
    this.queued += b.length;
  }

  /** A full block buffer of this stream's own goes back to spareBlocks once zlib has consumed it. */
  private blockOwner(block: Buffer): Owner {
    return {
      refs: 1,
      done: () => {
        if (this.spareBlocks.length < MAX_SPARE_BLOCKS) this.spareBlocks.push(block);
      },
    };
  }

  private fail(e: Error): void {
    if (this.destroyed) return;
    this.destroy();
    this.o.onError(e);
  }

  /** Whether the block at the head of the queue is to be stored (classified once, counted once). */
  private headStored(): boolean {
    const q = this.queue[0]!;
    if (q.store === undefined) {
      q.store = sampledEntropy(q.b) > THRESHOLD;
      adaptiveGzipStats.blocks++;
      if (q.store) adaptiveGzipStats.stored++;
    }
    return q.store;
  }

  /** Takes the head block; its owner joins `owners` (given back once zlib has consumed it). */
  private shift(owners: Owner[]): Buffer {
    const { b, owner } = this.queue.shift()!;
    this.queued -= b.length;
    if (owner) owners.push(owner);
    return b;
  }

  private pump(): void {
    while (!this.switching && !this.destroyed && this.queue.length > 0) {
      const store = this.headStored();
      const owners: Owner[] = [];
      if (store !== this.stored) {
        const b = this.shift(owners);
        // Nothing is written until deflateParams has run (see the module comment).
        this.switching = true;
        adaptiveGzipStats.switches++;
        this.z.params(store ? 0 : this.level, zlib.constants.Z_DEFAULT_STRATEGY, () => {
          this.switching = false;
          this.stored = store;
          this.writeBlock(b, owners);
          this.pump();
        });
        return;
      }
      let b = this.shift(owners);
      if (!store) {
        // Deflate at levels 1-9 writes the same bytes however its input is split, so a run of
        // compressed blocks lying side by side in one buffer goes to zlib as one write (one
        // thread-pool round trip instead of one per block). Stored blocks never: level 0's
        // output depends on the write sizes.
        while (
          b.length < RUN &&
          this.queue.length > 0 &&
          adjacent(b, this.queue[0]!.b) &&
          !this.headStored()
        ) {
          const n = this.shift(owners);
          b = Buffer.from(b.buffer, b.byteOffset, b.length + n.length);
        }
      }
      this.writeBlock(b, owners);
    }
    if (this.switching || this.destroyed) return;
    if (this.ending && !this.ended && this.queue.length === 0) {
      this.ended = true;
      this.z.end();
    }
    if (this.wantDrain && this.room()) {
      this.wantDrain = false;
      this.o.onDrain();
    }
  }

  private writeBlock(b: Buffer, owners: Owner[]): void {
    if (this.destroyed) return;
    this.crc = zlib.crc32(b, this.crc);
    this.isize = (this.isize + b.length) >>> 0;
    if (owners.length === 0) {
      this.z.write(b);
      return;
    }
    // Called once zlib has consumed every byte of b (with an error instead when it never will:
    // then nothing is given back, as zlib may still hold the memory).
    this.z.write(b, (err) => {
      if (err || this.destroyed) return;
      for (const o of owners) if (--o.refs === 0) o.done();
    });
  }
}
