import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash, randomUUID } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import type { Redis } from 'ioredis';
import { loadConfig, type FerryConfig } from '@ferry/config';
import { createLogger } from '@ferry/log';
import {
  createConnection,
  createQueues,
  PushStore,
  waitReady,
  type FerryQueues,
} from '@ferry/queue';
import { buildApi } from '@ferry/api';
import type { FastifyInstance } from 'fastify';
import { tmpDir } from '../../../test/helpers/tmp';

/** A source root holding a two-layer dir: image at <root>/images/app. */
export function makeSourceRoot(): { root: string; app: string } {
  const root = tmpDir('api-src');
  const app = join(root, 'images', 'app');
  for (const layer of ['01-base', '02-app']) {
    mkdirSync(join(app, 'layers', layer, 'etc'), { recursive: true });
    writeFileSync(join(app, 'layers', layer, 'etc', `${layer}.txt`), `${layer}\n`);
  }
  writeFileSync(join(app, 'config.json'), JSON.stringify({ config: { Cmd: ['/bin/true'] } }));
  return { root, app };
}

export interface TestApi {
  app: FastifyInstance;
  conn: Redis;
  queues: FerryQueues;
  store: PushStore;
  config: FerryConfig;
  close(): Promise<void>;
}

export async function makeApi(
  redisUrl: string,
  root: string,
  env: Record<string, string> = {},
  opts: { sseKeepAliveMs?: number } = {},
): Promise<TestApi> {
  const config = loadConfig(
    {
      FERRY_REDIS_URL: redisUrl,
      FERRY_SOURCE_ROOT: root,
      FERRY_REGISTRY_ALLOW: '127.0.0.1,localhost,registry.test:5000',
      FERRY_API_TOKENS: 'secret-token-1,secret-token-2',
      FERRY_QUEUE_PREFIX: `{a${randomUUID().slice(0, 8)}}`,
      FERRY_STATE_TTL: '3600',
      ...env,
    },
    root,
  );
  const conn = createConnection(redisUrl, { role: 'producer' });
  await waitReady(conn);
  const queues = createQueues({ connection: conn, prefix: config.queuePrefix });
  const store = new PushStore(conn, { prefix: config.queuePrefix, ttlSeconds: config.stateTtl });
  const app = buildApi({
    config,
    redis: conn,
    queues,
    store,
    logger: createLogger({ silent: process.env.FERRY_TEST_LOG !== '1' }),
    sseKeepAliveMs: opts.sseKeepAliveMs ?? 500,
  });
  await app.ready();
  return {
    app,
    conn,
    queues,
    store,
    config,
    async close() {
      await app.close();
      await queues.close();
      conn.disconnect();
    },
  };
}

export const AUTH = { authorization: 'Bearer secret-token-1' };

// The tests' one SSE parser (eventsource-parser), shared with the e2e suites.
export { readSse, type SseEvent } from '../../../test/helpers/sse';

function digestOf(b: Buffer): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex');
}

/**
 * Writes a two-platform OCI layout by hand: linux/amd64 with `amd64Layers`
 * layers and linux/arm64 with `arm64Layers`, behind a nested image index
 * named by `ref` in index.json.
 */
export function writeOciLayout(
  dir: string,
  amd64Layers: number,
  arm64Layers: number,
  ref = 'latest',
): void {
  mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
  writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const blob = (b: Buffer) => {
    const d = digestOf(b);
    writeFileSync(join(dir, 'blobs', 'sha256', d.slice(7)), b);
    return { digest: d, size: b.length };
  };
  const image = (arch: string, n: number) => {
    const layers = [];
    const diffIds = [];
    for (let i = 0; i < n; i++) {
      const raw = Buffer.from(`${arch} layer ${i} `.repeat(50));
      diffIds.push(digestOf(raw));
      layers.push({
        mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
        ...blob(gzipSync(raw)),
      });
    }
    const config = blob(
      Buffer.from(
        JSON.stringify({
          architecture: arch,
          os: 'linux',
          rootfs: { type: 'layers', diff_ids: diffIds },
          config: {},
        }),
      ),
    );
    const manifest = blob(
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
          layers,
        }),
      ),
    );
    return {
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      ...manifest,
      platform: { os: 'linux', architecture: arch },
    };
  };
  const index = blob(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [image('amd64', amd64Layers), image('arm64', arm64Layers)],
      }),
    ),
  );
  writeFileSync(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.index.v1+json',
          ...index,
          annotations: { 'org.opencontainers.image.ref.name': ref },
        },
      ],
    }),
  );
}
