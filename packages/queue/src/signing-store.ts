/**
 * What signing leaves in Redis for the API to serve: the verification keys
 * the coordinators publish (never a private key) and the OpenPGP signatures
 * of the lookaside store (`<repo>@sha256=<hex>/signature-<n>`, as
 * containers/image reads it). Every coordinator of a cluster must hold the
 * same key: publishing another one is refused, naming both fingerprints.
 */
import { randomUUID } from 'node:crypto';
import type { RedisConnection } from './connection';
import { Keys, sha256 } from './keys';
import { Lease } from './lease';

/** cosign: an EC key (cosign signatures); schema1: the key schema1 manifests are signed with (EC or RSA); pgp: OpenPGP. */
export type KeyKind = 'cosign' | 'schema1' | 'pgp';

export interface PublishedKey {
  /** PEM (cosign) or armored OpenPGP public key. */
  key: string;
  fingerprint: string;
}

export type PublishResult = { ok: true } | { ok: false; published: PublishedKey };

/** Keeps an OpenPGP signature list of one manifest at most this long (containers/image reads them in order). */
const MAX_LOOKASIDE = 64;

export class SigningStore {
  private readonly keys: Keys;
  private readonly lease: Lease;

  constructor(
    private readonly redis: RedisConnection,
    opts: { prefix: string },
  ) {
    this.keys = new Keys(opts.prefix);
    this.lease = new Lease(redis, { prefix: opts.prefix });
  }

  private keyOf(kind: KeyKind): string {
    return `${this.keys.prefix}:signing:key:${kind}`;
  }

  private lookasideKey(repoPath: string, digest: string): string {
    return `${this.keys.prefix}:sigstore:${sha256(`${repoPath}@${digest}`)}`;
  }

  /**
   * Publishes this coordinator's public key, unless another key is published
   * already: then `ok: false` with that one (a coordinator must not start).
   */
  async publishKey(kind: KeyKind, value: PublishedKey): Promise<PublishResult> {
    const k = this.keyOf(kind);
    const json = JSON.stringify(value);
    const set = await this.redis.set(k, json, 'NX');
    if (set === 'OK') return { ok: true };
    const published = await this.getKey(kind);
    if (!published || published.fingerprint === value.fingerprint) {
      if (!published) await this.redis.set(k, json);
      return { ok: true };
    }
    return { ok: false, published };
  }

  async getKey(kind: KeyKind): Promise<PublishedKey | undefined> {
    const raw = await this.redis.get(this.keyOf(kind));
    if (!raw) return undefined;
    try {
      return JSON.parse(raw) as PublishedKey;
    } catch {
      return undefined;
    }
  }

  /**
   * Adds an OpenPGP signature of `digest` in repository `repoPath` (no host,
   * as containers/image builds lookaside paths). Returns its number n (from
   * 1); a signature already there keeps its number.
   */
  async addLookaside(
    repoPath: string,
    digest: string,
    signature: Buffer,
    identity?: string,
  ): Promise<number> {
    const k = this.lookasideKey(repoPath, digest);
    const b64 = signature.toString('base64');
    // One signature per signer and reference (`identity`): signing again (a re-push, a retry)
    // replaces it in place — OpenPGP signatures carry a time, so they never repeat byte for byte.
    if (identity !== undefined) {
      const n = Number(await this.redis.hget(`${k}:ids`, identity));
      if (Number.isInteger(n) && n >= 1 && (await this.redis.llen(k)) >= n) {
        await this.redis.lset(k, n - 1, b64);
        return n;
      }
    }
    const have = await this.redis.lrange(k, 0, MAX_LOOKASIDE - 1);
    const at = have.indexOf(b64);
    if (at >= 0) return at + 1;
    const n = await this.redis.rpush(k, b64);
    if (identity !== undefined) await this.redis.hset(`${k}:ids`, identity, String(n));
    return n;
  }

  /** Signature n (from 1) of a manifest, or undefined. */
  async getLookaside(repoPath: string, digest: string, n: number): Promise<Buffer | undefined> {
    if (!Number.isInteger(n) || n < 1 || n > MAX_LOOKASIDE) return undefined;
    const b64 = await this.redis.lindex(this.lookasideKey(repoPath, digest), n - 1);
    return b64 === null ? undefined : Buffer.from(b64, 'base64');
  }

  /**
   * Runs fn while holding a cluster-wide lock on `name` (a signature tag's
   * read-modify-write: the registry has no compare-and-swap on tags). Waits
   * for the lock up to timeoutMs, then fails.
   */
  async withLock<T>(name: string, fn: () => Promise<T>, timeoutMs = 60_000): Promise<T> {
    const key = `signing-lock:${sha256(name)}`;
    const owner = randomUUID();
    const deadline = Date.now() + timeoutMs;
    let token: number | null = null;
    for (let wait = 20; token === null; wait = Math.min(wait * 2, 500)) {
      token = await this.lease.acquire(key, owner, 30_000);
      if (token !== null) break;
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for the signing lock on ${name}`);
      await new Promise((r) => setTimeout(r, wait));
    }
    const keeper = this.lease.keep(key, owner, token, 30_000);
    try {
      return await fn();
    } finally {
      keeper.stop();
      await this.lease.release(key, owner, token).catch(() => undefined);
    }
  }
}
