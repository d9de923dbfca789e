/**
 * `docker-archive:PATH[:REF]` — a `docker save` tarball: manifest.json, a
 * config per image and one tar per layer, either in the legacy layout
 * (<id>/layer.tar, <id>.json) or the OCI-style one (blobs/sha256/<hex>).
 * Layers are streamed as byte ranges of the archive, never extracted.
 */
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import {
  MediaTypes,
  configDiffIds,
  formatPlatform,
  parsePlatform,
  platformMatches,
  sha256Digest,
} from '@ferry/manifest';
import { SourceError, SourceErrorCodes } from './errors';
import { READ_CHUNK_SIZE, fromReadable, hashOnly, runPipeline, type ByteSource } from './pipeline';
import { openInsideRoot } from './root';
import type { SourceSpec } from './spec';
import { indexTar, lookupFile, type TarEntry } from './tar-index';
import type { ImagePlatform, Layer, OpenOptions, OpenedSource, SourceImage } from './types';

interface ArchiveManifestEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

function invalid(message: string, field = 'manifest.json'): SourceError {
  return new SourceError(SourceErrorCodes.MANIFEST_INVALID, message, field);
}

type Opener = () => Promise<FileHandle>;

async function readEntry(
  archive: Opener,
  e: TarEntry,
  limit: number,
  what: string,
): Promise<Buffer> {
  if (e.size > limit) throw invalid(`${what} is ${e.size} bytes; the limit is ${limit}`, what);
  const fh = await archive();
  try {
    const b = Buffer.alloc(e.size);
    const { bytesRead } = await fh.read(b, 0, e.size, e.offset);
    if (bytesRead !== e.size) throw invalid(`${what} is truncated`, what);
    return b;
  } finally {
    await fh.close();
  }
}

/** The digest a name states: blobs/sha256/<hex>, <hex>.json, <hex>.tar or <hex>/layer.tar. */
function digestOfName(name: string): string | undefined {
  const m =
    /^blobs\/sha256\/([a-f0-9]{64})$/.exec(name) ??
    /^(?:sha256:)?([a-f0-9]{64})\.(?:json|tar)$/.exec(name);
  return m ? 'sha256:' + m[1] : undefined;
}

/** docker.io/library/busybox:latest, library/busybox, busybox → busybox:latest */
function normalizeRef(r: string): string {
  let s = r;
  if (s.startsWith('docker.io/')) s = s.slice('docker.io/'.length);
  if (s.startsWith('index.docker.io/')) s = s.slice('index.docker.io/'.length);
  if (s.startsWith('library/')) s = s.slice('library/'.length);
  const lastSlash = s.lastIndexOf('/');
  if (!s.slice(lastSlash + 1).includes(':')) s += ':latest';
  return s;
}

async function magic(archive: Opener, e: TarEntry): Promise<'gzip' | 'zstd' | 'tar'> {
  if (e.size < 4) return 'tar';
  const fh = await archive();
  try {
    const b = Buffer.alloc(4);
    await fh.read(b, 0, 4, e.offset);
    if (b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
    if (b.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
    return 'tar';
  } finally {
    await fh.close();
  }
}

async function rangeSource(archive: Opener, e: TarEntry): Promise<ByteSource> {
  const fh = await archive();
  if (e.size === 0) {
    await fh.close();
    return fromReadable(Readable.from([]));
  }
  return fromReadable(
    fh.createReadStream({
      start: e.offset,
      end: e.offset + e.size - 1,
      highWaterMark: READ_CHUNK_SIZE,
    }),
  );
}

export async function openDockerArchive(
  realPath: string,
  spec: SourceSpec,
  opts: OpenOptions,
): Promise<OpenedSource> {
  const level = opts.gzipLevel ?? 6;
  const label = `docker-archive:${spec.path}`;
  // Every read reopens the archive through the root check (never a path swapped for a symlink).
  const archive: Opener = () => openInsideRoot(opts.root, realPath, 'source');
  const entries = await indexTar(archive, label);
  const mEntry = lookupFile(entries, 'manifest.json');
  if (!mEntry) throw invalid(`${label} has no manifest.json; is it a \`docker save\` archive?`);
  let manifest: unknown;
  try {
    manifest = JSON.parse(
      (await readEntry(archive, mEntry, 4 * 1024 * 1024, 'manifest.json')).toString('utf8'),
    );
  } catch (e) {
    if (e instanceof SourceError) throw e;
    throw invalid(`manifest.json is not JSON: ${(e as Error).message}`);
  }
  if (!Array.isArray(manifest) || manifest.length === 0)
    throw invalid('manifest.json must be a non-empty array');
  const items = manifest as ArchiveManifestEntry[];
  items.forEach((it, i) => {
    if (typeof it?.Config !== 'string')
      throw invalid(`manifest.json[${i}].Config must be a string`, `manifest.json[${i}].Config`);
    if (!Array.isArray(it.Layers) || !it.Layers.every((l) => typeof l === 'string')) {
      throw invalid(
        `manifest.json[${i}].Layers must be an array of strings`,
        `manifest.json[${i}].Layers`,
      );
    }
  });

  let item: ArchiveManifestEntry;
  if (spec.ref?.startsWith('@')) {
    const n = Number(spec.ref.slice(1));
    if (!Number.isSafeInteger(n) || n < 0 || n >= items.length) {
      throw new SourceError(
        SourceErrorCodes.SOURCE_NOT_FOUND,
        `${label}: no image ${spec.ref} (it has ${items.length})`,
        'source',
      );
    }
    item = items[n]!;
  } else if (spec.ref) {
    const want = normalizeRef(spec.ref);
    const hits = items.filter((it) => (it.RepoTags ?? []).some((t) => normalizeRef(t) === want));
    if (hits.length === 0) {
      const tags = items.flatMap((it) => it.RepoTags ?? []);
      throw new SourceError(
        SourceErrorCodes.SOURCE_NOT_FOUND,
        `${label}: no image tagged ${spec.ref}` +
          (tags.length ? ` (it has ${tags.join(', ')})` : ' (no image has a tag)'),
        'source',
      );
    }
    item = hits[0]!;
  } else {
    if (items.length > 1) {
      throw new SourceError(
        SourceErrorCodes.BAD_SOURCE,
        `${label} holds ${items.length} images; name one as docker-archive:PATH:NAME:TAG or :@INDEX`,
        'source',
      );
    }
    item = items[0]!;
  }

  const cEntry = lookupFile(entries, item.Config);
  if (!cEntry) throw invalid(`config ${item.Config} named in manifest.json is not in the archive`);
  const configBytes = await readEntry(archive, cEntry, 4 * 1024 * 1024, item.Config);
  const statedConfig = digestOfName(item.Config);
  if (statedConfig && sha256Digest(configBytes) !== statedConfig) {
    throw new SourceError(
      SourceErrorCodes.BLOB_DIGEST_MISMATCH,
      `config ${item.Config} in ${label} is corrupt: it hashes to ${sha256Digest(configBytes)}`,
      statedConfig,
    );
  }
  let diffIds: string[];
  try {
    diffIds = configDiffIds(configBytes);
  } catch (e) {
    throw invalid(`config ${item.Config}: ${(e as Error).message}`, item.Config);
  }
  if (diffIds.length !== item.Layers.length) {
    throw invalid(
      `manifest.json lists ${item.Layers.length} layers but config ${item.Config} has ${diffIds.length} diff_ids`,
    );
  }
  let platform: ImagePlatform | undefined;
  try {
    const c = JSON.parse(configBytes.toString('utf8')) as Record<string, unknown>;
    if (typeof c.os === 'string' && typeof c.architecture === 'string') {
      platform = {
        os: c.os,
        architecture: c.architecture,
        ...(typeof c.variant === 'string' ? { variant: c.variant } : {}),
      };
    }
  } catch {
    // unreachable: configDiffIds parsed it
  }
  if (opts.platform) {
    const want = parsePlatform(opts.platform);
    if (!platformMatches(platform, want)) {
      throw new SourceError(
        SourceErrorCodes.PLATFORM_NOT_FOUND,
        `platform ${opts.platform} not found: ${label} is ${platform ? formatPlatform(platform) : 'of unknown platform'}`,
        'platform',
      );
    }
  }

  const n = item.Layers.length;
  const layers: Layer[] = [];
  for (const [index, name] of item.Layers.entries()) {
    const e = lookupFile(entries, name);
    if (!e) throw invalid(`layer ${name} named in manifest.json is not in the archive`);
    const kind = await magic(archive, e);
    const description = `${name} (layer ${index + 1}/${n})`;
    const diffId = diffIds[index]!;
    const statedDigest = digestOfName(name);
    if (kind === 'zstd') {
      throw new SourceError(
        SourceErrorCodes.UNSUPPORTED_FILE,
        `${label}: ${name} is zstd-compressed, which Ferry cannot read`,
        name,
      );
    }
    const layer: Layer = {
      index,
      mediaType: MediaTypes.dockerLayerGzip,
      diffId,
      description,
      async open(offset = 0) {
        if (kind === 'gzip') {
          return runPipeline({
            source: await rangeSource(archive, e),
            mode: { kind: 'passthrough', content: 'gzip' },
            offset,
            description,
            expect: { diffId, size: e.size, ...(statedDigest ? { digest: statedDigest } : {}) },
          });
        }
        // An uncompressed tar: gzip it; a file named by its digest must also hash to that name.
        if (statedDigest && statedDigest !== diffId) {
          throw new SourceError(
            SourceErrorCodes.DIFFID_MISMATCH,
            `${label}: uncompressed layer ${name} is named ${statedDigest} but the config states ${diffId}`,
            name,
          );
        }
        return runPipeline({
          source: await rangeSource(archive, e),
          mode: { kind: 'gzip', level },
          offset,
          description,
          expect: { diffId },
        });
      },
      diffIdOnly: async () => hashOnly(await rangeSource(archive, e), kind === 'gzip', description),
    };
    if (kind === 'gzip') {
      layer.size = e.size;
      if (statedDigest) layer.digest = statedDigest;
    }
    layers.push(layer);
  }
  const img: SourceImage = { layers, configBytes, configMediaType: MediaTypes.dockerConfig };
  if (platform) img.platform = platform;
  return { spec, images: [img], realPath };
}
