import { createHash } from 'node:crypto';
import type { PushStatus } from './types';

/**
 * Every Redis key Ferry owns outside BullMQ's own, under the queue prefix
 * (`{ferry}` by default: a hash tag, so in Redis Cluster all of them — and
 * BullMQ's — live in one slot and Lua scripts may touch several at once).
 * BullMQ uses `<prefix>:<queue name>:…`; the segments below are never queue names.
 */
export class Keys {
  constructor(readonly prefix: string) {
    if (prefix.includes(':'))
      throw new Error(`queue prefix ${JSON.stringify(prefix)} may not contain ":"`);
  }
  push(id: string): string {
    return `${this.prefix}:push:${id}`;
  }
  events(id: string): string {
    return `${this.prefix}:push:${id}:events`;
  }
  index(status: PushStatus | 'all'): string {
    return `${this.prefix}:pushes:${status}`;
  }
  idempotency(key: string): string {
    return `${this.prefix}:idem:${sha256(key)}`;
  }
  metrics(): string {
    return `${this.prefix}:metrics`;
  }
  semaphore(name: string, key: string): string {
    return `${this.prefix}:sem:${name}:${key}`;
  }
  lease(key: string): string {
    return `${this.prefix}:lease:${key}`;
  }
  leaseToken(key: string): string {
    return `${this.prefix}:lease-token:${key}`;
  }
  /** The registry upload session (Location) a blob upload left, for resuming: per lease key and repository. */
  uploadSession(leaseKey: string, repository: string): string {
    return `${this.prefix}:upload-session:${leaseKey}:${repository}`;
  }
  blobRepos(registry: string, digest: string): string {
    return `${this.prefix}:blob:${registry}:${digest}`;
  }
  compressed(diffId: string, gzipLevel: number, zlibVersion: string): string {
    return `${this.prefix}:gz:${diffId}:${gzipLevel}:${zlibVersion}`;
  }
}

export function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

/**
 * The part of a key Redis Cluster hashes: the text between the first `{` and
 * the first `}` after it when that is not empty, else the whole key (the
 * Cluster specification's hash-tag rule). undefined when the key has no tag.
 */
export function hashTag(key: string): string | undefined {
  const open = key.indexOf('{');
  if (open < 0) return undefined;
  const close = key.indexOf('}', open + 1);
  if (close < 0 || close === open + 1) return undefined;
  return key.slice(open + 1, close);
}

/** CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), the checksum Redis Cluster uses. */
function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const byte of bytes) {
    crc ^= byte << 8;
    for (let bit = 0; bit < 8; bit++) {
      crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    }
  }
  return crc;
}

/** The Redis Cluster hash slot (0-16383) of a key. */
export function keySlot(key: string): number {
  return crc16(Buffer.from(hashTag(key) ?? key, 'utf8')) % 16384;
}
