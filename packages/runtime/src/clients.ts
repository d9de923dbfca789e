import type { FerryConfig } from '@ferry/config';
import type { Logger } from '@ferry/log';
import { openSource, type OpenedSource, type SourceSnapshot } from '@ferry/image-source';
import type { DirOptions, SourcePin } from '@ferry/queue';
import { RegistryClient } from '@ferry/registry-client';

/** The registry client every worker uses: allowlist, insecure hosts, CA file and credentials from config. */
export function createRegistryClient(config: FerryConfig, logger?: Logger): RegistryClient {
  return new RegistryClient({
    allow: config.registryAllow,
    insecure: config.insecureRegistries,
    caFile: config.caFile,
    dockerConfigPath: config.dockerConfig,
    logger,
  });
}

/**
 * The pin of a `--all-tags` copy: every tag of the source repository with the
 * snapshot its manifest was pinned to (one push, the images of all tags in a row).
 */
export interface TagsSnapshot {
  kind: 'registry-tags';
  registry: string;
  repository: string;
  tags: { tag: string; snapshot: SourceSnapshot }[];
}

/** One tag of an `--all-tags` copy: its images are `opened.images`, at `first` in the whole. */
export interface TagPart {
  tag: string;
  opened: OpenedSource;
  first: number;
}

/** An opened source; an `--all-tags` copy lists its tags' parts. */
export interface OpenedImages extends OpenedSource {
  parts?: TagPart[];
}

/** The source string of one tag of a repository copied with --all-tags. */
export function tagSource(registry: string, repository: string, tag: string): string {
  return `docker://${registry}/${repository}:${tag}`;
}

/** Which source a job reads, and how: everything that decides the bytes of its layers. */
export interface SourceRef {
  source: string;
  /** The source as the push was accepted; absent only for version-1 jobs (never cached then). */
  pin?: SourcePin;
  platform?: string;
  /** The level the push was planned with (job data), so keys and bytes agree. */
  gzipLevel: number;
  dirOptions?: DirOptions;
}

/** The cache key of a pinned source: the snapshot and every option that changes bytes — never a path alone. */
export function sourceKey(ref: SourceRef): string | undefined {
  if (!ref.pin) return undefined;
  const dir = ref.dirOptions ? `${ref.dirOptions.owners}/${ref.dirOptions.mtime}` : 'root/epoch';
  return `${ref.pin.key}|${ref.platform ?? ''}|gzip-${ref.gzipLevel}|${dir}`;
}

/**
 * Opened sources keyed by their pin (the snapshot recorded when the push was
 * accepted), kept a short while: the jobs of one push open the same layout or
 * archive many times. Opening reads only metadata (index, manifests,
 * directory listings), never layer bytes; it is checked against the snapshot,
 * and so is every layer when it is read. A changed source gets a new pin, so a
 * new push never sees an old opening and an old push never sees the new
 * source. Unpinned (version-1) jobs are opened afresh every time.
 */
export class SourceCache {
  private readonly entries = new Map<string, { at: number; value: Promise<OpenedImages> }>();

  private registry: RegistryClient | undefined;

  constructor(
    private readonly config: FerryConfig,
    private readonly logger?: Logger,
    private readonly ttlMs = 30_000,
  ) {}

  /** docker:// sources are read with this process's registry credentials (made on first use). */
  private registryClient(): RegistryClient {
    this.registry ??= createRegistryClient(this.config, this.logger);
    return this.registry;
  }

  open(ref: SourceRef): Promise<OpenedImages> {
    const key = sourceKey(ref);
    const now = Date.now();
    const hit = key === undefined ? undefined : this.entries.get(key);
    if (hit && now - hit.at < this.ttlMs) return hit.value;
    const tags = ref.pin?.snapshot.kind === 'registry-tags';
    const value = tags ? this.openTags(ref) : this.openOne(ref);
    this.prune(now);
    if (key === undefined) return value;
    this.entries.set(key, { at: now, value });
    value.catch(() => this.entries.delete(key));
    return value;
  }

  /**
   * Takes an opening made elsewhere in this process (the API's, when it pinned
   * the push) for the pin it was pinned with, unless one is cached already.
   */
  seed(ref: SourceRef, opened: OpenedImages): void {
    const key = sourceKey(ref);
    if (key === undefined) return;
    const now = Date.now();
    this.prune(now);
    if (!this.entries.has(key)) this.entries.set(key, { at: now, value: Promise.resolve(opened) });
  }

  /** Forgets openings older than the TTL. */
  private prune(now: number): void {
    for (const [k, e] of this.entries) if (now - e.at >= this.ttlMs) this.entries.delete(k);
  }

  /** Every tag of an `--all-tags` pin, each read through its own snapshot, images in a row. */
  private async openTags(ref: SourceRef): Promise<OpenedImages> {
    const pin = ref.pin?.snapshot as unknown as TagsSnapshot;
    const parts: TagPart[] = [];
    let first = 0;
    for (const t of pin.tags) {
      const opened = await this.openOne({
        ...ref,
        source: tagSource(pin.registry, pin.repository, t.tag),
        pin: { key: '', snapshot: t.snapshot as unknown as Record<string, unknown> },
      });
      parts.push({ tag: t.tag, opened, first });
      first += opened.images.length;
    }
    const head = parts[0].opened;
    return {
      ...head,
      images: parts.flatMap((p) => p.opened.images),
      indexBytes: undefined,
      indexMediaType: undefined,
      indexDigest: undefined,
      realPath: ref.source,
      parts,
    };
  }

  private openOne(ref: SourceRef): Promise<OpenedSource> {
    return openSource(ref.source, {
      root: this.config.sourceRoot,
      gzipLevel: ref.gzipLevel,
      platform: ref.platform,
      logger: this.logger,
      ...(ref.source.startsWith('docker://') ? { registry: this.registryClient() } : {}),
      ...(ref.dirOptions ? { dirOptions: ref.dirOptions } : {}),
      ...(ref.pin ? { snapshot: ref.pin.snapshot as unknown as SourceSnapshot } : {}),
    });
  }
}

const shared = new Map<string, SourceCache>();

/**
 * The SourceCache of this process for a source root: roles run together (`ferry
 * serve`) open each pinned source once instead of once per role. Sharing is safe
 * because entries are keyed by the pin, never by path.
 */
export function sharedSourceCache(config: FerryConfig, logger?: Logger): SourceCache {
  let cache = shared.get(config.sourceRoot);
  if (!cache) {
    cache = new SourceCache(config, logger);
    shared.set(config.sourceRoot, cache);
  }
  return cache;
}

/**
 * The API's opening of a source it has just pinned, for the workers of this
 * process (`ferry serve` with several roles): they would open the same pin
 * again. A no-op where no worker role shares this process's SourceCache.
 */
export function offerOpenedSource(config: FerryConfig, ref: SourceRef, opened: OpenedImages): void {
  shared.get(config.sourceRoot)?.seed(ref, opened);
}
