/**
 * A small tar reader that indexes an archive without extracting it: it reads
 * the 512-byte headers (ustar, GNU long names, PAX) and seeks past the
 * bodies, so a layer inside a `docker save` tarball can later be streamed as
 * a byte range of the file.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { posix } from 'node:path';
import { SourceError, SourceErrorCodes } from './errors';

export interface TarEntry {
  name: string;
  /** '0' file, '1' hard link, '2' symlink, '5' directory, ... */
  type: string;
  /** Offset of the body in the archive. */
  offset: number;
  size: number;
  linkname?: string;
}

function cstr(b: Buffer, start: number, len: number): string {
  const s = b.subarray(start, start + len);
  const z = s.indexOf(0);
  return (z < 0 ? s : s.subarray(0, z)).toString('utf8');
}

function num(b: Buffer, start: number, len: number): number {
  const f = b.subarray(start, start + len);
  if (f[0]! & 0x80) {
    // base-256 (GNU) for large values
    let v = 0;
    for (let i = 1; i < f.length; i++) v = v * 256 + f[i]!;
    v += (f[0]! & 0x7f) * 256 ** (f.length - 1);
    return v;
  }
  const s = cstr(f, 0, len).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new Error(`bad octal field ${JSON.stringify(s)}`);
  return parseInt(s, 8);
}

function parsePax(body: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 0;
  while (pos < body.length) {
    const sp = body.indexOf(0x20, pos);
    if (sp < 0) break;
    const len = parseInt(body.subarray(pos, sp).toString('ascii'), 10);
    if (!Number.isFinite(len) || len <= 0) break;
    const rec = body.subarray(sp + 1, pos + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    pos += len;
  }
  return out;
}

function normalizeName(n: string): string {
  let s = n;
  while (s.startsWith('./')) s = s.slice(2);
  return s.replace(/\/+$/, '');
}

/** Lists every entry of a tar file with the byte range of its body. */
export async function indexTar(
  file: string | (() => Promise<FileHandle>),
  label: string,
): Promise<Map<string, TarEntry>> {
  const fh = typeof file === 'string' ? await open(file, 'r') : await file();
  const entries = new Map<string, TarEntry>();
  const bad = (msg: string): SourceError =>
    new SourceError(
      SourceErrorCodes.MANIFEST_INVALID,
      `${label} is not a readable tar archive: ${msg}`,
      'source',
    );
  try {
    const { size: fileSize } = await fh.stat();
    const hdr = Buffer.alloc(512);
    const head = Buffer.alloc(4);
    await fh.read(head, 0, 4, 0);
    if ((head[0] === 0x1f && head[1] === 0x8b) || head.readUInt32LE(0) === 0xfd2fb528) {
      throw new SourceError(
        SourceErrorCodes.UNSUPPORTED_FILE,
        `${label} is a compressed tarball; Ferry reads docker-archives in place, so decompress it first (e.g. gunzip)`,
        'source',
      );
    }
    let pos = 0;
    let longName: string | undefined;
    let longLink: string | undefined;
    let pax: Record<string, string> = {};
    const readBody = async (offset: number, size: number): Promise<Buffer> => {
      if (size > 16 * 1024 * 1024) throw bad(`a metadata entry of ${size} bytes`);
      const b = Buffer.alloc(size);
      await fh.read(b, 0, size, offset);
      return b;
    };
    while (pos + 512 <= fileSize) {
      const { bytesRead } = await fh.read(hdr, 0, 512, pos);
      if (bytesRead < 512) throw bad(`truncated header at byte ${pos}`);
      if (hdr.every((x) => x === 0)) break; // end of archive
      let sum = 0;
      for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : hdr[i]!;
      let stored: number;
      try {
        stored = num(hdr, 148, 8);
      } catch {
        throw bad(`bad header checksum field at byte ${pos}`);
      }
      if (stored !== sum) throw bad(`header checksum mismatch at byte ${pos}`);
      const type = String.fromCharCode(hdr[156] || 0x30);
      let size: number;
      try {
        size = num(hdr, 124, 12);
      } catch (e) {
        throw bad(`${(e as Error).message} at byte ${pos}`);
      }
      if (pax.size !== undefined) size = Number(pax.size);
      const bodyOffset = pos + 512;
      if (bodyOffset + size > fileSize)
        throw bad(`entry at byte ${pos} runs past the end of the file`);
      const next = bodyOffset + Math.ceil(size / 512) * 512;
      if (type === 'L') longName = cstr(await readBody(bodyOffset, size), 0, size);
      else if (type === 'K') longLink = cstr(await readBody(bodyOffset, size), 0, size);
      else if (type === 'x') pax = { ...pax, ...parsePax(await readBody(bodyOffset, size)) };
      else if (type === 'g') {
        // global PAX header: nothing we need
      } else {
        const magic = hdr.subarray(257, 262).toString('ascii');
        const prefix = magic === 'ustar' ? cstr(hdr, 345, 155) : '';
        let name = cstr(hdr, 0, 100);
        if (prefix) name = prefix + '/' + name;
        name = pax.path ?? longName ?? name;
        const linkname = pax.linkpath ?? longLink ?? cstr(hdr, 157, 100);
        const e: TarEntry = { name: normalizeName(name), type, offset: bodyOffset, size };
        if (type === '1' || type === '2') e.linkname = linkname;
        entries.set(e.name, e);
        pax = {};
        longName = undefined;
        longLink = undefined;
      }
      pos = next;
    }
  } finally {
    await fh.close();
  }
  return entries;
}

/** Finds a regular-file entry by name, following symlinks and hard links inside the archive. */
export function lookupFile(entries: Map<string, TarEntry>, name: string): TarEntry | undefined {
  let n = normalizeName(posix.normalize(name));
  for (let hops = 0; hops < 16; hops++) {
    const e = entries.get(n);
    if (!e) return undefined;
    if (e.type === '0' || e.type === '\0' || e.type === '7') return e;
    if (e.type === '1' && e.linkname) n = normalizeName(posix.normalize(e.linkname));
    else if (e.type === '2' && e.linkname) {
      const target = posix.normalize(posix.join(posix.dirname(n), e.linkname));
      if (target.startsWith('../') || posix.isAbsolute(target)) return undefined;
      n = normalizeName(target);
    } else return undefined;
  }
  return undefined;
}
