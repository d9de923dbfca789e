/**
 * Lists a dir: layer directory in archive order (depth first, names sorted
 * bytewise) without ever following a symlink, and digests the listing: every
 * attribute whose change means the layer's tar may differ.
 */
import { createHash } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { SourceError, SourceErrorCodes } from './errors';

export type WalkType = 'file' | 'dir' | 'symlink' | 'hardlink';

export interface WalkEntry {
  /** Path relative to the layer directory (no trailing slash). */
  rel: string;
  abs: string;
  type: WalkType;
  /** Permission bits and setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Bytes of a regular file's content; 0 for everything else. */
  size: number;
  mtimeMs: number;
  dev: bigint;
  ino: bigint;
  /** symlink: its target as read when listed; hardlink: the relative path of the first name. */
  link?: string;
  stats: BigIntStats;
}

export interface LayerWalk {
  entries: WalkEntry[];
  /** Entries left out (sockets, devices, FIFOs), relative paths. */
  skipped: string[];
  /** sha256 of the listing (see listingDigest). */
  digest: string;
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

function kindOf(st: BigIntStats): string {
  if (st.isSocket()) return 'socket';
  if (st.isFIFO()) return 'FIFO';
  if (st.isBlockDevice()) return 'block device';
  if (st.isCharacterDevice()) return 'character device';
  return 'special file';
}

async function sortedNames(absDir: string, relDir: string, label: string): Promise<string[]> {
  const names = await readdir(absDir, { encoding: 'buffer' });
  names.sort(Buffer.compare);
  return names.map((raw) => {
    const name = raw.toString('utf8');
    if (!Buffer.from(name, 'utf8').equals(raw)) {
      const shown = (relDir ? relDir + '/' : '') + printable(raw);
      throw new SourceError(
        SourceErrorCodes.UNSUPPORTED_FILE,
        `${label}: file name "${shown}" is not valid UTF-8; tar (PAX) names must be UTF-8 — rename it`,
        `${label}/${shown}`,
      );
    }
    return name;
  });
}

/**
 * Lists a layer directory in archive order. Every entry is lstat'ed and
 * directories are entered only when lstat says they are directories;
 * symlink targets are read here, once. Of a file with several names, the
 * first in archive order keeps the content and later ones become hard links.
 */
export async function walkLayer(dir: string, label: string, warn?: WarnFn): Promise<LayerWalk> {
  const entries: WalkEntry[] = [];
  const skipped: string[] = [];
  const firstName = new Map<string, string>();
  const visit = async (absDir: string, relDir: string): Promise<void> => {
    const names = await sortedNames(absDir, relDir, label);
    const stats = await Promise.all(names.map((n) => lstat(join(absDir, n), { bigint: true })));
    for (const [i, name] of names.entries()) {
      const rel = relDir ? `${relDir}/${name}` : name;
      const abs = join(absDir, name);
      const st = stats[i]!;
      let type: WalkType;
      let link: string | undefined;
      if (st.isFile()) {
        const key = `${st.dev}:${st.ino}`;
        link = st.nlink > 1n ? firstName.get(key) : undefined;
        if (st.nlink > 1n && link === undefined) firstName.set(key, rel);
        type = link === undefined ? 'file' : 'hardlink';
      } else if (st.isDirectory()) type = 'dir';
      else if (st.isSymbolicLink()) {
        type = 'symlink';
        link = await readlink(abs);
      } else {
        skipped.push(rel);
        warn?.(`${label}: skipping ${kindOf(st)} ${rel} (not stored in layers)`, rel);
        continue;
      }
      entries.push({
        rel,
        abs,
        type,
        mode: Number(st.mode & 0o7777n),
        uid: Number(st.uid),
        gid: Number(st.gid),
        size: type === 'file' ? Number(st.size) : 0,
        mtimeMs: Number(st.mtimeNs / 1_000_000n),
        dev: st.dev,
        ino: st.ino,
        ...(link !== undefined ? { link } : {}),
        stats: st,
      });
      if (type === 'dir') await visit(abs, rel);
    }
  };
  await visit(dir, '');
  return { entries, skipped, digest: listingDigest(entries) };
}

/**
 * sha256 over the listing in archive order: relative path, type, mode, uid,
 * gid, size, mtime and ctime (ns), device and inode, link target. A file
 * edited in place changes its mtime/ctime; replaced, its inode; a capability
 * or owner set, its ctime — so an equal digest means the tar is the same.
 */
export function listingDigest(entries: WalkEntry[]): string {
  const h = createHash('sha256');
  for (const e of entries) {
    const s = e.stats;
    h.update(
      JSON.stringify([
        e.rel,
        e.type,
        e.mode,
        e.uid,
        e.gid,
        String(s.size),
        String(s.mtimeNs),
        String(s.ctimeNs),
        String(s.dev),
        String(s.ino),
        e.link ?? null,
      ]) + '\n',
    );
  }
  return 'sha256:' + h.digest('hex');
}
