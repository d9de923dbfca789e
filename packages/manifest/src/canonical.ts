import { createHash } from 'node:crypto';

/** Bytes that will be sent, with the digest computed once from exactly those bytes. */
export interface Canonical {
  bytes: Buffer;
  /** `sha256:<hex>` of `bytes`. */
  digest: string;
  size: number;
  mediaType: string;
}

function sortValue(value: unknown, path: string): unknown {
  if (value === null) return null;
  if (Array.isArray(value)) return value.map((v, i) => sortValue(v, `${path}[${i}]`));
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value;
    case 'number':
      if (!Number.isFinite(value))
        throw new TypeError(`canonicalJson: ${path} is not a finite number`);
      return value;
    case 'object': {
      if (Buffer.isBuffer(value)) throw new TypeError(`canonicalJson: ${path} is a Buffer`);
      const out: Record<string, unknown> = {};
      for (const key of Object.keys(value as object).sort()) {
        const v = (value as Record<string, unknown>)[key];
        if (v === undefined) continue;
        out[key] = sortValue(v, path ? `${path}.${key}` : key);
      }
      return out;
    }
    default:
      throw new TypeError(`canonicalJson: ${path || 'value'} has unsupported type ${typeof value}`);
  }
}

/**
 * Deterministic JSON: object keys sorted (by UTF-16 code unit, as
 * Array.prototype.sort does), no insignificant whitespace, `undefined` members
 * dropped. The same value always gives the same bytes.
 */
export function canonicalJson(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(sortValue(value, '')), 'utf8');
}

export function sha256Digest(bytes: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(bytes).digest('hex');
}

/** Wraps bytes as a Canonical: digest and size computed from these bytes. */
export function canonicalOf(bytes: Buffer, mediaType: string): Canonical {
  return { bytes, digest: sha256Digest(bytes), size: bytes.length, mediaType };
}

/** canonicalJson(value) wrapped with its digest. */
export function canonical(value: unknown, mediaType: string): Canonical {
  return canonicalOf(canonicalJson(value), mediaType);
}
