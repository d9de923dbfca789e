/**
 * What the service tests share: a real redis-server and docker-registry (a
 * fault proxy in front of it), a source root, a queue context on a fresh
 * prefix, and pushes created in the push state the way the API accepts them
 * (source opened and pinned) — without the API.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { loadConfig, type FerryConfig } from '@ferry/config';
import { formatSource, openSource, snapshotKey, type Layer } from '@ferry/image-source';
import { createLogger, type Logger } from '@ferry/log';
import {
  openQueueContext,
  type DirOptions,
  type PushLayout,
  type PushRequest,
  type QueueContext,
} from '@ferry/queue';
import { RegistryClient } from '@ferry/registry-client';
import { pushLayoutOf } from '@ferry/runtime';
import {
  startProxy,
  startRedis,
  startRegistry,
  tmpDir,
  type ProxyHandle,
  type RedisHandle,
  type RegistryHandle,
} from '../../../test/helpers';

export interface ServiceEnv {
  redis: RedisHandle;
  registry: RegistryHandle;
  /** In front of the registry: push to proxy.host to count and hold requests. */
  proxy: ProxyHandle;
  root: string;
  config: FerryConfig;
  ctx: QueueContext;
  client: RegistryClient;
  logger: Logger;
  stop(): Promise<void>;
}

export async function startServiceEnv(
  name: string,
  env: Record<string, string> = {},
): Promise<ServiceEnv> {
  const [redis, registry] = await Promise.all([startRedis(), startRegistry()]);
  const proxy = await startProxy({ host: '127.0.0.1', port: registry.port });
  const root = tmpDir(name);
  const config = loadConfig({
    FERRY_REDIS_URL: redis.url,
    FERRY_QUEUE_PREFIX: `{s${randomBytes(4).toString('hex')}}`,
    FERRY_REGISTRY_ALLOW: `${registry.host},${proxy.host}`,
    FERRY_SOURCE_ROOT: root,
    FERRY_DOCKER_CONFIG: '/nonexistent/ferry-test/config.json',
    FERRY_LOG_LEVEL: process.env.FERRY_TEST_LOG_LEVEL ?? 'error',
    FERRY_GZIP_LEVEL: '1',
    ...env,
  });
  const logger = createLogger({
    level: config.logLevel,
    format: 'json',
    silent: !process.env.FERRY_TEST_LOG_LEVEL,
  });
  const ctx = await openQueueContext(config, { role: 'producer', name: `ferry-${name}` });
  const client = new RegistryClient({
    allow: config.registryAllow,
    insecure: config.insecureRegistries,
  });
  return {
    redis,
    registry,
    proxy,
    root,
    config,
    ctx,
    client,
    logger,
    async stop() {
      await client.close().catch(() => undefined);
      await ctx.close().catch(() => undefined);
      await proxy.stop();
      await Promise.allSettled([redis.stop(), registry.stop()]);
    },
  };
}

/** Writes a dir: image under root/name: one layer per entry, each file `mb` MiB of random bytes or a text. */
export function writeDirImage(
  root: string,
  name: string,
  layers: Record<string, { mb: number } | string>,
  config?: Record<string, unknown>,
): string {
  const img = join(root, name);
  for (const [layer, content] of Object.entries(layers)) {
    const dir = join(img, 'layers', layer);
    mkdirSync(dir, { recursive: true });
    if (typeof content === 'string') writeFileSync(join(dir, 'file.txt'), content);
    else writeFileSync(join(dir, 'blob.bin'), randomBytes(content.mb * 1024 * 1024));
  }
  if (config) writeFileSync(join(img, 'config.json'), JSON.stringify(config));
  return img;
}

export interface CreatedPush {
  id: string;
  request: PushRequest;
  layout: PushLayout;
}

/** Records a queued push as the API accepts one (source opened now and pinned); enqueues nothing. */
export async function createPush(
  env: Pick<ServiceEnv, 'ctx' | 'config'>,
  source: string,
  target: string,
  extra: Partial<PushRequest> = {},
): Promise<CreatedPush> {
  const dirOptions: DirOptions | undefined = source.startsWith('dir:')
    ? (extra.dirOptions ?? { owners: 'root', mtime: 'epoch' })
    : undefined;
  const opened = await openSource(source, {
    root: env.config.sourceRoot,
    gzipLevel: env.config.gzipLevel,
    platform: extra.platform,
    ...(dirOptions ? { dirOptions } : {}),
  });
  const request: PushRequest = {
    source: formatSource({ ...opened.spec, path: opened.realPath }),
    target,
    tags: [],
    format: 'oci',
    ...extra,
    ...(dirOptions ? { dirOptions } : {}),
    pin: {
      key: snapshotKey(opened.snapshot),
      snapshot: opened.snapshot as unknown as Record<string, unknown>,
    },
  };
  // As the API lays it out: one lookup job per image when every layer states its digest.
  const layout = pushLayoutOf(opened.images);
  const id = randomUUID();
  await env.ctx.store.create(id, request, { layout });
  return { id, request, layout };
}

/** The digest, size and diffID a layer has when Ferry compresses it (read in full once). */
export async function layerFacts(
  layer: Layer,
): Promise<{ digest: string; size: number; diffId: string }> {
  const s = await layer.open();
  s.stream.resume();
  const r = await s.done;
  return { digest: r.digest, size: r.size, diffId: r.diffId };
}

/** Opens `source` as a job would and returns its layers (image 0). */
export async function layersOf(
  env: Pick<ServiceEnv, 'config'>,
  request: PushRequest,
): Promise<Layer[]> {
  const opened = await openSource(request.source, {
    root: env.config.sourceRoot,
    gzipLevel: env.config.gzipLevel,
    platform: request.platform,
    ...(request.dirOptions ? { dirOptions: request.dirOptions } : {}),
  });
  return opened.images[0].layers;
}

/** Polls `fn` until it answers a truthy value (no wall-clock assertion: a mocha timeout ends it). */
export async function until<T>(fn: () => Promise<T> | T, pollMs = 25): Promise<NonNullable<T>> {
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

/** An OCI layout with one linux/amd64 image of two gzip layers; returns its path and the blobs (layers, config). */
export function writeOciImage(root: string, name: string) {
  const dir = join(root, name);
  mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
  const put = (b: Buffer) => {
    const d = 'sha256:' + createHash('sha256').update(b).digest('hex');
    writeFileSync(join(dir, 'blobs', 'sha256', d.slice(7)), b);
    return { digest: d, size: b.length, bytes: b };
  };
  const raws = [randomBytes(3000), randomBytes(5000)];
  const layers = raws.map((r) => put(gzipSync(r)));
  const config = put(
    Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        rootfs: {
          type: 'layers',
          diff_ids: raws.map((r) => 'sha256:' + createHash('sha256').update(r).digest('hex')),
        },
      }),
    ),
  );
  const manifest = put(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: {
          mediaType: 'application/vnd.oci.image.config.v1+json',
          digest: config.digest,
          size: config.size,
        },
        layers: layers.map((l) => ({
          mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
          digest: l.digest,
          size: l.size,
        })),
      }),
    ),
  );
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: manifest.digest,
          size: manifest.size,
          platform: { os: 'linux', architecture: 'amd64' },
          annotations: { 'org.opencontainers.image.ref.name': 'latest' },
        },
      ],
    }),
  );
  return { dir, layers, config };
}
