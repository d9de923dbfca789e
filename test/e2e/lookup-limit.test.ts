import assert from 'node:assert/strict';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  startRedis,
  startRegistry,
  tmpDir,
  type RedisHandle,
  type RegistryHandle,
} from '../helpers';
import { pushAndWait, stackConfig, startWorkers, type WorkerStack } from './stack';

/**
 * A forwarding proxy that holds every blob HEAD for `delayMs` and records how
 * many were in flight at once.
 */
async function startHeadCounter(
  target: { port: number },
  delayMs: number,
): Promise<{
  host: string;
  maxInFlight: () => number;
  heads: () => number;
  stop(): Promise<void>;
}> {
  let inFlight = 0;
  let max = 0;
  let heads = 0;
  const server: Server = createServer((req, res) => {
    const isHead = req.method === 'HEAD' && /\/blobs\/sha256:/.test(req.url ?? '');
    const forward = () => {
      const up = request(
        {
          host: '127.0.0.1',
          port: target.port,
          method: req.method,
          path: req.url,
          headers: req.headers,
        },
        (ur) => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          ur.pipe(res);
          ur.on('end', () => {
            if (isHead) inFlight--;
          });
        },
      );
      up.on('error', () => res.destroy());
      req.pipe(up);
    };
    if (!isHead) return forward();
    heads++;
    inFlight++;
    max = Math.max(max, inFlight);
    setTimeout(forward, delayMs);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    maxInFlight: () => max,
    heads: () => heads,
    stop: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

describe('pipeline: existence checks per registry are capped across the cluster', function () {
  this.timeout(180_000);
  let redis: RedisHandle;
  let registry: RegistryHandle;
  const stacks: WorkerStack[] = [];

  before(async () => {
    [redis, registry] = await Promise.all([startRedis(), startRegistry()]);
  });
  after(async () => {
    await Promise.allSettled(stacks.map((s) => s.stop()));
    await Promise.allSettled([redis?.stop(), registry?.stop()]);
  });

  it('two processes-worth of lookup workers never run more than FERRY_LOOKUP_CONCURRENCY HEADs at once', async () => {
    const proxy = await startHeadCounter({ port: registry.port }, 150);
    try {
      const root = tmpDir('lookup-limit');
      const img = join(root, 'img');
      for (let i = 0; i < 12; i++) {
        mkdirSync(join(img, 'layers', `l${String(i).padStart(2, '0')}`), { recursive: true });
        writeFileSync(
          join(img, 'layers', `l${String(i).padStart(2, '0')}`, 'f.txt'),
          `layer ${i}\n`,
        );
      }
      const env = {
        FERRY_REDIS_URL: redis.url,
        FERRY_REGISTRY_ALLOW: proxy.host,
        FERRY_SOURCE_ROOT: root,
        FERRY_LOOKUP_CONCURRENCY: '2',
      };
      const first = await startWorkers(stackConfig(env));
      stacks.push(first);
      // A second set of workers on the same queues (another "machine").
      stacks.push(await startWorkers({ ...first.config }));
      const target = `${proxy.host}/limit/app:1`;
      const one = await pushAndWait(first, { source: `dir:${img}`, target });
      assert.equal(one.status, 'succeeded', JSON.stringify(one.error));
      // Pushed again: now every layer's digest is known, so each lookup HEADs the registry.
      const before = proxy.heads();
      const two = await pushAndWait(first, { source: `dir:${img}`, target });
      assert.equal(two.status, 'succeeded');
      assert.ok(two.layers.every((l) => l.state === 'exists'));
      assert.ok(proxy.heads() - before >= 12, `HEADs: ${proxy.heads() - before}`);
      assert.equal(proxy.maxInFlight(), 2, `at most 2 at once, and the cap was reached`);
    } finally {
      await proxy.stop();
    }
  });
});
