import { parseDescriptor, type Descriptor } from './descriptor';
import { ManifestError, ManifestErrorCodes } from './errors';
import { MediaTypes, isImageManifestMediaType, isIndexMediaType } from './media-types';

export interface ParsedManifest {
  /** The media type: the one given, else the body's `mediaType`, else inferred from the shape. */
  mediaType: string;
  schemaVersion: number;
  /** Image manifests: the config descriptor. */
  config?: Descriptor;
  /** Image manifests: the layer descriptors in order. */
  layers?: Descriptor[];
  /** Indexes / manifest lists: the entries. */
  manifests?: Descriptor[];
  annotations?: Record<string, string>;
  subject?: Descriptor;
  /** The parsed JSON body. */
  body: Record<string, unknown>;
}

function invalid(message: string, field?: string): ManifestError {
  return new ManifestError(ManifestErrorCodes.MANIFEST_INVALID, message, field);
}

const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/**
 * Parses and validates an OCI image manifest / index or a Docker schema2
 * manifest / manifest list. Anything else (junk, schema1, a shape that does
 * not fit its media type) throws FERRY_MANIFEST_INVALID naming the field.
 */
export function parseManifest(bytes: Buffer | string, mediaType?: string): ParsedManifest {
  const buf = typeof bytes === 'string' ? Buffer.from(bytes, 'utf8') : bytes;
  if (buf.length > MAX_MANIFEST_BYTES) {
    throw invalid(`manifest is ${buf.length} bytes; the limit is ${MAX_MANIFEST_BYTES}`);
  }
  let body: unknown;
  try {
    body = JSON.parse(buf.toString('utf8'));
  } catch (e) {
    throw invalid(`manifest is not JSON: ${(e as Error).message}`);
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw invalid('manifest must be a JSON object');
  }
  const b = body as Record<string, unknown>;
  if (b.schemaVersion === 1) {
    throw invalid('Docker schema1 manifests are not supported as a source', 'schemaVersion');
  }
  if (b.schemaVersion !== 2) {
    throw invalid(
      `schemaVersion must be 2, not ${JSON.stringify(b.schemaVersion)}`,
      'schemaVersion',
    );
  }
  if (b.mediaType !== undefined && typeof b.mediaType !== 'string') {
    throw invalid('mediaType must be a string', 'mediaType');
  }
  const bodyType = b.mediaType as string | undefined;
  if (mediaType && bodyType && mediaType !== bodyType) {
    throw invalid(`mediaType ${bodyType} in the body contradicts ${mediaType}`, 'mediaType');
  }
  let mt = mediaType || bodyType;
  if (!mt) {
    if (Array.isArray(b.manifests)) mt = MediaTypes.ociIndex;
    else if (b.config !== undefined || Array.isArray(b.layers)) mt = MediaTypes.ociManifest;
    else throw invalid('neither an image manifest (config, layers) nor an index (manifests)');
  }
  const out: ParsedManifest = { mediaType: mt, schemaVersion: 2, body: b };
  if (isImageManifestMediaType(mt)) {
    if (b.manifests !== undefined) throw invalid('an image manifest has no manifests', 'manifests');
    out.config = parseDescriptor(b.config, 'config');
    if (!Array.isArray(b.layers)) throw invalid('layers must be an array', 'layers');
    out.layers = b.layers.map((l, i) => parseDescriptor(l, `layers[${i}]`));
  } else if (isIndexMediaType(mt)) {
    if (b.config !== undefined || b.layers !== undefined) {
      throw invalid(
        'an index has no config or layers',
        b.config !== undefined ? 'config' : 'layers',
      );
    }
    if (!Array.isArray(b.manifests)) throw invalid('manifests must be an array', 'manifests');
    out.manifests = b.manifests.map((m, i) => parseDescriptor(m, `manifests[${i}]`));
    if (mt === MediaTypes.dockerManifestList) {
      out.manifests.forEach((m, i) => {
        if (!m.platform)
          throw invalid(`manifests[${i}] has no platform`, `manifests[${i}].platform`);
      });
    }
  } else {
    throw invalid(`unsupported manifest media type ${mt}`, 'mediaType');
  }
  if (b.annotations !== undefined) {
    if (
      typeof b.annotations !== 'object' ||
      b.annotations === null ||
      !Object.values(b.annotations).every((v) => typeof v === 'string')
    ) {
      throw invalid('annotations must be an object of strings', 'annotations');
    }
    out.annotations = b.annotations as Record<string, string>;
  }
  if (b.subject !== undefined) out.subject = parseDescriptor(b.subject, 'subject');
  return out;
}

/** The parsed image config's `rootfs.diff_ids`, or FERRY_MANIFEST_INVALID. */
export function configDiffIds(configBytes: Buffer): string[] {
  let c: unknown;
  try {
    c = JSON.parse(configBytes.toString('utf8'));
  } catch (e) {
    throw invalid(`image config is not JSON: ${(e as Error).message}`, 'config');
  }
  const rootfs = (c as { rootfs?: { diff_ids?: unknown } } | null)?.rootfs;
  const ids = rootfs?.diff_ids;
  if (!Array.isArray(ids) || !ids.every((d) => typeof d === 'string')) {
    throw invalid('image config has no rootfs.diff_ids array', 'rootfs.diff_ids');
  }
  return ids as string[];
}
