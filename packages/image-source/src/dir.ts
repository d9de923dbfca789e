/**
 * `dir:PATH` — PATH/layers/<name>/ in lexical order, optional PATH/config.json.
 * The snapshot records the layer names, config.json's digest and each layer's
 * listing digest; a layer is read only while its listing still matches, and
 * is checked again after its bytes were produced.
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  MediaTypes,
  ManifestError,
  parsePlatform,
  platformMatches,
  sha256Digest,
  validateConfigFields,
  formatPlatform,
} from '@ferry/manifest';
import { DEFAULT_DIR_OPTIONS, headerFields, tarSource } from './dir-tar';
import { walkLayer, type LayerWalk, type WarnFn } from './dir-walk';
import { END_OF_ARCHIVE, encodeHeaders, padding } from './tar-header';
import { SourceError, SourceErrorCodes } from './errors';
import { hashOnly, runPipeline, type ByteSource } from './pipeline';
import { openInsideRoot, realRootOf, resolveInsideRoot } from './root';
import { sourceChanged, type DirSnapshot } from './snapshot';
import type { DirOptions, ImagePlatform, Layer, OpenOptions, SourceImage } from './types';
import { xattrReader, type XattrReader } from './xattr';

const MAX_CONFIG_BYTES = 1024 * 1024;

function bad(message: string, field = 'source'): SourceError {
  return new SourceError(SourceErrorCodes.BAD_SOURCE, message, field);
}

/** Checks DirOptions (from a request: anything may come in). */
export function checkDirOptions(o: unknown): DirOptions {
  if (o === undefined) return DEFAULT_DIR_OPTIONS;
  const d = o as Partial<DirOptions> | null;
  const owners = d?.owners ?? 'root';
  const mtime = d?.mtime ?? 'epoch';
  if (owners !== 'root' && owners !== 'keep')
    throw bad(`dirOptions.owners must be "root" or "keep"`, 'dirOptions.owners');
  const fixedOk = typeof mtime === 'number' && Number.isSafeInteger(mtime) && mtime >= 0;
  if (mtime !== 'epoch' && mtime !== 'keep' && !fixedOk)
    throw bad(
      'dirOptions.mtime must be "epoch", "keep" or whole seconds since the epoch (≥ 0)',
      'dirOptions.mtime',
    );
  return { owners, mtime };
}

/** The layer directory names in bytewise order, each checked to be a directory inside the root. */
async function listLayers(
  realPath: string,
  root: string,
): Promise<{ names: string[]; dirs: string[] }> {
  let layersDir: string;
  try {
    layersDir = await resolveInsideRoot(root, join(realPath, 'layers'));
  } catch (e) {
    if (e instanceof SourceError && e.code === SourceErrorCodes.SOURCE_NOT_FOUND) {
      throw new SourceError(
        SourceErrorCodes.SOURCE_NOT_FOUND,
        `dir: ${realPath} has no layers/ directory (expected layers/<name>/ per layer)`,
        'source',
      );
    }
    throw e;
  }
  const entries = await readdir(layersDir, { withFileTypes: true });
  const names = entries
    .map((e) => e.name)
    .sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const dirs: string[] = [];
  for (const name of names) {
    const description = `layers/${name}`;
    // A layer directory may be a symlink, but only to a directory inside the root.
    const real = await resolveInsideRoot(root, join(layersDir, name), description);
    if (!(await stat(real)).isDirectory()) {
      throw bad(
        `dir: ${description} is not a directory; layers/ may hold only one directory per layer`,
        description,
      );
    }
    dirs.push(real);
  }
  if (names.length === 0) throw bad(`dir: ${realPath}/layers has no layer directories`);
  return { names, dirs };
}

/** config.json's bytes (null when absent), read through the root checks. */
async function readConfigBytes(realPath: string, root: string): Promise<Buffer | null> {
  let configPath: string;
  try {
    configPath = await resolveInsideRoot(root, join(realPath, 'config.json'), 'config.json');
  } catch (e) {
    if (e instanceof SourceError && e.code === SourceErrorCodes.SOURCE_NOT_FOUND) return null;
    throw e;
  }
  const fh = await openInsideRoot(root, configPath, 'config.json');
  try {
    if ((await fh.stat()).size > MAX_CONFIG_BYTES) {
      throw bad(
        `dir: config.json must be a file of at most ${MAX_CONFIG_BYTES} bytes`,
        'config.json',
      );
    }
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

function parseConfig(bytes: Buffer): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch (e) {
    throw bad(`dir: config.json is not valid JSON: ${(e as Error).message}`, 'config.json');
  }
  try {
    return validateConfigFields(parsed);
  } catch (e) {
    if (e instanceof ManifestError) {
      throw bad(`dir: config.json: ${e.message}`, `config.json:${e.field ?? ''}`);
    }
    throw e;
  }
}

function platformOf(
  configFields: Record<string, unknown> | undefined,
  realPath: string,
  want: string | undefined,
): ImagePlatform {
  const platform = {
    os: typeof configFields?.os === 'string' ? configFields.os : 'linux',
    architecture:
      typeof configFields?.architecture === 'string' ? configFields.architecture : 'amd64',
    ...(typeof configFields?.variant === 'string' ? { variant: configFields.variant } : {}),
  };
  if (want && !platformMatches(platform, parsePlatform(want))) {
    throw new SourceError(
      SourceErrorCodes.PLATFORM_NOT_FOUND,
      `platform ${want} not found: dir: ${realPath} is ${formatPlatform(platform)}`,
      'platform',
    );
  }
  return platform;
}

/** Compares what is there now with the snapshot: layer list and config.json. */
function checkAgainst(snap: DirSnapshot, names: string[], configDigest: string | null): void {
  const added = names.filter((n) => !snap.layers.includes(n));
  const removed = snap.layers.filter((n) => !names.includes(n));
  if (added.length || removed.length) {
    const parts = [
      ...(added.length ? [`added ${added.join(', ')}`] : []),
      ...(removed.length ? [`removed ${removed.join(', ')}`] : []),
    ];
    throw sourceChanged(
      `dir: layer list changed since the push was accepted: ${parts.join('; ')}`,
      'layers',
    );
  }
  if (configDigest !== snap.config) {
    const what =
      snap.config === null ? 'was added' : configDigest === null ? 'was removed' : 'changed';
    throw sourceChanged(`dir: config.json ${what} since the push was accepted`, 'config.json');
  }
}

interface LayerContext {
  realRoot: string;
  level: number;
  opts: OpenOptions;
  dirOptions: DirOptions;
  xattrs: XattrReader;
  warn: WarnFn;
  /** "since the push was accepted" / "since the source was opened" */
  since: string;
  /** Warn about skipped entries when a layer is walked (not already done at open). */
  warnOnOpen: boolean;
}

function makeLayer(
  index: number,
  dir: string,
  name: string,
  listing: string,
  ctx: LayerContext,
): Layer {
  const description = `layers/${name}`;
  let total: number | undefined;
  /** Walks the layer, checks its listing, and returns a tar source that checks it again at the end. */
  const source = async (): Promise<ByteSource> => {
    const walk: LayerWalk = await walkLayer(
      dir,
      description,
      ctx.warnOnOpen ? ctx.warn : undefined,
    );
    if (walk.digest !== listing)
      throw sourceChanged(`${description} changed ${ctx.since}`, description);
    total ??= tarSizeOf(walk, ctx.dirOptions);
    return tarSource(dir, walk, description, {
      maxReadSize: ctx.opts.tarReadSize,
      realRoot: ctx.realRoot,
      dirOptions: ctx.dirOptions,
      xattrs: ctx.xattrs,
      verify: async () => {
        const again = await walkLayer(dir, description);
        if (again.digest !== listing)
          throw sourceChanged(`${description} changed while it was read`, description);
      },
    });
  };
  return {
    index,
    mediaType: MediaTypes.ociLayerGzip,
    description,
    async open(offset = 0) {
      const counted = countingSource(await source());
      return {
        ...runPipeline({
          source: counted.source,
          mode: { kind: 'gzip', level: ctx.level },
          offset,
          description,
        }),
        uncompressedRead: counted.read,
        uncompressedTotal: total,
      };
    },
    async diffIdOnly() {
      return hashOnly(await source(), false, description);
    },
  };
}

/**
 * The size of a layer's tar from its listing: header blocks (PAX included) + contents padded
 * to whole blocks + the end-of-archive blocks. Capability xattrs (read only while the tar is
 * written) are not counted: such a file makes the tar a few hundred bytes longer.
 */
export function tarSizeOf(walk: LayerWalk, dirOptions: DirOptions): number {
  let n = END_OF_ARCHIVE.length;
  for (const e of walk.entries) {
    n += encodeHeaders(headerFields(e, dirOptions)).length;
    if (e.type === 'file') n += e.size + padding(e.size).length;
  }
  return n;
}

/** Counts the bytes a source produces (one addition per chunk). */
function countingSource(inner: ByteSource): { source: ByteSource; read: () => number } {
  let read = 0;
  return {
    read: () => read,
    source: {
      start: (onData, onEnd, onError) =>
        inner.start(
          (chunk) => {
            read += chunk.length;
            onData(chunk);
          },
          onEnd,
          onError,
        ),
      pause: () => inner.pause(),
      resume: () => inner.resume(),
      cancel: () => inner.cancel(),
      release: (chunk) => inner.release?.(chunk),
    },
  };
}

export interface OpenedDir {
  image: SourceImage;
  snapshot: DirSnapshot;
}

export async function openDir(
  realPath: string,
  opts: OpenOptions,
  warn: WarnFn,
): Promise<OpenedDir> {
  const snap = opts.snapshot as DirSnapshot | undefined;
  const dirOptions = checkDirOptions(opts.dirOptions ?? snap?.dirOptions);
  if (snap && JSON.stringify(checkDirOptions(snap.dirOptions)) !== JSON.stringify(dirOptions)) {
    throw bad('dirOptions differ from those the snapshot was taken with', 'dirOptions');
  }
  // Capabilities are always stored: without the addon there is no dir: source at all.
  const xattrs = await xattrReader();
  const realRoot = await realRootOf(opts.root);
  if (!(await stat(realPath)).isDirectory()) throw bad(`dir: ${realPath} is not a directory`);
  const { names, dirs } = await listLayers(realPath, opts.root);
  const configBytes = await readConfigBytes(realPath, opts.root);
  const configDigest = configBytes ? sha256Digest(configBytes) : null;
  if (snap) checkAgainst(snap, names, configDigest);
  const configFields = configBytes ? parseConfig(configBytes) : undefined;
  const platform = platformOf(configFields, realPath, opts.platform);
  const listings =
    snap?.listings ??
    (await Promise.all(
      dirs.map(async (d, i) => (await walkLayer(d, `layers/${names[i]}`, warn)).digest),
    ));
  const ctx: LayerContext = {
    realRoot,
    level: opts.gzipLevel ?? 6,
    opts,
    dirOptions,
    xattrs,
    warn,
    since: snap ? 'since the push was accepted' : 'since the source was opened',
    warnOnOpen: !!snap,
  };
  const layers = dirs.map((d, i) => makeLayer(i, d, names[i]!, listings[i]!, ctx));
  const snapshot: DirSnapshot = {
    kind: 'dir',
    layers: names,
    config: configDigest,
    listings,
    dirOptions,
  };
  return { image: { platform, layers, configFields, layerNames: names }, snapshot };
}
