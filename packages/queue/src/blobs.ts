import type { RedisConnection } from './connection';
import { Keys } from './keys';
import { Lease, type LeaseRef, type LeaseWrite } from './lease';
import { Script } from './script';

/**
 * KEYS: one blob's repository set per blob. ARGV: now (ms), how many
 * repositories to keep, TTL (s), then each key's repository. Records each,
 * newest first, keeping the most recent ones.
 */
const RECORD_BLOBS = new Script(
  'ferryBlobsRecord',
  `
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[1], ARGV[3 + i])
  redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -tonumber(ARGV[2]) - 1)
  redis.call('EXPIRE', KEYS[i], ARGV[3])
end
return #KEYS
`,
);

/** A blob a registry holds in one repository: a blob index record. */
export interface BlobRecord {
  /** host[:port] */
  registry: string;
  repository: string;
  digest: string;
}

export interface BlobIndexOptions {
  prefix: string;
  /** How long records live after their last update. Default 30 days. */
  ttlSeconds?: number;
  /** Repositories remembered per blob (most recent first). Default 20. */
  maxRepositories?: number;
}

export interface CompressedRecord {
  digest: string;
  size: number;
}

/** What a finished upload publishes, under the lease it was made with. */
export interface RecordUploadOptions {
  /** The upload lease as acquired: nothing is written unless it is still held with this token. */
  lease: LeaseRef;
  /** host[:port] */
  registry: string;
  repository: string;
  /** The digest of the bytes sent (computed while sending). */
  digest: string;
  /** For a layer Ferry compressed: the cache entry diffID + settings → digest and size. */
  compressed?: { diffId: string; level: number; zlib: string; size: number };
}

/**
 * What Ferry remembers about blobs — only ever as *candidates*: a digest to
 * HEAD for or a repository to mount from. Nothing here is trusted as the hash
 * of bytes being sent.
 *  - where it pushed what (registry + digest → repositories), for cross-repo mounts;
 *  - a dir: layer's uncompressed digest (diffID) + gzip level + zlib version →
 *    the compressed digest and size its deterministic gzip gave last time.
 */
export class BlobIndex {
  private readonly keys: Keys;
  private readonly ttl: number;
  private readonly max: number;
  private readonly lease: Lease;

  constructor(
    private readonly redis: RedisConnection,
    opts: BlobIndexOptions,
  ) {
    this.keys = new Keys(opts.prefix);
    this.ttl = opts.ttlSeconds ?? 30 * 24 * 3600;
    this.max = opts.maxRepositories ?? 20;
    this.lease = new Lease(redis, { prefix: opts.prefix });
  }

  /**
   * Publishes a finished upload — the blob index entry and, for a layer Ferry
   * compressed, the compressed-digest cache entry — in one Lua script that
   * first checks the upload lease is still held with its token. False, and
   * nothing written, when the lease was lost (another worker took over).
   */
  async recordUpload(o: RecordUploadOptions): Promise<boolean> {
    const repos = this.keys.blobRepos(o.registry, o.digest);
    const writes: LeaseWrite[] = [
      { keys: [repos], command: ['ZADD', { key: 0 }, Date.now(), o.repository] },
      { keys: [repos], command: ['ZREMRANGEBYRANK', { key: 0 }, 0, -this.max - 1] },
      { keys: [repos], command: ['EXPIRE', { key: 0 }, this.ttl] },
    ];
    if (o.compressed) {
      const c = o.compressed;
      const value = JSON.stringify({ digest: o.digest, size: c.size } satisfies CompressedRecord);
      writes.push({
        keys: [this.keys.compressed(c.diffId, c.level, c.zlib)],
        command: ['SET', { key: 0 }, value, 'EX', this.ttl],
      });
    }
    return this.lease.commit(o.lease.key, o.lease.owner, o.lease.token, writes);
  }

  /** Records that `registry` (host[:port]) holds `digest` in `repository`. */
  async recordBlob(registry: string, repository: string, digest: string): Promise<void> {
    await this.recordBlobs([{ registry, repository, digest }]);
  }

  /** recordBlob for several blobs: one script call however many. */
  async recordBlobs(blobs: readonly BlobRecord[]): Promise<void> {
    if (blobs.length === 0) return;
    await RECORD_BLOBS.run(
      this.redis,
      blobs.map((b) => this.keys.blobRepos(b.registry, b.digest)),
      [Date.now(), this.max, this.ttl, ...blobs.map((b) => b.repository)],
    );
  }

  /** Repositories of `registry` known to hold `digest`, most recently recorded first. */
  async reposWithBlob(registry: string, digest: string): Promise<string[]> {
    return this.redis.zrevrange(this.keys.blobRepos(registry, digest), 0, -1);
  }

  /** Forgets a repository that turned out not to hold the blob (a failed mount). */
  async forgetBlob(registry: string, repository: string, digest: string): Promise<void> {
    await this.redis.zrem(this.keys.blobRepos(registry, digest), repository);
  }

  /** Unconditional; a finished upload uses recordUpload instead (fenced by its lease). */
  async cacheCompressed(
    diffId: string,
    gzipLevel: number,
    zlibVersion: string,
    digest: string,
    size: number,
  ): Promise<void> {
    await this.redis.set(
      this.keys.compressed(diffId, gzipLevel, zlibVersion),
      JSON.stringify({ digest, size } satisfies CompressedRecord),
      'EX',
      this.ttl,
    );
  }

  async lookupCompressed(
    diffId: string,
    gzipLevel: number,
    zlibVersion: string,
  ): Promise<CompressedRecord | null> {
    const raw = await this.redis.get(this.keys.compressed(diffId, gzipLevel, zlibVersion));
    if (raw === null) return null;
    try {
      const r = JSON.parse(raw) as CompressedRecord;
      return typeof r.digest === 'string' && typeof r.size === 'number' ? r : null;
    } catch {
      return null;
    }
  }
}
