/** Test helpers: build images in temp dirs, drain layer streams, write OCI layouts. */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  buildConfig,
  buildIndex,
  buildManifest,
  canonicalJson,
  descriptorOf,
  MediaTypes,
  type Descriptor,
} from '@ferry/manifest';
import type { Layer, LayerResult, LayerStream, SourceImage } from '@ferry/image-source';

export const sha256 = (b: Buffer | string): string =>
  'sha256:' + createHash('sha256').update(b).digest('hex');

/** Reads a whole layer stream and its result. */
export async function drain(ls: LayerStream): Promise<{ bytes: Buffer; result: LayerResult }> {
  const chunks: Buffer[] = [];
  for await (const c of ls.stream) chunks.push(c as Buffer);
  return { bytes: Buffer.concat(chunks), result: await ls.done };
}

/** Reads a layer stream, expecting it to fail; returns the error (from the stream, and checks done agrees). */
export async function drainError(ls: LayerStream): Promise<{ error: Error; received: Buffer }> {
  const chunks: Buffer[] = [];
  try {
    for await (const c of ls.stream) chunks.push(c as Buffer);
  } catch (e) {
    await ls.done.then(
      () => {
        throw new Error('done resolved although the stream failed');
      },
      () => undefined,
    );
    return { error: e as Error, received: Buffer.concat(chunks) };
  }
  throw new Error(`stream ended without an error after ${Buffer.concat(chunks).length} bytes`);
}

/** Deterministic pseudo-random but compressible text. */
export function textBytes(n: number, seed = 1): Buffer {
  const words = [
    'alpha',
    'beta',
    'gamma',
    'delta',
    'layer',
    'ferry',
    'image',
    'registry',
    'blob',
    'digest',
  ];
  let x = seed;
  const parts: string[] = [];
  let len = 0;
  while (len < n) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    const w = words[x % words.length]! + (x % 7 === 0 ? '\n' : ' ');
    parts.push(w);
    len += w.length;
  }
  return Buffer.from(parts.join('')).subarray(0, n);
}

export type TreeSpec = Record<string, string | Buffer | { symlink: string } | { dir: true }>;

/** Writes files (parents created) under base; insertion order = creation order. */
export function writeTree(base: string, tree: TreeSpec): void {
  for (const [rel, v] of Object.entries(tree)) {
    const p = join(base, rel);
    mkdirSync(dirname(p), { recursive: true });
    if (typeof v === 'string' || Buffer.isBuffer(v)) writeFileSync(p, v);
    else if ('symlink' in v) require('node:fs').symlinkSync(v.symlink, p);
    else mkdirSync(p, { recursive: true });
  }
}

/** A small two-layer dir: image. */
export function makeDirImage(
  imageDir: string,
  opts: { config?: unknown; big?: number } = {},
): void {
  writeTree(join(imageDir, 'layers', '01-base'), {
    'etc/os-release': 'NAME=ferry-test\n',
    'usr/share/doc/readme.txt': textBytes(200_000, 3),
    'bin/tool': randomBytesSeeded(30_000, 9),
    'empty/': { dir: true },
  });
  writeTree(join(imageDir, 'layers', '02-app'), {
    'app/main.js': 'console.log("hello")\n',
    'app/data.bin': textBytes(opts.big ?? 300_000, 5),
    'app/link-to-main': { symlink: 'main.js' },
  });
  if (opts.config !== undefined)
    writeFileSync(join(imageDir, 'config.json'), JSON.stringify(opts.config));
}

/** Reproducible "random" bytes (sha256 counter stream). */
export function randomBytesSeeded(n: number, seed: number): Buffer {
  const out = Buffer.alloc(n);
  let off = 0;
  let i = 0;
  while (off < n) {
    const h = createHash('sha256').update(`${seed}:${i++}`).digest();
    off += h.copy(out, off);
  }
  return out;
}

export { randomBytes };

export interface WrittenImage {
  manifest: Descriptor;
  config: Descriptor;
  layers: { digest: string; size: number; diffId: string }[];
}

/**
 * Writes an image from a source (e.g. a dir: image) into an OCI layout by
 * hand: blobs from Layer.open(), a config built with buildConfig, a manifest,
 * and index.json (refName annotation, optional platform on the descriptor).
 */
export async function writeOciImage(
  layoutDir: string,
  image: SourceImage,
  opts: {
    refName?: string;
    platform?: { os: string; architecture: string; variant?: string };
    writeIndex?: boolean;
  } = {},
): Promise<WrittenImage> {
  await mkdir(join(layoutDir, 'blobs', 'sha256'), { recursive: true });
  writeFileSync(join(layoutDir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const layers: WrittenImage['layers'] = [];
  for (const l of image.layers as Layer[]) {
    const { bytes, result } = await drain(await l.open());
    await writeFile(join(layoutDir, 'blobs', 'sha256', result.digest.slice(7)), bytes);
    layers.push({ digest: result.digest, size: result.size, diffId: result.diffId });
  }
  const fields = { ...(image.configFields ?? {}), ...(opts.platform ?? {}) };
  const config = buildConfig(
    fields,
    layers.map((l) => l.diffId),
  );
  await writeFile(join(layoutDir, 'blobs', 'sha256', config.digest.slice(7)), config.bytes);
  const manifest = buildManifest(
    'oci',
    descriptorOf(config),
    layers.map((l) => ({ mediaType: MediaTypes.ociLayerGzip, digest: l.digest, size: l.size })),
  );
  await writeFile(join(layoutDir, 'blobs', 'sha256', manifest.digest.slice(7)), manifest.bytes);
  const desc: Descriptor = descriptorOf(manifest);
  if (opts.refName) desc.annotations = { 'org.opencontainers.image.ref.name': opts.refName };
  if (opts.platform) desc.platform = opts.platform;
  if (opts.writeIndex !== false) {
    await writeFile(
      join(layoutDir, 'index.json'),
      canonicalJson({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [desc] }),
    );
  }
  return { manifest: desc, config: descriptorOf(config), layers };
}

/** Writes a multi-platform index blob over given manifests and points index.json at it. */
export async function writeOciIndex(
  layoutDir: string,
  manifests: Descriptor[],
  refName?: string,
): Promise<Descriptor> {
  const idx = buildIndex('oci', manifests);
  await writeFile(join(layoutDir, 'blobs', 'sha256', idx.digest.slice(7)), idx.bytes);
  const desc: Descriptor = descriptorOf(idx);
  if (refName) desc.annotations = { 'org.opencontainers.image.ref.name': refName };
  await writeFile(
    join(layoutDir, 'index.json'),
    canonicalJson({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [desc] }),
  );
  return desc;
}
