import assert from 'node:assert/strict';
import { linkSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  skopeoInspect,
  startRedis,
  startRegistry,
  startProxy,
  tmpDir,
  type RedisHandle,
  type RegistryHandle,
  type ProxyHandle,
} from '../helpers';
import {
  stackConfig,
  startWorkers,
  submitPush,
  waitForPush,
  writeRandomFile,
  type WorkerStack,
} from './stack';

const MB = 1024 * 1024;
const BIG = 100 * MB;

describe('pipeline: ten pushes sharing one 100 MB layer', function () {
  this.timeout(300_000);
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let proxy: ProxyHandle;
  let stack: WorkerStack;
  let root: string;

  before(async () => {
    [redis, registry] = await Promise.all([startRedis(), startRegistry()]);
    proxy = await startProxy({ host: '127.0.0.1', port: registry.port });
    root = tmpDir('shared');
    // One 100 MB incompressible file, hard-linked into ten images: same content, ten sources.
    mkdirSync(join(root, 'data'));
    const big = join(root, 'data', 'blob.bin');
    writeRandomFile(big, BIG / MB);
    for (let i = 0; i < 10; i++) {
      const img = join(root, `img${i}`);
      mkdirSync(join(img, 'layers', '01-shared', 'data'), { recursive: true });
      mkdirSync(join(img, 'layers', '02-own'), { recursive: true });
      linkSync(big, join(img, 'layers', '01-shared', 'data', 'blob.bin'));
      writeFileSync(join(img, 'layers', '02-own', `image-${i}.txt`), `image ${i}\n`);
    }
    // The registry is reached only through the byte-counting proxy.
    stack = await startWorkers(
      stackConfig({
        FERRY_REDIS_URL: redis.url,
        FERRY_REGISTRY_ALLOW: proxy.host,
        FERRY_SOURCE_ROOT: root,
        FERRY_GZIP_LEVEL: '1',
        FERRY_UPLOAD_CHUNK_SIZE: '0',
      }),
      { uploadWorkers: 3 },
    );
  });
  after(async () => {
    await stack?.stop();
    await Promise.allSettled([proxy?.stop(), redis?.stop(), registry?.stop()]);
  });

  it('reaches the registry once: the others wait for the lease, then mount or find it', async () => {
    proxy.resetCounters();
    const ids = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        submitPush(stack, {
          source: `dir:${join(root, `img${i}`)}`,
          target: `${proxy.host}/team${i}/app:1`,
        }),
      ),
    );
    const states = await Promise.all(ids.map((id) => waitForPush(stack.ctx, id, 240_000)));
    for (const s of states) assert.equal(s.status, 'succeeded', JSON.stringify(s.error));
    const shared = states.map((s) => s.layers.find((l) => l.index === 0)!);
    const digests = new Set(shared.map((l) => l.digest));
    assert.equal(digests.size, 1, 'one shared layer digest');
    const uploaded = shared.filter((l) => l.state === 'uploaded');
    assert.equal(uploaded.length, 1, `states: ${shared.map((l) => l.state).join(',')}`);
    assert.ok(shared.every((l) => ['uploaded', 'mounted', 'exists'].includes(l.state)));
    // Counted on the wire: the shared layer's bytes went up once (plus small layers, manifests, headers).
    const size = shared[0].size!;
    assert.ok(size > BIG, `compressed size ${size}`);
    assert.ok(proxy.bytesUp >= size, `bytesUp ${proxy.bytesUp} < layer ${size}`);
    assert.ok(
      proxy.bytesUp < size + 5 * MB,
      `bytesUp ${proxy.bytesUp}: the layer went up more than once`,
    );
    for (let i = 0; i < 10; i++) {
      const info = await skopeoInspect(`docker://${proxy.host}/team${i}/app:1`);
      assert.equal(info.Layers[0], shared[0].digest);
    }
  });
});
