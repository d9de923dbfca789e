/**
 * Scenario 1: upload and lookup workers (separate processes) SIGKILLed at
 * random every few seconds and restarted while N pushes run. Every push
 * succeeds, skopeo copies each image back (checking every blob against its
 * digest), and no upload session Ferry stored in Redis is left open.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import {
  skopeo,
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
  bytesSentOf,
  resentOf,
  figure,
  rngFor,
  sleep,
  startFerryProcs,
  waitFinal,
  writeImage,
  type FerryProcs,
  type RoleProcess,
} from './harness';

const S = '1 worker kills';
const TOKEN = 'faults-' + randomBytes(8).toString('hex');

/** Upload sessions directories the registry still holds (started, never finished or cancelled). */
function registryUploadDirs(reg: RegistryHandle): number {
  const repos = join(reg.storageDir, 'docker', 'registry', 'v2', 'repositories');
  let n = 0;
  const walk = (dir: string) => {
    if (!existsSync(dir)) return;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (!e.isDirectory()) continue;
      if (e.name === '_uploads') n += readdirSync(join(dir, e.name)).length;
      else if (!e.name.startsWith('_')) walk(join(dir, e.name));
    }
  };
  walk(repos);
  return n;
}

describe(`faults ${S}: upload and lookup workers SIGKILLed at random while pushes run`, function () {
  this.timeout(FULL ? 3_600_000 : 420_000);
  const rng = rngFor(S);
  const pushes = FULL ? 50 : 8;
  const bigEvery = FULL ? 5 : 2; // every n-th push carries a big layer
  const bigBytes = () => Math.round((FULL ? 200 + rng() * 200 : 50 + rng() * 50) * MiB);
  const smallBytes = () => Math.round((1 + rng() * 4) * MiB);
  let redis: DurableRedisHandle;
  let registry: RegistryHandle;
  let ferry: FerryProcs | undefined;
  let root: string;

  before(async () => {
    [redis, registry] = await Promise.all([startDurableRedis(), startRegistry()]);
    root = tmpDir('faults-kills');
  });
  after(async () => {
    await ferry?.stop();
    await Promise.allSettled([redis?.stop(), registry?.stop()]);
    if (root) removeTmpDir(root);
  });

  it(`${pushes}/${pushes} pushes succeed, digests verified by skopeo, no upload session left open`, async () => {
    const images: { src: string; target: string; bytes: number }[] = [];
    for (let i = 0; i < pushes; i++) {
      const layers = [smallBytes(), ...(i % bigEvery === 0 ? [bigBytes()] : [smallBytes()])];
      const src = writeImage(root, `img${i}`, layers);
      images.push({
        src,
        target: `${registry.host}/kills/app${i}:1`,
        bytes: layers.reduce((a, b) => a + b, 0),
      });
    }
    figure(
      S,
      'pushes',
      `${pushes} (${images.filter((_, i) => i % bigEvery === 0).length} with a layer of ${FULL ? '200–400' : '50–100'} MiB)`,
    );
    figure(
      S,
      'layer bytes to push',
      `${(images.reduce((a, b) => a + b.bytes, 0) / MiB).toFixed(0)} MiB`,
    );

    ferry = await startFerryProcs(
      {
        FERRY_REDIS_URL: redis.url,
        FERRY_SOURCE_ROOT: root,
        FERRY_REGISTRY_ALLOW: registry.host,
        FERRY_API_TOKENS: TOKEN,
        FERRY_UPLOAD_CHUNK_SIZE: String(8 * MiB),
        // One upload at a time per worker process (two processes): the pushes last long enough
        // for the killer to strike repeatedly, and a kill always interrupts an upload.
        FERRY_UPLOAD_CONCURRENCY: '1',
        FERRY_JOB_LOCK_TIMEOUT: '3',
      },
      ['api', 'coordinator', 'lookup', 'upload', 'upload'],
    );
    const f = ferry;
    const ids: string[] = [];
    for (const img of images) {
      const r = await apiCall(f.url, TOKEN, 'POST', '/v1/pushes', {
        source: `dir:${img.src}`,
        target: img.target,
      });
      assert.equal(r.status, 202, r.text);
      ids.push(r.body.id);
    }
    figure(S, 'pushes started', ids.length);

    // The killer: every 0.75–2.25 s in CI, 1–5 s full (seeded), one random live upload or
    // lookup process is SIGKILLed; its replacement boots in the background (a restart takes a
    // few seconds, so kills do not wait for it). Bounded by a kill cap and by the pushes' end.
    let done = false;
    let kills = 0;
    const maxKills = FULL ? 80 : 12;
    const replacements: Promise<RoleProcess>[] = [];
    const killer = (async () => {
      while (!done && kills < maxKills) {
        await sleep(FULL ? 1_000 + rng() * 4_000 : 750 + rng() * 1_500);
        if (done) break;
        const victims = f.procs.filter((p) => p.role === 'upload' || p.role === 'lookup');
        if (victims.length === 0) continue;
        const v: RoleProcess = victims[Math.floor(rng() * victims.length)];
        kills++;
        await f.kill(v);
        replacements.push(f.add(v.role));
      }
    })();

    const finals = [];
    try {
      for (const id of ids)
        finals.push(await waitFinal(f.url, TOKEN, id, FULL ? 3_000_000 : 300_000));
    } finally {
      done = true;
      await killer;
      await Promise.allSettled(replacements);
    }
    const ok = finals.filter((s) => s.status === 'succeeded').length;
    figure(S, 'faults injected (SIGKILLs)', kills);
    assert.ok(kills > 0, 'the pushes ended before a single kill: nothing was tested');
    figure(S, 'pushes finished', `${ok}/${pushes} succeeded`);
    const sent = finals.reduce((n, s) => n + bytesSentOf(s), 0);
    figure(S, 'bytes sent (Ferry, layers bytesSent)', sent);
    figure(
      S,
      'bytes re-sent (bytesSent − uploaded layer sizes)',
      finals.reduce((n, s) => n + resentOf(s), 0),
    );
    for (const s of finals)
      assert.equal(s.status, 'succeeded', `push ${s.id}: ${JSON.stringify(s.error)}`);

    // skopeo reads every image back: copy to an OCI layout (skopeo checks each blob's digest).
    const out = tmpDir('faults-kills-copy');
    try {
      for (let i = 0; i < pushes; i++) {
        const info = await skopeoInspect(`docker://${images[i].target}`);
        assert.equal(info.Digest, finals[i].manifest?.digest);
        assert.deepEqual(
          info.Layers,
          finals[i].layers.map((l) => l.digest),
        );
        await skopeo(
          [
            'copy',
            '--src-tls-verify=false',
            `docker://${images[i].target}`,
            `oci:${join(out, 'o')}:img${i}`,
          ],
          { timeoutMs: 300_000 },
        );
      }
    } finally {
      removeTmpDir(out);
    }
    figure(S, 'verified by skopeo copy', `${pushes}/${pushes}`);

    // No stored upload session still open at the registry.
    const r = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
    await r.connect();
    let stored = 0;
    const open: string[] = [];
    try {
      const keys = await r.keys(`${f.env.FERRY_QUEUE_PREFIX}:upload-session:*`);
      for (const k of keys) {
        const loc = await r.get(k);
        if (!loc) continue;
        stored++;
        const url = new URL(loc, registry.url);
        const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
        await res.arrayBuffer();
        if (res.status === 204) open.push(loc);
      }
    } finally {
      r.disconnect();
    }
    figure(
      S,
      'upload sessions stored in Redis afterwards',
      `${stored} (${open.length} still open)`,
    );
    figure(S, 'upload dirs left in registry storage (informational)', registryUploadDirs(registry));
    assert.deepEqual(open, [], 'upload sessions left open at the registry');
  });
});
