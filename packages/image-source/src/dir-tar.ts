/**
 * Deterministic tar of one layer directory with the `tar` package: entries in
 * a fixed order (depth first, names sorted bytewise), a fixed mtime on every
 * entry (directories too), uid/gid 0, empty user/group names, no
 * atime/ctime/dev/ino/nlink. Symlinks are stored as symlinks (lstat +
 * readlink; never followed), hard links as links, sockets/devices/FIFOs are
 * skipped with a warning, names that are not UTF-8 are refused.
 */
import {
  close as fsClose,
  constants as fsConstants,
  fstat,
  open as fsOpen,
  type Stats,
} from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Pack, WriteEntry } from 'tar';
import { SourceError, SourceErrorCodes } from './errors';
import type { ByteSource } from './pipeline';
import { fdPath, isInside } from './root';

/** Default read size per file chunk (each chunk is one write into zlib). */
export const TAR_READ_SIZE = 4 * 1024 * 1024;

/** The mtime of every entry Ferry tars: the epoch, so builds are reproducible. */
export const FIXED_MTIME = new Date(0);

export interface LayerWalk {
  /** Paths relative to the layer directory, in archive order. */
  paths: string[];
  /** lstat results keyed by absolute path (the tar package's statCache). */
  stats: Map<string, Stats>;
  /** Entries left out (sockets, devices, FIFOs), relative paths. */
  skipped: string[];
  /**
   * Hard links: "dev:ino" → absolute path of the first name (in archive order)
   * of a file with several names; later names are stored as links to it.
   */
  links: Map<string, string>;
}

export type WarnFn = (message: string, path: string) => void;

function printable(b: Buffer): string {
  // Show a non-UTF-8 name with its bad bytes escaped.
  let s = '';
  for (const byte of b)
    s +=
      byte >= 0x20 && byte < 0x7f
        ? String.fromCharCode(byte)
        : `\\x${byte.toString(16).padStart(2, '0')}`;
  return s;
}

/**
 * Lists a layer directory in archive order. Never follows a symlink: every
 * entry is lstat'ed and directories are entered only when lstat says they are
 * directories.
 */
export async function walkLayer(dir: string, label: string, warn?: WarnFn): Promise<LayerWalk> {
  const paths: string[] = [];
  const stats = new Map<string, Stats>();
  const skipped: string[] = [];
  const links = new Map<string, string>();
  const visit = async (absDir: string, relDir: string): Promise<void> => {
    const names = await readdir(absDir, { encoding: 'buffer' });
    names.sort(Buffer.compare);
    const decoded: string[] = [];
    for (const raw of names) {
      const name = raw.toString('utf8');
      if (!Buffer.from(name, 'utf8').equals(raw)) {
        const shown = (relDir ? relDir + '/' : '') + printable(raw);
        throw new SourceError(
          SourceErrorCodes.UNSUPPORTED_FILE,
          `${label}: file name "${shown}" is not valid UTF-8; tar (PAX) names must be UTF-8 — rename it`,
          `${label}/${shown}`,
        );
      }
      decoded.push(name);
    }
    const entryStats = await Promise.all(decoded.map((n) => lstat(join(absDir, n))));
    for (let i = 0; i < decoded.length; i++) {
      const rel = relDir ? `${relDir}/${decoded[i]}` : decoded[i]!;
      const abs = join(absDir, decoded[i]!);
      const st = entryStats[i]!;
      if (st.isFile() || st.isSymbolicLink() || st.isDirectory()) {
        if (st.isFile() && st.nlink > 1) {
          // The first name keeps the content: the tar package sees it as a single-link file,
          // and every later name finds it in the link cache and becomes a hard-link entry.
          const key = `${st.dev}:${st.ino}`;
          if (!links.has(key)) {
            links.set(key, abs);
            st.nlink = 1;
          }
        }
        stats.set(abs, st);
        paths.push(rel);
        if (st.isDirectory()) await visit(abs, rel);
      } else {
        const kind = st.isSocket()
          ? 'socket'
          : st.isFIFO()
            ? 'FIFO'
            : st.isBlockDevice()
              ? 'block device'
              : st.isCharacterDevice()
                ? 'character device'
                : 'special file';
        skipped.push(rel);
        warn?.(`${label}: skipping ${kind} ${rel} (not stored in layers)`, rel);
      }
    }
  };
  await visit(dir, '');
  return { paths, stats, skipped, links };
}

function sanitizedStat(st: Stats): Stats {
  // Only what the tar header needs; owner, times and device numbers are fixed or absent.
  const s = {
    mode: st.mode,
    size: st.size,
    uid: 0,
    gid: 0,
    mtime: FIXED_MTIME,
    atime: undefined,
    ctime: undefined,
    dev: undefined,
    ino: undefined,
    nlink: undefined,
    isFile: () => st.isFile(),
    isDirectory: () => st.isDirectory(),
    isSymbolicLink: () => st.isSymbolicLink(),
  };
  return s as unknown as Stats;
}

// The tar package opens a file with fs.open(path, 'r') after our lstat: a file swapped for a
// symlink in between would be followed. Its (module-private) open step is replaced per entry
// by one that refuses symlinks (O_NOFOLLOW), never blocks on a FIFO (O_NONBLOCK), and checks
// that the descriptor is the very file that was listed (same device and inode).
const protoSymbols = Object.getOwnPropertySymbols(WriteEntry.prototype);
const sym = (name: string): symbol | undefined => protoSymbols.find((x) => x.description === name);
const OPENFILE = sym('openfile');
const ONOPENFILE = sym('onopenfile');
const READ = sym('read');
const ONREAD = sym('onread');
const CLOSE = sym('close');
/** True when the tar package's open step could be replaced (checked by a test). */
export const SAFE_OPEN_INSTALLED = OPENFILE !== undefined && ONOPENFILE !== undefined;
/** True when open files can be closed at once on cancel (else the tar runs to its end unread). */
const FAST_CANCEL = SAFE_OPEN_INSTALLED && !!READ && !!ONREAD && !!CLOSE;
const OPEN_FLAGS = fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK;

interface OpenFile {
  fd: number;
  /** an fs.read on fd has not called back yet: closing now could hit a reused descriptor */
  inflight: boolean;
  closed: boolean;
}

/** The files one tar stream has open, so that a cancel can close them without racing tar. */
class OpenFiles {
  cancelled = false;
  readonly files = new Set<OpenFile>();
  close(f: OpenFile): void {
    if (f.closed) return;
    f.closed = true;
    this.files.delete(f);
    fsClose(f.fd, () => undefined);
  }
  cancel(): void {
    this.cancelled = true;
    for (const f of [...this.files]) if (!f.inflight) this.close(f);
  }
}

type Entry = WriteEntry & Record<symbol, unknown>;
type Method = (this: Entry, ...args: unknown[]) => void;

function installSafeOpen(
  entry: WriteEntry,
  listed: Stats,
  realRoot: string | undefined,
  open: OpenFiles,
): void {
  if (!OPENFILE || !ONOPENFILE) return;
  const e = entry as Entry;
  let file: OpenFile | undefined;
  if (FAST_CANCEL) {
    const read = e[READ!] as Method;
    const onread = e[ONREAD!] as Method;
    const close = e[CLOSE!] as Method;
    e[READ!] = function (this: Entry): void {
      if (open.cancelled || !file) {
        if (file) open.close(file);
        return; // the entry stalls, holding nothing
      }
      file.inflight = true;
      read.call(this);
    };
    e[ONREAD!] = function (this: Entry, n: unknown): void {
      if (file) file.inflight = false;
      if (open.cancelled) {
        if (file) open.close(file);
        return;
      }
      onread.call(this, n);
    };
    e[CLOSE!] = function (this: Entry, cb?: unknown): void {
      if (file?.closed) {
        if (typeof cb === 'function') (cb as () => void)();
        return;
      }
      if (file) {
        file.closed = true;
        open.files.delete(file);
      }
      close.call(this, cb);
    };
  }
  e[OPENFILE] = function safeOpen(this: Entry): void {
    fsOpen(this.absolute, OPEN_FLAGS, (er, fd) => {
      if (er) {
        const err =
          er.code === 'ELOOP'
            ? Object.assign(new Error(`${this.absolute} became a symlink after it was listed`), {
                path: this.absolute,
                code: 'ELOOP',
              })
            : er;
        this.emit('error', err);
        return;
      }
      const fail = (err: Error): void => fsClose(fd, () => this.emit('error', err));
      if (open.cancelled) {
        fsClose(fd, () => undefined);
        return;
      }
      fstat(fd, (er2, st) => {
        if (er2 || !st.isFile() || st.ino !== listed.ino || st.dev !== listed.dev) {
          fail(
            Object.assign(new Error(`${this.absolute} was replaced after it was listed`), {
              path: this.absolute,
            }),
          );
          return;
        }
        // And the descriptor must lie inside the root (a directory on the way may have been swapped).
        fdPath(fd, (actual) => {
          if (realRoot && actual !== undefined && !isInside(realRoot, actual)) {
            fail(
              Object.assign(
                new Error(`${this.absolute} resolved to ${actual}, outside the source root`),
                { path: this.absolute, code: 'EOUTSIDEROOT' },
              ),
            );
            return;
          }
          if (open.cancelled) {
            fsClose(fd, () => undefined);
            return;
          }
          if (FAST_CANCEL) {
            file = { fd, inflight: false, closed: false };
            open.files.add(file);
          }
          (this[ONOPENFILE!] as (fd: number) => void).call(this, fd);
        });
      });
    });
  };
}

function onWriteEntry(entry: WriteEntry, realRoot: string | undefined, open: OpenFiles): void {
  // Called by the tar package just before the header is encoded (after link detection).
  if (entry.stat) {
    if (entry.type === 'File') installSafeOpen(entry, entry.stat, realRoot, open);
    entry.stat = sanitizedStat(entry.stat);
  }
  entry.myuser = '';
  entry.mtime = FIXED_MTIME;
  entry.noMtime = false;
  entry.portable = false;
}

export interface TarOptions {
  /** tar's read size per file chunk; output bytes do not depend on it. */
  maxReadSize?: number;
  /** Real path of the source root: every file descriptor opened must point inside it. */
  realRoot?: string;
}

/** A ByteSource producing the deterministic tar of a walked layer directory. */
export function tarSource(
  dir: string,
  walk: LayerWalk,
  label: string,
  opts: TarOptions = {},
): ByteSource {
  let pack: Pack | undefined;
  let cancelled = false;
  const open = new OpenFiles();
  return {
    start(onData, onEnd, onError) {
      const p = new Pack({
        cwd: dir,
        portable: false,
        noDirRecurse: true,
        follow: false,
        strict: true,
        statCache: walk.stats,
        linkCache: new Map(walk.links) as Map<`${number}:${number}`, string>,
        mtime: FIXED_MTIME,
        // 4 MiB reads: a quarter of the thread-pool round trips into zlib of 1 MiB reads, which
        // shortened two layers at once by ~5-10% on 2 cores; one buffer per open file.
        maxReadSize: opts.maxReadSize ?? TAR_READ_SIZE,
        jobs: 4,
        onWriteEntry: (e: WriteEntry) => onWriteEntry(e, opts.realRoot, open),
      });
      pack = p;
      p.on('data', (c: Buffer) => {
        if (!cancelled) onData(c);
      });
      p.on('end', () => {
        if (!cancelled) onEnd();
      });
      p.on('error', (err: unknown) => {
        const e = err as Error;
        if (cancelled) return;
        const code = (e as NodeJS.ErrnoException).code;
        const path = (e as { path?: string }).path;
        onError(
          new SourceError(
            code === 'ENOENT'
              ? SourceErrorCodes.SOURCE_NOT_FOUND
              : code === 'EOUTSIDEROOT' || code === 'ELOOP'
                ? SourceErrorCodes.SOURCE_OUTSIDE_ROOT
                : SourceErrorCodes.UNSUPPORTED_FILE,
            `${label}: cannot tar ${path ?? 'an entry'}: ${e.message} (did the directory change while it was read?)`,
            label,
            { cause: e },
          ),
        );
      });
      p.on('warn', (code: string, message: string) => {
        if (!cancelled)
          onError(
            new SourceError(
              SourceErrorCodes.UNSUPPORTED_FILE,
              `${label}: tar: ${code} ${message}`,
              label,
            ),
          );
      });
      for (const path of walk.paths) p.add(path);
      p.end();
    },
    pause: () => pack?.pause(),
    resume: () => pack?.resume(),
    cancel() {
      if (cancelled) return;
      cancelled = true;
      pack?.on('error', () => undefined);
      if (FAST_CANCEL) {
        // Close every open file (each as soon as its read in flight, if any, returns); the
        // tar stream stalls with nothing open and is collected.
        open.cancel();
      } else {
        // Without the hooks: let tar run to the end unread, which closes every file.
        pack?.resume();
      }
    },
  };
}
