/**
 * `oci:PATH[:REF]` — an OCI image layout: index.json, blobs/<alg>/<hex>.
 * index.json (and the REF in it) is read only to resolve the images when the
 * source is first opened; the snapshot pins the resolved manifests (and the
 * index pushed as a whole) by digest, and a source opened through a snapshot
 * reads those from blobs/ only — a ref re-pointed since changes nothing.
 */
import { join } from 'node:path';
import {
  MediaTypes,
  formatPlatform,
  isImageManifestMediaType,
  isIndexMediaType,
  parsePlatform,
  platformMatches,
  sha256Digest,
  type Descriptor,
  type ParsedManifest,
} from '@ferry/manifest';
import { SourceError, SourceErrorCodes } from './errors';
import {
  MAX_JSON_BLOB,
  OciLayout,
  flatten,
  invalid,
  openImage,
  parseOrThrow,
  type ImageCandidate,
} from './oci-layout';
import { openInsideRoot, resolveInsideRoot } from './root';
import type { OciManifestPin, OciSnapshot } from './snapshot';
import type { SourceSpec } from './spec';
import type { OpenOptions, OpenedSource, SourceImage } from './types';

export { OciLayout } from './oci-layout';
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

async function readIndexJson(realPath: string, root: string): Promise<Buffer> {
  let indexPath: string;
  try {
    indexPath = await resolveInsideRoot(root, join(realPath, 'index.json'), 'index.json');
  } catch (e) {
    if (e instanceof SourceError && e.code === SourceErrorCodes.SOURCE_NOT_FOUND) {
      throw new SourceError(
        SourceErrorCodes.SOURCE_NOT_FOUND,
        `oci: ${realPath} is not an OCI image layout (no index.json)`,
        'source',
      );
    }
    throw e;
  }
  const ifh = await openInsideRoot(root, indexPath, 'index.json');
  try {
    if ((await ifh.stat()).size > MAX_JSON_BLOB) {
      throw invalid(`index.json is larger than ${MAX_JSON_BLOB} bytes`, 'index.json');
    }
    return await ifh.readFile();
  } finally {
    await ifh.close();
  }
}

function parseIndexJson(indexJson: Buffer, realPath: string): ParsedManifest {
  let body: { mediaType?: unknown };
  try {
    body = JSON.parse(indexJson.toString('utf8')) as { mediaType?: unknown };
  } catch (e) {
    throw invalid(`index.json is not JSON: ${(e as Error).message}`, 'index.json');
  }
  const top = parseOrThrow(
    indexJson,
    typeof body?.mediaType === 'string' ? body.mediaType : MediaTypes.ociIndex,
    'index.json',
  );
  if (!isIndexMediaType(top.mediaType))
    throw invalid('index.json is not an image index', 'index.json');
  if ((top.manifests ?? []).length === 0)
    throw new SourceError(
      SourceErrorCodes.SOURCE_NOT_FOUND,
      `oci: ${realPath}/index.json lists no images`,
      'source',
    );
  return top;
}

/**
 * The top-level descriptor: by ref name, else the only one, else "latest"; undefined when
 * index.json lists only unnamed platform images (it is itself the multi-platform index).
 */
function chooseTop(tops: Descriptor[], spec: SourceSpec, realPath: string): Descriptor | undefined {
  const named = (ref: string): Descriptor[] =>
    tops.filter((d) => d.annotations?.[REF_NAME_ANNOTATION] === ref);
  if (spec.ref) {
    const hits = named(spec.ref);
    if (hits.length === 0) {
      const names = tops.map((d) => d.annotations?.[REF_NAME_ANNOTATION]).filter(Boolean);
      throw new SourceError(
        SourceErrorCodes.SOURCE_NOT_FOUND,
        `oci: no image named ${JSON.stringify(spec.ref)} in ${realPath}/index.json` +
          (names.length
            ? ` (it has ${names.map((x) => JSON.stringify(x)).join(', ')})`
            : ' (no image has a ref name)'),
        'source',
      );
    }
    if (hits.length > 1)
      throw invalid(
        `index.json names ${hits.length} images ${JSON.stringify(spec.ref)}`,
        'index.json',
      );
    return hits[0];
  }
  if (tops.length === 1) return tops[0];
  if (named('latest').length === 1) return named('latest')[0];
  if (tops.every((d) => !d.annotations?.[REF_NAME_ANNOTATION] && d.platform)) return undefined;
  throw new SourceError(
    SourceErrorCodes.BAD_SOURCE,
    `oci: ${realPath}/index.json lists ${tops.length} images; name one as oci:PATH:REF`,
    'source',
  );
}

interface Resolved {
  candidates: ImageCandidate[];
  /** Entries were left out (nested indexes, artifacts): the stored index cannot be pushed as is. */
  nested: boolean;
  /** The stored index blob chosen, if any. */
  index?: { bytes: Buffer; mediaType: string; desc: Descriptor };
}

async function resolveCandidates(
  layout: OciLayout,
  top: ParsedManifest,
  chosen: Descriptor | undefined,
): Promise<Resolved> {
  const candidates: ImageCandidate[] = [];
  if (!chosen) {
    // index.json itself is not a blob of the layout: the coordinator builds an index from the images.
    const nested = await flatten(layout, top, 'index.json', 0, candidates);
    return { candidates, nested };
  }
  if (isIndexMediaType(chosen.mediaType)) {
    const bytes = await layout.readSmallBlob(chosen, 'index.json → index');
    const idx = parseOrThrow(bytes, chosen.mediaType, `index ${chosen.digest}`);
    let nested = await flatten(layout, idx, `index ${chosen.digest}`, 1, candidates);
    // Entries that are not images (unknown artifacts) are not pushed, so neither is the stored index.
    if (candidates.length !== (idx.manifests ?? []).length) nested = true;
    return { candidates, nested, index: { bytes, mediaType: idx.mediaType, desc: chosen } };
  }
  if (isImageManifestMediaType(chosen.mediaType)) {
    return { candidates: [{ desc: chosen, path: 'index.json' }], nested: false };
  }
  throw invalid(`index.json points at a ${chosen.mediaType}, not an image`, 'index.json');
}

/** The images of `platform` (one at most), or all; reads a config to decide when it must. */
async function pickImages(
  layout: OciLayout,
  candidates: ImageCandidate[],
  platform: string | undefined,
  spec: SourceSpec,
): Promise<Awaited<ReturnType<typeof openImage>>[]> {
  if (candidates.length === 0) throw invalid('the index holds no image manifests', 'index.json');
  let picked = candidates;
  if (platform) {
    const want = parsePlatform(platform);
    picked = candidates.filter((c) => platformMatches(c.desc.platform, want));
    if (picked.length === 0 && candidates.length === 1 && !candidates[0]!.desc.platform) {
      // A single image whose descriptor has no platform: decide from its config.
      const opened = await openImage(layout, candidates[0]!);
      if (platformMatches(opened.image.platform, want)) return [opened];
    }
    if (picked.length === 0) {
      const have = candidates.map((c) =>
        c.desc.platform ? formatPlatform(c.desc.platform) : 'unknown',
      );
      throw new SourceError(
        SourceErrorCodes.PLATFORM_NOT_FOUND,
        `platform ${platform} not found in ${spec.transport}:${spec.path}; it has ${have.join(', ')}`,
        'platform',
      );
    }
    picked = picked.slice(0, 1);
  }
  const out = [];
  for (const c of picked) out.push(await openImage(layout, c));
  return out;
}

/** Reads the pinned manifests (and index) by digest from blobs/, never through index.json. */
async function openThroughSnapshot(
  layout: OciLayout,
  spec: SourceSpec,
  realPath: string,
  snap: OciSnapshot,
): Promise<OpenedSource> {
  const images: SourceImage[] = [];
  for (const pin of snap.manifests) {
    const desc: Descriptor = { mediaType: pin.mediaType, digest: pin.digest, size: pin.size };
    if (pin.platform) desc.platform = pin.platform;
    if (pin.annotations) desc.annotations = pin.annotations;
    const { image } = await openImage(layout, { desc, path: `pinned manifest ${pin.digest}` });
    images.push(image);
  }
  const result: OpenedSource = { spec, images, realPath, snapshot: snap };
  if (snap.index?.from === 'blob') {
    const { digest, mediaType, size } = snap.index;
    const bytes = await layout.readSmallBlob({ digest, mediaType, size }, `pinned index ${digest}`);
    result.indexBytes = bytes;
    result.indexMediaType = mediaType;
    result.indexDigest = digest;
  }
  return result;
}

export async function openOci(
  realPath: string,
  spec: SourceSpec,
  opts: OpenOptions,
): Promise<OpenedSource> {
  const layout = new OciLayout(realPath, opts.root);
  if (opts.snapshot)
    return openThroughSnapshot(layout, spec, realPath, opts.snapshot as OciSnapshot);
  const indexJson = await readIndexJson(realPath, opts.root);
  const top = parseIndexJson(indexJson, realPath);
  const chosen = chooseTop(top.manifests ?? [], spec, realPath);
  const { candidates, nested, index } = await resolveCandidates(layout, top, chosen);
  const opened = await pickImages(layout, candidates, opts.platform, spec);
  const pins: OciManifestPin[] = opened.map((o) => o.pin);
  const snapshot: OciSnapshot = { kind: 'oci', manifests: pins };
  const result: OpenedSource = { spec, images: opened.map((o) => o.image), realPath, snapshot };
  if (opts.platform || nested) return result;
  // The stored index is pushed as-is only when every image it lists (directly) is pushed.
  if (index) {
    result.indexBytes = index.bytes;
    result.indexMediaType = index.mediaType;
    result.indexDigest = index.desc.digest;
    snapshot.index = { ...pick(index.desc), from: 'blob' };
  } else if (!chosen) {
    snapshot.index = {
      digest: sha256Digest(indexJson),
      mediaType: top.mediaType,
      size: indexJson.length,
      from: 'index.json',
    };
  }
  return result;
}

function pick(d: Descriptor): { digest: string; mediaType: string; size: number } {
  return { digest: d.digest, mediaType: d.mediaType, size: d.size };
}
