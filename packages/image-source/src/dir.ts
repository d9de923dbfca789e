/** `dir:PATH` — PATH/layers/<name>/ in lexical order, optional PATH/config.json. */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  MediaTypes,
  ManifestError,
  parsePlatform,
  platformMatches,
  validateConfigFields,
  formatPlatform,
} from '@ferry/manifest';
import { walkLayer, tarSource, type WarnFn } from './dir-tar';
import { SourceError, SourceErrorCodes } from './errors';
import { hashOnly, runPipeline } from './pipeline';
import { openInsideRoot, realRootOf, resolveInsideRoot } from './root';
import type { Layer, OpenOptions, SourceImage } from './types';

const MAX_CONFIG_BYTES = 1024 * 1024;

export async function openDir(
  realPath: string,
  opts: OpenOptions,
  warn: WarnFn,
): Promise<SourceImage> {
  const level = opts.gzipLevel ?? 6;
  const realRoot = await realRootOf(opts.root);
  const st = await stat(realPath);
  if (!st.isDirectory()) {
    throw new SourceError(
      SourceErrorCodes.BAD_SOURCE,
      `dir: ${realPath} is not a directory`,
      'source',
    );
  }
  let layersDir: string;
  try {
    layersDir = await resolveInsideRoot(opts.root, join(realPath, 'layers'));
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
  const layers: Layer[] = [];
  const layerNames: string[] = [];
  for (const name of names) {
    const description = `layers/${name}`;
    // A layer directory may be a symlink, but only to a directory inside the root.
    const real = await resolveInsideRoot(opts.root, join(layersDir, name), description);
    const s = await stat(real);
    if (!s.isDirectory()) {
      throw new SourceError(
        SourceErrorCodes.BAD_SOURCE,
        `dir: ${description} is not a directory; layers/ may hold only one directory per layer`,
        description,
      );
    }
    layerNames.push(name);
    const index = layers.length;
    layers.push({
      index,
      mediaType: MediaTypes.ociLayerGzip,
      description,
      async open(offset = 0) {
        const walk = await walkLayer(real, description, warn);
        return runPipeline({
          source: tarSource(real, walk, description, { maxReadSize: opts.tarReadSize, realRoot }),
          mode: { kind: 'gzip', level },
          offset,
          description,
        });
      },
      async diffIdOnly() {
        const walk = await walkLayer(real, description, warn);
        return hashOnly(
          tarSource(real, walk, description, { maxReadSize: opts.tarReadSize, realRoot }),
          false,
          description,
        );
      },
    });
  }
  if (layers.length === 0) {
    throw new SourceError(
      SourceErrorCodes.BAD_SOURCE,
      `dir: ${realPath}/layers has no layer directories`,
      'source',
    );
  }

  let configFields: Record<string, unknown> | undefined;
  let configPath: string | undefined;
  try {
    configPath = await resolveInsideRoot(opts.root, join(realPath, 'config.json'), 'config.json');
  } catch (e) {
    if (!(e instanceof SourceError && e.code === SourceErrorCodes.SOURCE_NOT_FOUND)) throw e;
  }
  if (configPath) {
    const cs = await stat(configPath);
    if (!cs.isFile() || cs.size > MAX_CONFIG_BYTES) {
      throw new SourceError(
        SourceErrorCodes.BAD_SOURCE,
        `dir: config.json must be a file of at most ${MAX_CONFIG_BYTES} bytes`,
        'config.json',
      );
    }
    let parsed: unknown;
    const fh = await openInsideRoot(opts.root, configPath, 'config.json');
    let text: string;
    try {
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      throw new SourceError(
        SourceErrorCodes.BAD_SOURCE,
        `dir: config.json is not valid JSON: ${(e as Error).message}`,
        'config.json',
      );
    }
    try {
      configFields = validateConfigFields(parsed);
    } catch (e) {
      if (e instanceof ManifestError) {
        throw new SourceError(
          SourceErrorCodes.BAD_SOURCE,
          `dir: config.json: ${e.message}`,
          `config.json:${e.field ?? ''}`,
        );
      }
      throw e;
    }
  }
  const platform = {
    os: typeof configFields?.os === 'string' ? configFields.os : 'linux',
    architecture:
      typeof configFields?.architecture === 'string' ? configFields.architecture : 'amd64',
    ...(typeof configFields?.variant === 'string' ? { variant: configFields.variant } : {}),
  };
  if (opts.platform) {
    const want = parsePlatform(opts.platform);
    if (!platformMatches(platform, want)) {
      throw new SourceError(
        SourceErrorCodes.PLATFORM_NOT_FOUND,
        `platform ${opts.platform} not found: dir: ${realPath} is ${formatPlatform(platform)}`,
        'platform',
      );
    }
  }
  return { platform, layers, configFields, layerNames };
}
