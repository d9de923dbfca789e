/**
 * Scenario 3: Redis (AOF, appendfsync always) SIGKILLed mid-run and
 * restarted on the same port and directory. Nothing is lost: every push
 * succeeds; the API's /readyz answers 503 while Redis is down; every role
 * reconnects on its own (no role process is restarted).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  skopeoInspect,
  startRegistry,
  tmpDir,
  removeTmpDir,
  type RegistryHandle,
} from '../helpers';
import { startDurableRedis, type DurableRedisHandle } from '../helpers/durable-redis';
import {
  FULL,
  MiB,
  apiCall,
  figure,
  rngFor,
  sleep,
  startFerryProcs,
  waitFinal,
  writeImage,
  type FerryProcs,
} from './harness';

const S = '3 redis killed';
const TOKEN = 'faults-' + randomBytes(8).toString('hex');

async function status(url: string): Promise<number> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(3_000) });
    await r.arrayBuffer();
    return r.status;
  } catch {
    return 0;
  }
}

describe(`faults ${S}: Redis SIGKILLed and restarted mid-run`, function () {
  this.timeout(FULL ? 900_000 : 300_000);
  const rng = rngFor(S);
  const pushes = FULL ? 20 : 6;
  let redis: DurableRedisHandle;
  let registry: RegistryHandle;
  let ferry: FerryProcs | undefined;
  let root: string;

  before(async () => {
    [redis, registry] = await Promise.all([startDurableRedis(), startRegistry()]);
    root = tmpDir('faults-redis');
  });
  after(async () => {
    await ferry?.stop();
    await Promise.allSettled([redis?.stop(), registry?.stop()]);
    if (root) removeTmpDir(root);
  });

  it(`${pushes} pushes all succeed; /readyz 503 while Redis is down; roles reconnect on their own`, async () => {
    ferry = await startFerryProcs(
      {
        FERRY_REDIS_URL: redis.url,
        FERRY_SOURCE_ROOT: root,
        FERRY_REGISTRY_ALLOW: registry.host,
        FERRY_API_TOKENS: TOKEN,
        FERRY_GZIP_LEVEL: '1',
        FERRY_UPLOAD_CHUNK_SIZE: String(4 * MiB),
      },
      ['api', 'coordinator', 'lookup', 'upload'],
    );
    const f = ferry;
    const targets: string[] = [];
    const ids: string[] = [];
    for (let i = 0; i < pushes; i++) {
      const img = writeImage(root, `r${i}`, [Math.round((8 + rng() * 24) * MiB), MiB]);
      targets.push(`${registry.host}/redis/app${i}:1`);
      const r = await apiCall(f.url, TOKEN, 'POST', '/v1/pushes', {
        source: `dir:${img}`,
        target: targets[i],
      });
      assert.equal(r.status, 202, r.text);
      ids.push(r.body.id);
    }
    figure(S, 'pushes started', pushes);
    const pidsBefore = f.procs.map((p) => p.service.pid).sort();

    // Kill once some upload is under way (bounded wait), at a seeded moment.
    const deadline = Date.now() + 60_000;
    for (;;) {
      const s = await apiCall(f.url, TOKEN, 'GET', `/v1/pushes/${ids[0]}`);
      if (s.body?.status !== 'queued') break;
      if (Date.now() > deadline) throw new Error('no push started within 60 s');
      await sleep(100);
    }
    await sleep(rng() * 1_000);
    const downMs = FULL ? 15_000 : 6_000;
    await redis.kill();
    const t0 = Date.now();
    const ready: number[] = [];
    while (Date.now() - t0 < downMs) {
      ready.push(await status(`${f.url}/readyz`));
      await sleep(500);
    }
    await redis.restart();
    figure(
      S,
      'faults injected',
      `1 SIGKILL of redis-server, down ${((Date.now() - t0) / 1000).toFixed(1)} s`,
    );
    figure(S, '/readyz answers while Redis was down', [...new Set(ready)].join(','));

    const finals = [];
    for (const id of ids) finals.push(await waitFinal(f.url, TOKEN, id, FULL ? 600_000 : 180_000));
    const ok = finals.filter((s) => s.status === 'succeeded').length;
    figure(S, 'pushes finished', `${ok}/${pushes} succeeded`);

    // Every role answers /readyz again without being restarted.
    const readyAfter = await Promise.all(
      f.procs.map((p) =>
        status(`http://127.0.0.1:${p.healthPort ?? f.url.split(':').at(-1)}/readyz`),
      ),
    );
    figure(
      S,
      'roles ready afterwards (same pids)',
      `${readyAfter.filter((s) => s === 200).length}/${f.procs.length}`,
    );

    assert.ok(
      ready.length > 0 && ready.every((s) => s === 503),
      `/readyz while Redis was down: ${ready.join(',')}`,
    );
    for (const s of finals)
      assert.equal(s.status, 'succeeded', `push ${s.id}: ${JSON.stringify(s.error)}`);
    assert.deepEqual(f.procs.map((p) => p.service.pid).sort(), pidsBefore, 'a role process exited');
    assert.deepEqual(
      readyAfter,
      f.procs.map(() => 200),
    );
    for (let i = 0; i < pushes; i++) {
      const info = await skopeoInspect(`docker://${targets[i]}`);
      assert.equal(info.Digest, finals[i].manifest?.digest);
    }
  });
});
