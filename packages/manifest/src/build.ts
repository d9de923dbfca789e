import { canonical, type Canonical } from './canonical';
import { isValidDigest, type Descriptor, type Platform } from './descriptor';
import { ManifestError, ManifestErrorCodes } from './errors';
import {
  MediaTypes,
  convertConfigMediaType,
  convertLayerMediaType,
  type ManifestFormat,
} from './media-types';

/** The `created` time Ferry writes into configs and history: fixed, so digests are reproducible. */
export const FIXED_CREATED = '1970-01-01T00:00:00Z';

export interface BuildConfigOptions {
  /** The config's `created`; default config.json's own, else FIXED_CREATED. */
  created?: string;
  /** `created_by` of each layer's history entry (same order as diffIds). */
  history?: string[];
}

function configInvalid(message: string, field: string): ManifestError {
  return new ManifestError(ManifestErrorCodes.CONFIG_INVALID, message, field);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkStringArray(v: unknown, field: string): void {
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
    throw configInvalid(`${field} must be an array of strings`, field);
  }
}
function checkString(v: unknown, field: string): void {
  if (typeof v !== 'string') throw configInvalid(`${field} must be a string`, field);
}
function checkStringMap(v: unknown, field: string): void {
  if (!isRecord(v) || !Object.values(v).every((x) => typeof x === 'string')) {
    throw configInvalid(`${field} must be an object of strings`, field);
  }
}
function checkSet(v: unknown, field: string): void {
  if (!isRecord(v) || !Object.values(v).every((x) => isRecord(x))) {
    throw configInvalid(`${field} must be an object whose values are objects ({})`, field);
  }
}

const CONFIG_CHECKS: Record<string, (v: unknown, field: string) => void> = {
  Entrypoint: (v, f) => v === null || checkStringArray(v, f),
  Cmd: (v, f) => v === null || checkStringArray(v, f),
  Env: (v, f) => {
    checkStringArray(v, f);
    (v as string[]).forEach((e, i) => {
      if (!/^[^=]+=/.test(e)) throw configInvalid(`${f}[${i}] must be NAME=VALUE`, `${f}[${i}]`);
    });
  },
  WorkingDir: checkString,
  User: checkString,
  StopSignal: checkString,
  Labels: checkStringMap,
  ExposedPorts: checkSet,
  Volumes: checkSet,
  ArgsEscaped: (v, f) => {
    if (typeof v !== 'boolean') throw configInvalid(`${f} must be a boolean`, f);
  },
};

/** Checks the fields of a dir: source's config.json; throws FERRY_CONFIG_INVALID naming the field. */
export function validateConfigFields(fields: unknown): Record<string, unknown> {
  if (!isRecord(fields)) throw configInvalid('config.json must hold a JSON object', 'config.json');
  for (const k of ['architecture', 'os', 'variant', 'os.version', 'author', 'created']) {
    if (fields[k] !== undefined) checkString(fields[k], k);
  }
  if (fields['os.features'] !== undefined) checkStringArray(fields['os.features'], 'os.features');
  if (fields.config !== undefined && fields.config !== null) {
    if (!isRecord(fields.config)) throw configInvalid('config must be an object', 'config');
    for (const [k, v] of Object.entries(fields.config)) {
      const check = CONFIG_CHECKS[k];
      if (check && v !== undefined) check(v, `config.${k}`);
    }
  }
  return fields;
}

/**
 * The image config of a dir: image: the fields of config.json, `rootfs.diff_ids`
 * from the computed diffIds, one history entry per layer with a fixed
 * `created`, os/architecture defaulting to linux/amd64. Canonical bytes.
 */
export function buildConfig(
  fields: Record<string, unknown> | undefined,
  diffIds: string[],
  opts: BuildConfigOptions = {},
): Canonical {
  const f = validateConfigFields(fields ?? {});
  diffIds.forEach((d, i) => {
    if (!isValidDigest(d))
      throw configInvalid(`diffIds[${i}] ${JSON.stringify(d)} is not a digest`, `diffIds[${i}]`);
  });
  if (opts.history && opts.history.length !== diffIds.length) {
    throw new TypeError(
      `buildConfig: ${opts.history.length} history entries for ${diffIds.length} layers`,
    );
  }
  const created = opts.created ?? (typeof f.created === 'string' ? f.created : FIXED_CREATED);
  const out: Record<string, unknown> = { ...f };
  delete out.rootfs;
  delete out.history;
  out.created = created;
  out.os = typeof f.os === 'string' ? f.os : 'linux';
  out.architecture = typeof f.architecture === 'string' ? f.architecture : 'amd64';
  if (out.config === undefined || out.config === null) out.config = {};
  out.rootfs = { type: 'layers', diff_ids: [...diffIds] };
  out.history = diffIds.map((_, i) => ({
    created: FIXED_CREATED,
    created_by: opts.history?.[i] ?? `ferry: layer ${i + 1} of ${diffIds.length}`,
  }));
  return canonical(out, MediaTypes.ociConfig);
}

/**
 * An image manifest (OCI image manifest or Docker schema2) with canonical
 * bytes. Config and layer media types are converted to the format; Docker
 * schema2 has no annotations, so they are refused there.
 */
export function buildManifest(
  format: ManifestFormat,
  config: Descriptor,
  layers: Descriptor[],
  annotations?: Record<string, string>,
): Canonical {
  const desc = (d: Descriptor, mediaType: string): Record<string, unknown> => {
    const o: Record<string, unknown> = { mediaType, digest: d.digest, size: d.size };
    if (format === 'oci' && d.annotations && Object.keys(d.annotations).length) {
      o.annotations = d.annotations;
    }
    if (d.urls?.length) o.urls = d.urls;
    return o;
  };
  for (const [i, d] of [config, ...layers].entries()) {
    if (!isValidDigest(d.digest)) {
      throw new ManifestError(
        ManifestErrorCodes.MANIFEST_INVALID,
        `${i === 0 ? 'config' : `layers[${i - 1}]`}.digest ${JSON.stringify(d.digest)} is not a digest`,
        i === 0 ? 'config.digest' : `layers[${i - 1}].digest`,
      );
    }
  }
  const body: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType: format === 'oci' ? MediaTypes.ociManifest : MediaTypes.dockerManifest,
    config: desc(config, convertConfigMediaType(config.mediaType, format)),
    layers: layers.map((l) => desc(l, convertLayerMediaType(l.mediaType, format))),
  };
  if (annotations && Object.keys(annotations).length) {
    if (format === 'docker') {
      throw new ManifestError(
        ManifestErrorCodes.MANIFEST_INVALID,
        'Docker schema2 manifests have no annotations; use the oci format',
        'annotations',
      );
    }
    body.annotations = annotations;
  }
  return canonical(body, body.mediaType as string);
}

/**
 * An OCI image index or a Docker manifest list with canonical bytes. Docker
 * manifest lists require a platform on every entry.
 */
export function buildIndex(
  format: ManifestFormat,
  manifests: (Descriptor & { platform?: Platform })[],
  annotations?: Record<string, string>,
): Canonical {
  const entries = manifests.map((m, i) => {
    if (!isValidDigest(m.digest)) {
      throw new ManifestError(
        ManifestErrorCodes.MANIFEST_INVALID,
        `manifests[${i}].digest ${JSON.stringify(m.digest)} is not a digest`,
        `manifests[${i}].digest`,
      );
    }
    if (format === 'docker' && !m.platform) {
      throw new ManifestError(
        ManifestErrorCodes.MANIFEST_INVALID,
        `manifests[${i}] needs a platform in a Docker manifest list`,
        `manifests[${i}].platform`,
      );
    }
    // The entry's media type must be the referenced manifest's own: never converted here.
    const o: Record<string, unknown> = { mediaType: m.mediaType, digest: m.digest, size: m.size };
    if (m.platform) o.platform = m.platform;
    if (format === 'oci' && m.annotations && Object.keys(m.annotations).length) {
      o.annotations = m.annotations;
    }
    return o;
  });
  const body: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType: format === 'oci' ? MediaTypes.ociIndex : MediaTypes.dockerManifestList,
    manifests: entries,
  };
  if (format === 'oci' && annotations && Object.keys(annotations).length)
    body.annotations = annotations;
  return canonical(body, body.mediaType as string);
}

/** A descriptor for canonical bytes. */
export function descriptorOf(c: Canonical, extra: Partial<Descriptor> = {}): Descriptor {
  return { ...extra, mediaType: c.mediaType, digest: c.digest, size: c.size };
}
