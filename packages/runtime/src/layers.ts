import type { Layer } from '@ferry/image-source';
import { parseReference, type RepoRef } from '@ferry/registry-client';
import { PermanentError } from './worker';
import type { PushRequest, PushStore } from '@ferry/queue';
import type { SourceCache } from './clients';

/** What lookup and upload jobs return: the coordinator reads it with getChildrenValues(). */
export interface LayerOutcome {
  imageIndex: number;
  layerIndex: number;
  /** 'upload' from a lookup that handed the layer to an upload job. */
  state: 'exists' | 'mounted' | 'uploaded' | 'upload';
  digest?: string;
  size?: number;
  diffId?: string;
  mediaType: string;
  mountedFrom?: string;
}

/** host[:port] + repository of a push target. */
export function targetRepo(target: string): RepoRef {
  const ref = parseReference(target);
  return { registry: ref.registry, repository: ref.repository };
}

/** The layer a job names, from the (cached) opened source. */
export async function layerOf(
  sources: SourceCache,
  source: string,
  platform: string | undefined,
  imageIndex: number,
  layerIndex: number,
  gzipLevel?: number,
): Promise<Layer> {
  const opened = await sources.open(source, platform, gzipLevel);
  const image = opened.images[imageIndex];
  const layer = image?.layers[layerIndex];
  if (!layer) {
    // The source changed between the request and the job: nothing sensible to retry.
    throw new PermanentError(
      'FERRY_SOURCE_CHANGED',
      `${source} has no layer ${layerIndex} in image ${imageIndex} any more`,
    );
  }
  return layer;
}

/** The upload lease key of a blob: by digest when known, else by content (diffID + compression). */
export function blobLeaseKey(
  registry: string,
  digest: string | undefined,
  diffId: string | undefined,
  gzipLevel: number,
  zlibIdentity: string,
): string {
  if (digest) return `${registry}/${digest}`;
  return `${registry}/diff/${diffId ?? 'unknown'}/gzip-${gzipLevel}/zlib-${zlibIdentity}`;
}

/** The request of a push, read once per process from the push state (job data holds only references). */
export class PushRequests {
  private readonly cache = new Map<string, { at: number; value: PushRequest | undefined }>();
  constructor(
    private readonly store: PushStore,
    private readonly ttlMs = 60_000,
  ) {}

  async get(pushId: string): Promise<PushRequest | undefined> {
    const now = Date.now();
    const hit = this.cache.get(pushId);
    if (hit && now - hit.at < this.ttlMs) return hit.value;
    const state = await this.store.get(pushId);
    const value = state?.request;
    this.cache.set(pushId, { at: now, value });
    if (this.cache.size > 1000) {
      for (const [k, e] of this.cache) if (now - e.at >= this.ttlMs) this.cache.delete(k);
    }
    return value;
  }
}
