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
import { openSource } from '@ferry/image-source';
import { writeOciImage } from '../../packages/image-source/test/support/images';
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
  /** Starts counting the most in flight anew. */
  resetMax: () => void;
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
    resetMax: () => {
      max = inFlight;
    },
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

  it('a whole-image lookup that started with one lane grows to the cap once the other holders let go', async () => {
    const proxy = await startHeadCounter({ port: registry.port }, 100);
    try {
      const root = tmpDir('lookup-grow');
      const img = join(root, 'img');
      for (let i = 0; i < 10; i++) {
        const d = join(img, 'layers', `l${String(i).padStart(2, '0')}`);
        mkdirSync(d, { recursive: true });
        writeFileSync(join(d, 'f.txt'), `grow layer ${i}\n`);
      }
      // An OCI layout: its layers state their digests, so one job looks the image up in lanes.
      const layout = join(root, 'layout');
      const src = await openSource(`dir:${img}`, { root });
      await writeOciImage(layout, src.images[0]!, { refName: 'latest' });
      const stack = await startWorkers(
        stackConfig({
          FERRY_REDIS_URL: redis.url,
          FERRY_REGISTRY_ALLOW: proxy.host,
          FERRY_SOURCE_ROOT: root,
          FERRY_LOOKUP_CONCURRENCY: '4',
        }),
      );
      stacks.push(stack);
      const target = `${proxy.host}/grow/app:1`;
      const one = await pushAndWait(stack, { source: `oci:${layout}:latest`, target });
      assert.equal(one.status, 'succeeded', JSON.stringify(one.error));
      // Other holders take three of the registry's four permits: the re-push starts with one lane.
      const sem = stack.ctx.lookupSemaphore;
      const others = await Promise.all([0, 1, 2].map(() => sem.tryAcquire(proxy.host)));
      assert.ok(others.every((p) => p !== null));
      const before = proxy.heads();
      proxy.resetMax();
      const pushing = pushAndWait(stack, { source: `oci:${layout}:latest`, target });
      // While they hold them, HEADs go one at a time; then they let go.
      for (let i = 0; i < 200 && proxy.heads() - before < 2; i++)
        await new Promise((r) => setTimeout(r, 10));
      assert.equal(proxy.maxInFlight(), 1, 'one lane while three permits are held elsewhere');
      await Promise.all(others.map((p) => p!.release()));
      const two = await pushing;
      assert.equal(two.status, 'succeeded', JSON.stringify(two.error));
      assert.ok(two.layers.every((l) => l.state === 'exists'));
      assert.ok(proxy.heads() - before >= 11, `HEADs: ${proxy.heads() - before}`);
      // Eleven checks (ten layers and the config) at 100 ms: one lane to the end would never overlap.
      assert.ok(
        proxy.maxInFlight() >= 3 && proxy.maxInFlight() <= 4,
        `the lookup grew to ${proxy.maxInFlight()} HEADs at once (cap 4)`,
      );
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(await sem.count(proxy.host), 0, 'every permit given back');
    } finally {
      await proxy.stop();
    }
  });
});
