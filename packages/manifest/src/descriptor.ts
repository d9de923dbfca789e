import { ManifestError, ManifestErrorCodes } from './errors';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
  features?: string[];
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  urls?: string[];
  artifactType?: string;
}

const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
const HEX_LENGTH: Record<string, number> = { sha256: 64, sha384: 96, sha512: 128 };

/** True for a well-formed digest of a registered algorithm (`sha256:` + 64 lowercase hex, ...). */
export function isValidDigest(d: unknown): d is string {
  if (typeof d !== 'string' || !DIGEST_RE.test(d)) return false;
  const [alg, hex] = d.split(':', 2) as [string, string];
  const len = HEX_LENGTH[alg];
  return len !== undefined && hex.length === len && /^[a-f0-9]+$/.test(hex);
}

function invalid(message: string, field: string): ManifestError {
  return new ManifestError(ManifestErrorCodes.MANIFEST_INVALID, message, field);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkStringMap(v: unknown, field: string): Record<string, string> {
  if (!isRecord(v) || !Object.values(v).every((x) => typeof x === 'string')) {
    throw invalid(`${field} must be an object of strings`, field);
  }
  return v as Record<string, string>;
}

export function parsePlatformObject(v: unknown, field: string): Platform {
  if (!isRecord(v)) throw invalid(`${field} must be an object`, field);
  if (typeof v.os !== 'string' || !v.os)
    throw invalid(`${field}.os must be a string`, `${field}.os`);
  if (typeof v.architecture !== 'string' || !v.architecture) {
    throw invalid(`${field}.architecture must be a string`, `${field}.architecture`);
  }
  const p: Platform = { os: v.os, architecture: v.architecture };
  if (v.variant !== undefined) {
    if (typeof v.variant !== 'string')
      throw invalid(`${field}.variant must be a string`, `${field}.variant`);
    p.variant = v.variant;
  }
  if (typeof v['os.version'] === 'string') p['os.version'] = v['os.version'];
  if (Array.isArray(v['os.features'])) p['os.features'] = v['os.features'].map(String);
  if (Array.isArray(v.features)) p.features = v.features.map(String);
  return p;
}

/** Validates a descriptor's shape; the error names the field (`layers[1].digest`). */
export function parseDescriptor(v: unknown, field: string): Descriptor {
  if (!isRecord(v)) throw invalid(`${field} must be an object`, field);
  if (typeof v.mediaType !== 'string' || !v.mediaType) {
    throw invalid(`${field}.mediaType must be a non-empty string`, `${field}.mediaType`);
  }
  if (!isValidDigest(v.digest)) {
    throw invalid(
      `${field}.digest ${JSON.stringify(v.digest)} is not a valid digest (sha256:<64 hex>)`,
      `${field}.digest`,
    );
  }
  if (typeof v.size !== 'number' || !Number.isSafeInteger(v.size) || v.size < 0) {
    throw invalid(`${field}.size must be a non-negative integer`, `${field}.size`);
  }
  const d: Descriptor = { mediaType: v.mediaType, digest: v.digest, size: v.size };
  if (v.annotations !== undefined)
    d.annotations = checkStringMap(v.annotations, `${field}.annotations`);
  if (v.platform !== undefined) d.platform = parsePlatformObject(v.platform, `${field}.platform`);
  if (v.urls !== undefined) {
    if (!Array.isArray(v.urls) || !v.urls.every((u) => typeof u === 'string')) {
      throw invalid(`${field}.urls must be an array of strings`, `${field}.urls`);
    }
    d.urls = v.urls as string[];
  }
  if (typeof v.artifactType === 'string') d.artifactType = v.artifactType;
  return d;
}

/** "os/arch[/variant]" → Platform; throws a TypeError naming the bad string. */
export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[A-Za-z0-9._-]+$/.test(p))) {
    throw new TypeError(`platform ${JSON.stringify(s)} is not OS/ARCH[/VARIANT]`);
  }
  const p: Platform = { os: parts[0]!, architecture: parts[1]! };
  if (parts[2]) p.variant = parts[2];
  return p;
}

export function formatPlatform(p: { os: string; architecture: string; variant?: string }): string {
  return `${p.os}/${p.architecture}${p.variant ? '/' + p.variant : ''}`;
}

/** True when `have` satisfies `want` (variant compared only when `want` names one). */
export function platformMatches(
  have: { os: string; architecture: string; variant?: string } | undefined,
  want: { os: string; architecture: string; variant?: string },
): boolean {
  if (!have) return false;
  if (have.os !== want.os || have.architecture !== want.architecture) return false;
  return want.variant === undefined || have.variant === want.variant;
}
