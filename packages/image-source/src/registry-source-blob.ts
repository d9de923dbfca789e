/**
 * docker:// blobs: a layer streamed from the source registry. Every byte is
 * hashed from byte 0 (the pipeline's passthrough step: bytes before the
 * consumer's offset are read and hashed, not emitted), the newest chunk is held
 * back until the digest and size are verified, and a connection cut mid-blob is
 * resumed in the same stream with `Range: bytes=<received>-`.
 */
import { ErrorCodes, RegistryError, classifyError, isTransient } from '@ferry/registry-client';
import type { Descriptor } from '@ferry/manifest';
import { SourceError, SourceErrorCodes } from './errors';
import { runPipeline, type ByteSource } from './pipeline';
import type { Layer, RegistryReader } from './types';

/** Re-GETs in a row without a new byte before a blob read gives up (transient error). */
export const BLOB_RESUME_ATTEMPTS = 4;
/** Back-off before the first re-GET; doubled for each further one without progress. */
export const BLOB_RESUME_DELAY_MS = 100;
/** Re-GETs of one stream in all, progress or not. */
const MAX_TOTAL_RESUMES = 64;

/** Foreign / non-distributable layer media types: left as references, never fetched. */
const FOREIGN_TYPES: ReadonlySet<string> = new Set([
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  'application/vnd.docker.image.rootfs.foreign.diff.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
]);

export function isForeignLayer(d: Descriptor): boolean {
  return FOREIGN_TYPES.has(d.mediaType) || (d.urls?.length ?? 0) > 0;
}

export interface BlobLocation {
  reader: RegistryReader;
  registry: string;
  repository: string;
}

/** What one layer stream did: re-GETs made (for logs and tests). */
export interface BlobReadStats {
  resumes: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * The raw bytes of a blob from a registry, from byte 0, resuming after a cut
 * with a Range GET from the byte where it stopped. Ends when `size` bytes came
 * (a body that ends early counts as a cut); more bytes than `size` are passed
 * on, so the pipeline reports the blob as too long.
 */
export function registryByteSource(
  loc: BlobLocation,
  digest: string,
  size: number,
  stats: BlobReadStats,
): ByteSource {
  const ac = new AbortController();
  const repo = { registry: loc.registry, repository: loc.repository };
  const what = `blob ${digest} from ${loc.registry}/${loc.repository}`;
  let received = 0;
  let cancelled = false;
  let paused = false;
  let current: NodeJS.ReadableStream | undefined;

  /** Reads one response body; resolves at its end, rejects on an error of the connection. */
  const consume = (stream: NodeJS.ReadableStream, onData: (c: Buffer) => void): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      current = stream;
      stream.on('data', (c: Buffer) => {
        if (cancelled) return;
        received += c.length;
        onData(c);
      });
      stream.once('end', () => resolve());
      stream.once('error', reject);
      stream.once('close', () => resolve()); // destroyed without an error: checked by length
      if (paused) stream.pause();
    });

  const run = async (
    onData: (c: Buffer) => void,
    onEnd: () => void,
    onError: (e: Error) => void,
  ): Promise<void> => {
    let failures = 0;
    let total = 0;
    for (;;) {
      const before = received;
      try {
        const r = await loc.reader.getBlob(
          repo,
          digest,
          { signal: ac.signal },
          received > 0 ? { offset: received } : {},
        );
        if (cancelled) {
          r.stream.destroy();
          return;
        }
        if (r.offset !== received) {
          r.stream.destroy();
          throw new RegistryError(
            ErrorCodes.REGISTRY_PROTOCOL,
            `GET ${what} from byte ${received}: the registry client answered from byte ${r.offset}`,
            { registry: loc.registry },
          );
        }
        await consume(r.stream, onData);
        current = undefined;
        if (cancelled) return;
        if (received >= size) return onEnd();
        throw new RegistryError(
          ErrorCodes.REGISTRY_UNAVAILABLE,
          `GET ${what}: the body ended at byte ${received} of ${size}`,
          { registry: loc.registry },
        );
      } catch (e) {
        current = undefined;
        if (cancelled) return;
        // Every byte came before the connection failed: nothing to re-GET; the digest decides.
        if (received >= size) return onEnd();
        const err = classifyError(e, loc.registry, `GET ${what}`);
        // A body cut by the network surfaces as whatever undici / node:stream throws: resumable.
        const resumable =
          err instanceof RegistryError ? isTransient(err) : !(err instanceof SourceError);
        if (!resumable) return onError(err as Error);
        if (received > before) failures = 0;
        failures++;
        total++;
        if (failures > BLOB_RESUME_ATTEMPTS || total > MAX_TOTAL_RESUMES) {
          return onError(
            new RegistryError(
              ErrorCodes.REGISTRY_UNAVAILABLE,
              `GET ${what}: the connection failed ${failures} times in a row at byte ${received} of ${size}; giving up for now (${(err as Error).message})`,
              { registry: loc.registry, cause: err },
            ),
          );
        }
        await sleep(BLOB_RESUME_DELAY_MS * 2 ** (failures - 1));
        if (cancelled) return;
        stats.resumes++;
      }
    }
  };

  return {
    start(onData, onEnd, onError) {
      run(onData, onEnd, onError).catch((e: unknown) => {
        if (!cancelled) onError(e as Error);
      });
    },
    pause() {
      paused = true;
      current?.pause();
    },
    resume() {
      paused = false;
      current?.resume();
    },
    cancel() {
      cancelled = true;
      ac.abort();
      const s = current as { destroy?: () => void } | undefined;
      s?.destroy?.();
      current = undefined;
    },
  };
}

/** A layer of a docker:// image: streamed from the registry, verified against its descriptor. */
export function registryLayer(
  loc: BlobLocation,
  d: Descriptor,
  index: number,
  n: number,
  statedDiffId: string | undefined,
): Layer & { lastRead?: BlobReadStats } {
  const description = `${loc.registry}/${loc.repository}@${d.digest.slice(0, 19)}… (layer ${index + 1}/${n})`;
  const foreign = isForeignLayer(d);
  const layer: Layer & { lastRead?: BlobReadStats } = {
    index,
    mediaType: d.mediaType,
    digest: d.digest,
    size: d.size,
    ...(statedDiffId ? { diffId: statedDiffId } : {}),
    ...(foreign ? { foreign: true } : {}),
    ...(d.urls?.length ? { urls: [...d.urls] } : {}),
    description,
    open(offset = 0) {
      if (foreign) {
        return Promise.reject(
          new SourceError(
            SourceErrorCodes.UNSUPPORTED_FILE,
            `${description} is a foreign (non-distributable) layer: it is left as a reference and never fetched`,
            d.digest,
          ),
        );
      }
      if (!Number.isSafeInteger(offset) || offset < 0 || offset > d.size) {
        return Promise.reject(
          new SourceError(
            SourceErrorCodes.OFFSET_OUT_OF_RANGE,
            `offset ${offset} is not within ${description} (${d.size} bytes)`,
            'offset',
          ),
        );
      }
      const stats: BlobReadStats = { resumes: 0 };
      layer.lastRead = stats;
      return Promise.resolve(
        runPipeline({
          source: registryByteSource(loc, d.digest, d.size, stats),
          mode: { kind: 'passthrough', content: 'opaque' },
          offset,
          description,
          expect: { digest: d.digest, size: d.size },
          ...(statedDiffId ? { statedDiffId } : {}),
        }),
      );
    },
    diffIdOnly() {
      // From the config, never computed: the blob is not read (and not gunzipped).
      if (statedDiffId) return Promise.resolve({ diffId: statedDiffId, uncompressedSize: -1 });
      return Promise.reject(
        new SourceError(
          SourceErrorCodes.UNSUPPORTED_FILE,
          `${description}: the image config states no diffID for this layer`,
          d.digest,
        ),
      );
    },
  };
  return layer;
}
