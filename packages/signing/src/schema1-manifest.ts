/**
 * Docker schema1 manifests (application/vnd.docker.distribution.manifest.v1+json),
 * built from an image config and its layer blobs the way docker/distribution's
 * config builder derived them for `docker push` to v2 registries: one fsLayer
 * and one history entry per config history entry, top first; every entry but
 * the top gets a synthetic v1Compatibility whose id is the sha256 of
 * "<blob hex> <parent id>"; the top entry is the config itself (without rootfs
 * and history) with id sha256("<blob hex> <parent id> <config bytes>").
 * Empty-layer history entries point at the well-known gzipped empty tar.
 */
import { isValidDigest, sha256Digest } from '@ferry/manifest';
import type { SignatureBlob } from './cosign-manifest';
import { SigningError, SigningErrorCodes } from './errors';
import { goJson, goJsonIndent, sortedKeys } from './go-json';

/** A gzip of an empty tar (1024 zero bytes), the blob schema1 uses for empty layers. */
export const EMPTY_LAYER_GZIP = Buffer.from(
  '1f8b080000096e8800ff621805a360148c5800080000ffff2eafb5ef00040000',
  'hex',
);
export const EMPTY_LAYER_DIGEST =
  'sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4';

export interface Schema1Input {
  /** Repository path (no host): the manifest's `name`. */
  name: string;
  /** The manifest's `tag`: each tag gets its own manifest. */
  tag: string;
  /** The image config bytes as pushed (they feed the top layer's id). */
  config: Buffer;
  /** Layer blob digests, base first, one per rootfs.diff_ids entry. */
  layers: string[];
}

export interface Schema1Unsigned {
  /** The manifest pretty-printed as Docker did (3-space indent), not yet signed. */
  bytes: Buffer;
  /** Blobs the manifest references besides the given layers (the empty tar, when used). */
  blobs: SignatureBlob[];
}

interface HistoryEntry {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

function fail(message: string): SigningError {
  return new SigningError(SigningErrorCodes.SCHEMA1_INVALID, `schema1: ${message}`);
}

/** A time as Go's time.Time marshals it back: trailing fractional zeros dropped. */
function goTime(t: unknown): string {
  if (typeof t !== 'string' || !t) return '0001-01-01T00:00:00Z';
  return t.replace(/\.(\d*?)0+(?=Z|[+-]\d\d:\d\d$)/, (_m, d: string) => (d ? `.${d}` : ''));
}

function readConfig(config: Buffer, layerCount: number) {
  let c: Record<string, unknown>;
  try {
    c = JSON.parse(config.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw fail('the image config is not JSON');
  }
  const diffIds = (c.rootfs as { diff_ids?: unknown } | undefined)?.diff_ids;
  if (!Array.isArray(diffIds) || diffIds.length !== layerCount) {
    throw fail(
      `${layerCount} layers for ${Array.isArray(diffIds) ? diffIds.length : 0} rootfs.diff_ids`,
    );
  }
  let history = Array.isArray(c.history) ? (c.history as HistoryEntry[]) : [];
  // Docker refuses an empty history; Ferry writes one entry per layer instead.
  if (history.length === 0) history = diffIds.map(() => ({ created: c.created as string }));
  const nonEmpty = history.filter((h) => !h.empty_layer).length;
  if (nonEmpty !== layerCount)
    throw fail(`${nonEmpty} non-empty history entries for ${layerCount} layers`);
  if (history.length === 0) throw fail('an image without layers or history has no schema1 form');
  return { c, history };
}

const hexOf = (digest: string) => digest.slice(digest.indexOf(':') + 1);
const idOf = (text: string) => hexOf(sha256Digest(text));

/** The top v1Compatibility: the config without rootfs/history, plus id, parent, throwaway. */
function topV1(c: Record<string, unknown>, id: string, parent: string, throwaway: boolean): string {
  const m: Record<string, unknown> = { ...c, id };
  delete m.rootfs;
  delete m.history;
  if (parent) m.parent = parent;
  if (throwaway) m.throwaway = true;
  return goJson(sortedKeys(m));
}

function lowerV1(h: HistoryEntry, id: string, parent: string): string {
  const v: Record<string, unknown> = { id };
  if (parent) v.parent = parent;
  if (h.comment) v.comment = h.comment;
  v.created = goTime(h.created);
  v.container_config = { Cmd: [h.created_by ?? ''] };
  if (h.author) v.author = h.author;
  if (h.empty_layer) v.throwaway = true;
  return goJson(v);
}

/** Builds the unsigned schema1 manifest; sign it with signSchema1. */
export function buildSchema1Manifest(input: Schema1Input): Schema1Unsigned {
  if (!input.name || !input.tag) throw fail('name and tag are required');
  input.layers.forEach((d, i) => {
    if (!isValidDigest(d)) throw fail(`layers[${i}] ${JSON.stringify(d)} is not a digest`);
  });
  const { c, history } = readConfig(input.config, input.layers.length);
  const n = history.length;
  const fsLayers: { blobSum: string }[] = new Array(n);
  const v1: { v1Compatibility: string }[] = new Array(n);
  let parent = '';
  let next = 0;
  history.forEach((h, i) => {
    const blobSum = h.empty_layer ? EMPTY_LAYER_DIGEST : (input.layers[next++] as string);
    const top = i === n - 1;
    const id = top
      ? idOf(`${hexOf(blobSum)} ${parent} ${input.config.toString('utf8')}`)
      : idOf(`${hexOf(blobSum)} ${parent}`);
    fsLayers[n - 1 - i] = { blobSum };
    v1[n - 1 - i] = {
      v1Compatibility: top ? topV1(c, id, parent, !!h.empty_layer) : lowerV1(h, id, parent),
    };
    parent = id;
  });
  const manifest = {
    schemaVersion: 1,
    name: input.name,
    tag: input.tag,
    architecture: typeof c.architecture === 'string' ? c.architecture : '',
    fsLayers,
    history: v1,
  };
  const blobs = history.some((h) => h.empty_layer)
    ? [
        {
          digest: EMPTY_LAYER_DIGEST,
          size: EMPTY_LAYER_GZIP.length,
          mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
          bytes: EMPTY_LAYER_GZIP,
        },
      ]
    : [];
  return { bytes: Buffer.from(goJsonIndent(manifest, '   ')), blobs };
}
