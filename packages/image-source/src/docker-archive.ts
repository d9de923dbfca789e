/**
 * `docker-archive:PATH[:REF]` — a `docker save` tarball: manifest.json, a
 * config per image and one tar per layer, either in the legacy layout
 * (<id>/layer.tar, <id>.json) or the OCI-style one (blobs/sha256/<hex>).
 * Layers are streamed as byte ranges of the archive, never extracted.
 */
import type { FileHandle } from 'node:fs/promises';
import {
  MediaTypes,
  configDiffIds,
  formatPlatform,
  parsePlatform,
  platformMatches,
  sha256Digest,
} from '@ferry/manifest';
import { SourceError, SourceErrorCodes } from './errors';
import { hashOnly, runPipeline, type ByteSource } from './pipeline';
import { fileSource } from './read-pool';
import { openInsideRoot } from './root';
import { sourceChanged, type DockerArchiveSnapshot, type FileIdentity } from './snapshot';
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
  return fileSource(await archive(), { start: e.offset, end: e.offset + e.size });
}

/** The identity of the file open as `fh` (fstat of that very descriptor). */
async function identityOf(fh: FileHandle): Promise<FileIdentity> {
  const st = await fh.stat({ bigint: true });
  return {
    dev: String(st.dev),
    ino: String(st.ino),
    size: Number(st.size),
    mtimeNs: String(st.mtimeNs),
  };
}

/**
 * An opener that reopens the archive through the root check for every read (never a path
 * swapped for a symlink) and refuses a descriptor whose identity is not the pinned one: the
 * snapshot's, or else that of the first open. Every byte read comes from one and the same file.
 */
function pinnedOpener(
  root: string,
  realPath: string,
  label: string,
  pinned: FileIdentity | undefined,
  since: string,
): { open: Opener; identity: () => FileIdentity | undefined } {
  let id = pinned;
  const open: Opener = async () => {
    const fh = await openInsideRoot(root, realPath, 'source');
    try {
      const now = await identityOf(fh);
      if (!id) id = now;
      else if (
        now.dev !== id.dev ||
        now.ino !== id.ino ||
        now.size !== id.size ||
        now.mtimeNs !== id.mtimeNs
      ) {
        const how =
          now.dev !== id.dev || now.ino !== id.ino ? 'replaced by another file' : 'modified';
        throw sourceChanged(`archive ${label} was ${how} ${since}`, 'source');
      }
      return fh;
    } catch (e) {
      await fh.close();
      throw e;
    }
  };
  return { open, identity: () => id };
}

/** Reads and checks manifest.json: a non-empty array of {Config, Layers}. */
async function readArchiveManifest(
  archive: Opener,
  entries: Map<string, TarEntry>,
  label: string,
): Promise<{ items: ArchiveManifestEntry[]; digest: string }> {
  const mEntry = lookupFile(entries, 'manifest.json');
  if (!mEntry) throw invalid(`${label} has no manifest.json; is it a \`docker save\` archive?`);
  const bytes = await readEntry(archive, mEntry, 4 * 1024 * 1024, 'manifest.json');
  let manifest: unknown;
  try {
    manifest = JSON.parse(bytes.toString('utf8'));
  } catch (e) {
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
  return { items, digest: sha256Digest(bytes) };
}

/** The image the spec's REF names (`@N` or a tag), or the only one. */
function pickItem(
  items: ArchiveManifestEntry[],
  spec: SourceSpec,
  label: string,
): ArchiveManifestEntry {
  if (spec.ref?.startsWith('@')) {
    const n = Number(spec.ref.slice(1));
    if (!Number.isSafeInteger(n) || n < 0 || n >= items.length) {
      throw new SourceError(
        SourceErrorCodes.SOURCE_NOT_FOUND,
        `${label}: no image ${spec.ref} (it has ${items.length})`,
        'source',
      );
    }
    return items[n]!;
  }
  if (spec.ref) {
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
    return hits[0]!;
  }
  if (items.length > 1) {
    throw new SourceError(
      SourceErrorCodes.BAD_SOURCE,
      `${label} holds ${items.length} images; name one as docker-archive:PATH:NAME:TAG or :@INDEX`,
      'source',
    );
  }
  return items[0]!;
}

/** Reads the config, checks it against its name and its diff_ids against the layer count. */
async function readConfig(
  archive: Opener,
  entries: Map<string, TarEntry>,
  item: ArchiveManifestEntry,
  label: string,
): Promise<{ configBytes: Buffer; diffIds: string[]; platform?: ImagePlatform }> {
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
  // configDiffIds parsed it: JSON.parse cannot throw here.
  const c = JSON.parse(configBytes.toString('utf8')) as Record<string, unknown>;
  if (typeof c.os !== 'string' || typeof c.architecture !== 'string')
    return { configBytes, diffIds };
  const platform: ImagePlatform = {
    os: c.os,
    architecture: c.architecture,
    ...(typeof c.variant === 'string' ? { variant: c.variant } : {}),
  };
  return { configBytes, diffIds, platform };
}

interface ArchiveLayerContext {
  archive: Opener;
  label: string;
  level: number;
  n: number;
}

/** One layer: a byte range of the archive, gzipped ones passed through, tars gzipped; diffIDs checked. */
async function archiveLayer(
  ctx: ArchiveLayerContext,
  e: TarEntry,
  name: string,
  index: number,
  diffId: string,
): Promise<Layer> {
  const { archive, label, level } = ctx;
  const kind = await magic(archive, e);
  const description = `${name} (layer ${index + 1}/${ctx.n})`;
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
  return layer;
}

function checkPlatform(
  platform: ImagePlatform | undefined,
  want: string | undefined,
  label: string,
): void {
  if (want && !platformMatches(platform, parsePlatform(want))) {
    throw new SourceError(
      SourceErrorCodes.PLATFORM_NOT_FOUND,
      `platform ${want} not found: ${label} is ${platform ? formatPlatform(platform) : 'of unknown platform'}`,
      'platform',
    );
  }
}

export async function openDockerArchive(
  realPath: string,
  spec: SourceSpec,
  opts: OpenOptions,
): Promise<OpenedSource> {
  const label = `docker-archive:${spec.path}`;
  const snap = opts.snapshot as DockerArchiveSnapshot | undefined;
  const since = snap ? 'since the push was accepted' : 'while it was opened';
  const pinned = pinnedOpener(opts.root, realPath, label, snap?.archive, since);
  const archive = pinned.open;
  const entries = await indexTar(archive, label);
  const { items, digest: manifestJson } = await readArchiveManifest(archive, entries, label);
  if (snap && manifestJson !== snap.manifestJson)
    throw sourceChanged(`archive ${label}: manifest.json changed ${since}`, 'source');
  const item = pickItem(items, spec, label);
  const { configBytes, diffIds, platform } = await readConfig(archive, entries, item, label);
  const configDigest = sha256Digest(configBytes);
  if (snap && (snap.configs.length !== 1 || snap.configs[0] !== configDigest))
    throw sourceChanged(`archive ${label}: the image config changed ${since}`, 'source');
  checkPlatform(platform, opts.platform, label);
  const ctx: ArchiveLayerContext = {
    archive,
    label,
    level: opts.gzipLevel ?? 6,
    n: item.Layers.length,
  };
  const layers: Layer[] = [];
  for (const [index, name] of item.Layers.entries()) {
    const e = lookupFile(entries, name);
    if (!e) throw invalid(`layer ${name} named in manifest.json is not in the archive`);
    layers.push(await archiveLayer(ctx, e, name, index, diffIds[index]!));
  }
  const img: SourceImage = { layers, configBytes, configMediaType: MediaTypes.dockerConfig };
  if (platform) img.platform = platform;
  const snapshot: DockerArchiveSnapshot = {
    kind: 'docker-archive',
    archive: pinned.identity()!,
    manifestJson,
    configs: [configDigest],
  };
  return { spec, images: [img], realPath, snapshot };
}
