/**
 * Tar header blocks for one entry: a ustar header (encoded by the tar
 * package's public `Header` class), preceded when needed by a PAX extended
 * header ('x'). A PAX header is written when a field does not fit ustar
 * (long or non-ASCII path or link target, size ≥ 8 GiB, large uid/gid) or the
 * entry carries a file capability. Its records are those tar 7 wrote for such
 * entries — path, gid, linkpath, mtime, size, uid, uname — so layers without
 * capabilities keep the bytes (and digests) of earlier Ferry versions, then
 * `SCHILY.xattr.<name>` records with the raw attribute bytes, as docker's
 * and containerd's layers carry them.
 */
import { basename } from 'node:path';
import { Header } from 'tar';

export type TarType = 'File' | 'Directory' | 'SymbolicLink' | 'Link';

export interface TarHeaderFields {
  /** Entry path; directories end with "/". */
  path: string;
  type: TarType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Whole seconds since the epoch. */
  mtime: number;
  linkpath?: string;
  /** Extended attributes to store as SCHILY.xattr records, name → raw value. */
  xattrs?: Map<string, Buffer>;
}

const BLOCK = 512;

/** One PAX record: "<len> <key>=<value>\n", len counting its own digits. */
function paxRecord(key: string, value: Buffer | string): Buffer {
  const v = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  const rest = Buffer.byteLength(` ${key}=`) + v.length + 1;
  let digits = String(rest).length;
  if (String(rest + digits).length > digits) digits += 1;
  return Buffer.concat([Buffer.from(`${rest + digits} ${key}=`, 'utf8'), v, Buffer.from('\n')]);
}

function paxBody(f: TarHeaderFields): Buffer {
  const recs: Buffer[] = [paxRecord('path', f.path), paxRecord('gid', String(f.gid))];
  if (f.linkpath !== undefined) recs.push(paxRecord('linkpath', f.linkpath));
  recs.push(
    paxRecord('mtime', String(f.mtime)),
    paxRecord('size', String(f.size)),
    paxRecord('uid', String(f.uid)),
    paxRecord('uname', ''),
  );
  const names = [...(f.xattrs?.keys() ?? [])].sort();
  for (const n of names) recs.push(paxRecord(`SCHILY.xattr.${n}`, f.xattrs!.get(n)!));
  return Buffer.concat(recs);
}

function ustar(f: TarHeaderFields): { block: Buffer; needPax: boolean } {
  const h = new Header({
    path: f.path,
    type: f.type,
    mode: f.mode,
    uid: f.uid,
    gid: f.gid,
    size: f.size,
    mtime: new Date(f.mtime * 1000),
    uname: '',
    ...(f.linkpath !== undefined ? { linkpath: f.linkpath } : {}),
  });
  const block = Buffer.alloc(BLOCK);
  const needPax = h.encode(block, 0);
  return { block, needPax };
}

/** Zero bytes that pad `size` bytes of content to a whole block. */
export function padding(size: number): Buffer {
  const r = size % BLOCK;
  return Buffer.alloc(r === 0 ? 0 : BLOCK - r);
}

/** The two zero blocks that end an archive. */
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);

/** The header block(s) of one entry: [PAX header + body + padding] + ustar header. */
export function encodeHeaders(f: TarHeaderFields): Buffer {
  const { block, needPax } = ustar(f);
  if (!needPax && !(f.xattrs && f.xattrs.size > 0)) return block;
  const body = paxBody(f);
  const pax = new Header({
    path: ('PaxHeader/' + basename(f.path)).slice(0, 99),
    mode: 0o644,
    uid: f.uid,
    gid: f.gid,
    size: body.length,
    mtime: new Date(f.mtime * 1000),
    type: 'ExtendedHeader',
    linkpath: '',
    uname: '',
    gname: '',
    devmaj: 0,
    devmin: 0,
  });
  const paxBlock = Buffer.alloc(BLOCK);
  pax.encode(paxBlock, 0);
  return Buffer.concat([paxBlock, body, padding(body.length), block]);
}
