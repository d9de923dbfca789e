/**
 * The deterministic tar of one dir: layer, written byte by byte (no tar
 * library internals): for each walked entry, in the walk's fixed order, its
 * header block(s) (tar-header.ts), then — regular files — the content read
 * from a descriptor opened with O_RDONLY|O_NOFOLLOW|O_NONBLOCK and checked
 * (fstat: a regular file with the device, inode and size that were listed;
 * /proc/self/fd: inside the real root), then zero padding; two zero blocks
 * end the archive. Owners and mtimes follow DirOptions (default 0:0 and the
 * epoch); no user names, atime or ctime. A file that grows or shrinks while
 * it is read, or a layer whose listing changed by the end of the read, fails
 * the stream with FERRY_SOURCE_CHANGED before its last bytes.
 */
import { close as fsClose, fstat, open as fsOpen, read as fsRead, type BigIntStats } from 'node:fs';
import type { WalkEntry, LayerWalk } from './dir-walk';
import { SourceError, SourceErrorCodes } from './errors';
import type { ByteSource } from './pipeline';
import { SAFE_READ_FLAGS, fdPath, isInside } from './root';
import { sourceChanged } from './snapshot';
import { END_OF_ARCHIVE, encodeHeaders, padding, type TarHeaderFields } from './tar-header';
import type { DirOptions } from './types';
import { BufferPool } from './read-pool';
import { CAPABILITY_XATTR, xattrReader, type XattrReader } from './xattr';

export { walkLayer, listingDigest, type LayerWalk, type WalkEntry, type WarnFn } from './dir-walk';

/** Default read size per file chunk (each chunk is one write into zlib). */
export const TAR_READ_SIZE = 4 * 1024 * 1024;

/** The default mtime of every entry Ferry tars: the epoch, so builds are reproducible. */
export const FIXED_MTIME = new Date(0);

/**
 * Kept for callers of earlier versions: always true. Layer tars are written by
 * Ferry itself, so the O_NOFOLLOW / inode / root checks cannot be switched off
 * by a tar package upgrade.
 */
export const SAFE_OPEN_INSTALLED = true;

export const DEFAULT_DIR_OPTIONS: DirOptions = { owners: 'root', mtime: 'epoch' };

/** Pieces smaller than this are gathered into one chunk before they go to zlib. */
const COALESCE = 64 * 1024;

/**
 * File reads of COALESCE bytes or more go into buffers the consumer gives
 * back (ByteSource.release: the lookup's hash at once, gzip once zlib has
 * consumed them). A new 4 MiB buffer per read lived on in zlib's input queue
 * long enough to be promoted, and promoted buffers are freed only by full
 * collections: a 600 MB dir: push ran ~45 mark-compacts of the serve's heap,
 * ~1 CPU-s of the main thread. One pool per read size; at most MAX_FREE_READS
 * wait in each.
 */
const MAX_FREE_READS = 8;
const readPools = new Map<number, BufferPool>();
function readPool(size: number): BufferPool {
  let p = readPools.get(size);
  if (!p) readPools.set(size, (p = new BufferPool(size, MAX_FREE_READS)));
  return p;
}

/** Tests: the tar read buffers of a read size — how many wait for reuse, how many were made. */
export function tarReadPoolStats(readSize = TAR_READ_SIZE): { waiting: number; created: number } {
  const p = readPools.get(readSize + 1);
  return { waiting: p?.waiting ?? 0, created: p?.created ?? 0 };
}

export interface TarOptions {
  /** Read size per file chunk; output bytes do not depend on it. */
  maxReadSize?: number;
  /** Real path of the source root: every file descriptor opened must point inside it. */
  realRoot?: string;
  /** Owners and mtimes (default root / epoch). */
  dirOptions?: DirOptions;
  /** Reads file capabilities; loaded here when not given (the stream fails if it cannot be). */
  xattrs?: XattrReader;
  /**
   * Runs after the last entry's bytes and before the end-of-archive blocks; throws (e.g.
   * FERRY_SOURCE_CHANGED) to fail the stream before it can end.
   */
  verify?: () => Promise<void>;
}

// Looked up on the fs module at each call (not captured at load), so tests can observe every open.
const openAsync = (path: string, flags: number): Promise<number> =>
  new Promise((res, rej) => fsOpen(path, flags, (e, fd) => (e ? rej(e) : res(fd))));
const readAsync = (fd: number, buf: Buffer, pos: number): Promise<number> =>
  new Promise((res, rej) => fsRead(fd, buf, 0, buf.length, pos, (e, n) => (e ? rej(e) : res(n))));
const fstatAsync = (fd: number): Promise<BigIntStats> =>
  new Promise((res, rej) => fstat(fd, { bigint: true }, (e, st) => (e ? rej(e) : res(st))));
const fdPathAsync = (fd: number): Promise<string | undefined> => new Promise((r) => fdPath(fd, r));

class Cancelled extends Error {}

/** The header fields of an entry under the options. */
export function headerFields(e: WalkEntry, o: DirOptions): TarHeaderFields {
  const mtime =
    o.mtime === 'epoch' ? 0 : o.mtime === 'keep' ? Math.floor(e.mtimeMs / 1000) : o.mtime;
  const type =
    e.type === 'file'
      ? 'File'
      : e.type === 'dir'
        ? 'Directory'
        : e.type === 'symlink'
          ? 'SymbolicLink'
          : 'Link';
  return {
    path: e.type === 'dir' ? `${e.rel}/` : e.rel,
    type,
    mode: e.mode,
    uid: o.owners === 'keep' ? e.uid : 0,
    gid: o.owners === 'keep' ? e.gid : 0,
    size: e.size,
    mtime,
    ...(e.link !== undefined ? { linkpath: e.link } : {}),
  };
}

interface OpenFile {
  fd: number;
  /** a read on fd has not returned yet: closing now could hit a reused descriptor */
  inflight: boolean;
  closed: boolean;
}

class LayerTarWriter implements ByteSource {
  private paused = false;
  private cancelled = false;
  private wake: (() => void) | undefined;
  private file: OpenFile | undefined;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private onData: (chunk: Buffer) => void = () => undefined;

  /** File reads of this writer's size, one byte more for the growth check. */
  private readonly pool: BufferPool;

  constructor(
    private readonly walk: LayerWalk,
    private readonly label: string,
    private readonly opts: TarOptions,
  ) {
    this.pool = readPool((opts.maxReadSize ?? TAR_READ_SIZE) + 1);
  }

  start(onData: (c: Buffer) => void, onEnd: () => void, onError: (e: Error) => void): void {
    this.onData = onData;
    this.run().then(
      () => {
        if (!this.cancelled) onEnd();
      },
      (e: unknown) => {
        if (!this.cancelled && !(e instanceof Cancelled)) onError(this.wrap(e as Error));
      },
    );
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.wake?.();
  }

  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    if (this.file && !this.file.inflight) this.closeFile();
    this.wake?.();
  }

  release(chunk: Buffer): void {
    this.pool.release(chunk);
  }

  private async run(): Promise<void> {
    const xattrs = this.opts.xattrs ?? (await xattrReader());
    const o = this.opts.dirOptions ?? DEFAULT_DIR_OPTIONS;
    for (const e of this.walk.entries) {
      await this.flowing();
      if (e.type === 'file') await this.writeFile(e, o, xattrs);
      else this.emit(encodeHeaders(headerFields(e, o)));
    }
    this.flush();
    await this.opts.verify?.();
    if (this.cancelled) throw new Cancelled();
    this.emit(END_OF_ARCHIVE);
    this.flush();
  }

  /** Resolves when the consumer wants bytes; throws Cancelled after cancel(). */
  private async flowing(): Promise<void> {
    while (this.paused && !this.cancelled) {
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
    if (this.cancelled) throw new Cancelled();
  }

  private emit(b: Buffer): void {
    if (b.length === 0) return;
    if (b.length >= COALESCE) {
      this.flush();
      this.onData(b);
      return;
    }
    this.pending.push(b);
    this.pendingBytes += b.length;
    if (this.pendingBytes >= COALESCE) this.flush();
  }

  private flush(): void {
    if (this.pendingBytes === 0 || this.cancelled) return;
    const b = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending);
    // Copied: a pooled piece (a short read) can be read into again.
    if (this.pending.length > 1) for (const piece of this.pending) this.pool.release(piece);
    this.pending = [];
    this.pendingBytes = 0;
    this.onData(b);
  }

  private async writeFile(e: WalkEntry, o: DirOptions, xattrs: XattrReader): Promise<void> {
    const fd = await this.openChecked(e);
    this.file = { fd, inflight: false, closed: false };
    try {
      this.file.inflight = true; // the addon reads through /proc/self/fd/N: keep N open
      let cap: Buffer | undefined;
      try {
        cap = await xattrs.capability(fd, `${this.label}/${e.rel}`);
      } finally {
        this.file.inflight = false;
      }
      if (this.cancelled) throw new Cancelled();
      const fields = headerFields(e, o);
      if (cap) fields.xattrs = new Map([[CAPABILITY_XATTR, cap]]);
      this.emit(encodeHeaders(fields));
      await this.readBody(e);
      this.emit(padding(e.size));
    } finally {
      if (!this.file.inflight) this.closeFile();
    }
  }

  private closeFile(): void {
    const f = this.file;
    if (!f || f.closed) return;
    f.closed = true;
    fsClose(f.fd, () => undefined);
  }

  /** Reads exactly the listed size; one byte more is asked for at the end to see growth. */
  private async readBody(e: WalkEntry): Promise<void> {
    const f = this.file!;
    const max = this.opts.maxReadSize ?? TAR_READ_SIZE;
    let pos = 0;
    while (pos < e.size) {
      await this.flowing();
      const remaining = e.size - pos;
      const want = Math.min(max, remaining);
      const len = want === remaining ? want + 1 : want;
      // A small read is gathered with others (emit) and copied: no pooled buffer for it.
      const buf = len > COALESCE ? this.pool.take().subarray(0, len) : Buffer.allocUnsafe(len);
      f.inflight = true;
      let n: number;
      try {
        n = await readAsync(f.fd, buf, pos);
      } catch (err) {
        this.pool.release(buf);
        throw err;
      } finally {
        f.inflight = false;
      }
      if (this.cancelled) {
        this.pool.release(buf);
        throw new Cancelled();
      }
      if (n === 0 || n > remaining) {
        this.pool.release(buf);
        throw sourceChanged(
          `${this.label}/${e.rel} ${n === 0 ? 'shrank' : 'grew'} while it was read (listed with ${e.size} bytes)`,
          this.label,
        );
      }
      pos += n;
      this.emit(n === buf.length ? buf : buf.subarray(0, n));
    }
  }

  /** Opens a listed file without following symlinks and checks it is that very file, inside the root. */
  private async openChecked(e: WalkEntry): Promise<number> {
    let fd: number;
    try {
      fd = await openAsync(e.abs, SAFE_READ_FLAGS);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ELOOP')
        throw sourceChanged(
          `${this.label}/${e.rel} became a symlink after it was listed`,
          this.label,
        );
      if (code === 'ENOENT')
        throw sourceChanged(`${this.label}/${e.rel} was removed after it was listed`, this.label);
      throw err;
    }
    try {
      if (this.cancelled) throw new Cancelled();
      // Outside the root is the graver finding: checked first.
      const actual = await fdPathAsync(fd);
      if (this.opts.realRoot && actual !== undefined && !isInside(this.opts.realRoot, actual)) {
        throw new SourceError(
          SourceErrorCodes.SOURCE_OUTSIDE_ROOT,
          `${this.label}: ${e.abs} resolved to ${actual}, outside the source root`,
          this.label,
        );
      }
      const st = await fstatAsync(fd);
      if (!st.isFile() || st.ino !== e.ino || st.dev !== e.dev)
        throw sourceChanged(`${this.label}/${e.rel} was replaced after it was listed`, this.label);
      if (st.size !== BigInt(e.size))
        throw sourceChanged(
          `${this.label}/${e.rel} changed size after it was listed (${e.size} → ${st.size} bytes)`,
          this.label,
        );
      // Same inode (perhaps reused) and size: its times still tell an edit or a replacement.
      if (st.ctimeNs !== e.stats.ctimeNs || st.mtimeNs !== e.stats.mtimeNs)
        throw sourceChanged(`${this.label}/${e.rel} changed after it was listed`, this.label);
      if (this.cancelled) throw new Cancelled();
      return fd;
    } catch (err) {
      fsClose(fd, () => undefined);
      throw err;
    }
  }

  private wrap(e: Error): Error {
    if (e instanceof SourceError) return e;
    const code = (e as NodeJS.ErrnoException).code;
    return new SourceError(
      code === 'ENOENT' ? SourceErrorCodes.SOURCE_CHANGED : SourceErrorCodes.UNSUPPORTED_FILE,
      `${this.label}: cannot tar ${(e as { path?: string }).path ?? 'an entry'}: ${e.message} (did the directory change while it was read?)`,
      this.label,
      { cause: e },
    );
  }
}

/**
 * A ByteSource producing the deterministic tar of a walked layer directory.
 * `dir` is kept for callers of earlier versions (the walk holds absolute paths).
 */
export function tarSource(
  _dir: string,
  walk: LayerWalk,
  label: string,
  opts: TarOptions = {},
): ByteSource {
  return new LayerTarWriter(walk, label, opts);
}
