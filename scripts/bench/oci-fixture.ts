/**
 * OCI image layouts for the push benchmarks, written blob by blob (no tool
 * needed): each layer is a real ustar archive (one file per layer, half
 * incompressible and half word-salad text by default), gzip-compressed, its
 * digest and diffID computed while it is written.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, renameSync, writeFileSync, createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import * as zlib from 'node:zlib';

const MB = 1024 * 1024;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

/** A ustar header block for one regular file (mtime 0, uid/gid 0). */
function tarHeader(name: string, size: number): Buffer {
  const h = Buffer.alloc(512);
  const put = (s: string, off: number, len: number) => h.write(s, off, len, 'latin1');
  const oct = (n: number, len: number) => n.toString(8).padStart(len - 1, '0') + '\0';
  put(name, 0, 100);
  put(oct(0o644, 8), 100, 8);
  put(oct(0, 8), 108, 8);
  put(oct(0, 8), 116, 8);
  put(oct(size, 12), 124, 12);
  put(oct(0, 12), 136, 12);
  put('        ', 148, 8);
  put('0', 156, 1);
  put('ustar\0', 257, 6);
  put('00', 263, 2);
  let sum = 0;
  for (const b of h) sum += b;
  put(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8);
  return h;
}

let salad: Buffer | undefined;
/** 4 MiB of random words: compresses about 3–4× at gzip -1, unlike a repeated block. */
export function textSource(): Buffer {
  if (salad) return salad;
  const words = Array.from({ length: 4096 }, () =>
    randomBytes(2 + (randomBytes(1)[0]! % 8))
      .toString('base64')
      .replace(/[^a-z]/gi, 'e')
      .toLowerCase(),
  );
  const parts: string[] = [];
  let n = 0;
  const r = randomBytes(4 * MB);
  for (let i = 0; n < 4 * MB; i += 2) {
    const w =
      words[r.readUInt16LE(i % (r.length - 2)) % words.length]! + (i % 24 === 0 ? '\n' : ' ');
    parts.push(w);
    n += w.length;
  }
  salad = Buffer.from(parts.join('').slice(0, 4 * MB));
  return salad;
}

/** Writes bytes to the blob store, returning its descriptor (sha256 over what was written). */
function writeBlob(layout: string, mediaType: string, data: Buffer | string): Descriptor {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const hex = createHash('sha256').update(buf).digest('hex');
  writeFileSync(join(layout, 'blobs', 'sha256', hex), buf);
  return { mediaType, digest: `sha256:${hex}`, size: buf.length };
}

/**
 * One gzip layer holding a single file of `bytes` bytes, `randomFraction` of
 * it incompressible. Returns the blob's descriptor and the diffID.
 */
async function writeLayer(
  layout: string,
  name: string,
  bytes: number,
  randomFraction: number,
): Promise<{ desc: Descriptor; diffId: string }> {
  const tmp = join(layout, 'blobs', 'sha256', `.tmp-${randomBytes(6).toString('hex')}`);
  const out = createWriteStream(tmp);
  const gz = zlib.createGzip({ level: 1 });
  const diff = createHash('sha256');
  const dig = createHash('sha256');
  let size = 0;
  gz.on('data', (c: Buffer) => {
    dig.update(c);
    size += c.length;
    if (!out.write(c)) gz.pause();
  });
  out.on('drain', () => gz.resume());
  const gzEnd = once(gz, 'end');
  const feed = async (b: Buffer) => {
    diff.update(b);
    if (!gz.write(b)) await once(gz, 'drain');
  };
  await feed(tarHeader(name, bytes));
  const text = textSource();
  let toff = randomBytes(4).readUInt32LE() % text.length;
  for (let off = 0; off < bytes; off += MB) {
    const n = Math.min(MB, bytes - off);
    // Alternate random and text chunks in the ratio asked for.
    const wantRandom =
      Math.floor(((off + n) / MB) * randomFraction) > Math.floor((off / MB) * randomFraction);
    if (wantRandom || randomFraction >= 1) await feed(randomBytes(n));
    else {
      const b = Buffer.allocUnsafe(n);
      for (let w = 0; w < n;) {
        const k = Math.min(n - w, text.length - toff);
        text.copy(b, w, toff, toff + k);
        w += k;
        toff = (toff + k) % text.length;
      }
      await feed(b);
    }
  }
  const pad = (512 - (bytes % 512)) % 512;
  await feed(Buffer.alloc(pad + 1024));
  gz.end();
  await gzEnd;
  out.end();
  await once(out, 'finish');
  const hex = dig.digest('hex');
  renameSync(tmp, join(layout, 'blobs', 'sha256', hex));
  return {
    desc: {
      mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
      digest: `sha256:${hex}`,
      size,
    },
    diffId: `sha256:${diff.digest('hex')}`,
  };
}

function writeImage(
  layout: string,
  layers: { desc: Descriptor; diffId: string }[],
  label: string,
): Descriptor {
  const config = writeBlob(
    layout,
    'application/vnd.oci.image.config.v1+json',
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Labels: { 'ferry.bench': label } },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    }),
  );
  return writeBlob(
    layout,
    'application/vnd.oci.image.manifest.v1+json',
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config,
      layers: layers.map((l) => l.desc),
    }),
  );
}

function initLayout(layout: string): void {
  mkdirSync(join(layout, 'blobs', 'sha256'), { recursive: true });
  writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
}

function writeIndex(layout: string, manifests: { desc: Descriptor; ref: string }[]): void {
  writeFileSync(
    join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: manifests.map((m) => ({
        ...m.desc,
        annotations: { 'org.opencontainers.image.ref.name': m.ref },
      })),
    }),
  );
}

export interface OciFixture {
  layout: string;
  /** Layer blobs: path, descriptor, the config's diff_id. */
  layers: { path: string; desc: Descriptor; diffId: string }[];
  rawBytes: number;
  gzipBytes: number;
}

/** An OCI layout with one image (ref `latest`) of `count` layers of `layerBytes` each. */
export async function makeOciLayout(
  layout: string,
  count: number,
  layerBytes: number,
  randomFraction = 0.4,
): Promise<OciFixture> {
  initLayout(layout);
  const made: { desc: Descriptor; diffId: string }[] = [];
  for (let i = 0; i < count; i++) {
    made.push(await writeLayer(layout, `layer${i}/data.bin`, layerBytes, randomFraction));
  }
  const manifest = writeImage(layout, made, 'oci-push');
  writeIndex(layout, [{ desc: manifest, ref: 'latest' }]);
  return {
    layout,
    layers: made.map((l) => ({
      path: join(layout, 'blobs', 'sha256', l.desc.digest.slice(7)),
      desc: l.desc,
      diffId: l.diffId,
    })),
    rawBytes: count * layerBytes,
    gzipBytes: made.reduce((a, l) => a + l.desc.size, 0),
  };
}

/**
 * `count` one-image OCI layouts (DIR/0, DIR/1, …; ref `latest`), each image
 * one distinct tiny layer — separate layouts, as separate builds leave them
 * (one layout holding every image would make each push parse an index of
 * `count` entries). Returns the sources, `oci:DIR/i:latest`.
 */
export async function makeManySmall(
  dir: string,
  count: number,
  layerBytes = 1024,
): Promise<string[]> {
  const sources: string[] = [];
  for (let i = 0; i < count; i++) {
    const layout = join(dir, String(i));
    initLayout(layout);
    const l = await writeLayer(layout, `small/${i}.bin`, layerBytes, 1);
    writeIndex(layout, [{ desc: writeImage(layout, [l], `small-${i}`), ref: 'latest' }]);
    sources.push(`oci:${layout}:latest`);
  }
  return sources;
}
