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
