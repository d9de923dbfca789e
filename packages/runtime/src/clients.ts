import type { FerryConfig } from '@ferry/config';
import type { Logger } from '@ferry/log';
import { openSource, type OpenedSource } from '@ferry/image-source';
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
 * Opened sources by source string, kept a short while: the jobs of one push
 * open the same layout or archive many times. Opening reads only metadata
 * (index, manifests, directory listings), never layer bytes.
 */
export class SourceCache {
  private readonly entries = new Map<string, { at: number; value: Promise<OpenedSource> }>();

  constructor(
    private readonly config: FerryConfig,
    private readonly logger?: Logger,
    private readonly ttlMs = 30_000,
  ) {}

  /** gzipLevel: the level the push was planned with (job data), so keys and bytes agree; default config's. */
  open(source: string, platform?: string, gzipLevel?: number): Promise<OpenedSource> {
    const level = gzipLevel ?? this.config.gzipLevel;
    const key = `${platform ?? ''}|${level}|${source}`;
    const now = Date.now();
    const hit = this.entries.get(key);
    if (hit && now - hit.at < this.ttlMs) return hit.value;
    const value = openSource(source, {
      root: this.config.sourceRoot,
      gzipLevel: level,
      platform,
      logger: this.logger,
    });
    this.entries.set(key, { at: now, value });
    value.catch(() => this.entries.delete(key));
    for (const [k, e] of this.entries) if (now - e.at >= this.ttlMs) this.entries.delete(k);
    return value;
  }
}
