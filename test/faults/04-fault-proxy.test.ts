/**
 * Scenario 4: a fault proxy with seeded random resets, 500s and 429s in front
 * of the registry. Every push finishes. Against a node:http fake registry that
 * keeps a cut PATCH's bytes and reports its offset, no more than one chunk is
 * re-sent per reset, and the bytes on the wire counted by the proxy and by
 * Ferry (push state layers' bytesSent) agree within a stated tolerance.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  startFakeRegistry,
  type FakeRegistry,
} from '../../packages/registry-client/test/fake-registry';
import {
  skopeoInspect,
  startProxy,
  startRegistry,
  tmpDir,
  removeTmpDir,
  type ProxyHandle,
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
  startFerryProcs,
  waitFinal,
  writeImage,
  type FerryProcs,
} from './harness';

const S = '4 fault proxy';
const TOKEN = 'faults-' + randomBytes(8).toString('hex');
/** Per request: HTTP headers both ways are well under this many bytes. */
const HEADER_ALLOWANCE = 1024;

describe(`faults ${S}: seeded resets, 500s and 429s in front of the registry`, function () {
  this.timeout(FULL ? 1_800_000 : 300_000);
  let redis: DurableRedisHandle;
  let registry: RegistryHandle;
  let fake: FakeRegistry;
  let proxy: ProxyHandle;
  let fakeProxy: ProxyHandle;
  let ferry: FerryProcs | undefined;
  let root: string;

  before(async () => {
    [redis, registry, fake] = await Promise.all([
      startDurableRedis(),
      startRegistry(),
      startFakeRegistry(),
    ]);
    [proxy, fakeProxy] = await Promise.all([
      startProxy({ host: '127.0.0.1', port: registry.port }),
      startProxy({ host: '127.0.0.1', port: fake.port }),
    ]);
    root = tmpDir('faults-proxy');
    ferry = await startFerryProcs(
      {
        FERRY_REDIS_URL: redis.url,
        FERRY_SOURCE_ROOT: root,
        FERRY_REGISTRY_ALLOW: `${proxy.host},${fakeProxy.host}`,
        FERRY_API_TOKENS: TOKEN,
        FERRY_GZIP_LEVEL: '1',
        FERRY_UPLOAD_CHUNK_SIZE: String(MiB),
      },
      ['api', 'coordinator', 'lookup', 'upload', 'upload'],
    );
  });
  after(async () => {
    await ferry?.stop();
    await Promise.allSettled([proxy?.stop(), fakeProxy?.stop()]);
    await Promise.allSettled([redis?.stop(), registry?.stop(), fake?.stop()]);
    if (root) removeTmpDir(root);
  });

  it('docker-registry behind random resets, 500s and 429s: 100 % of pushes done', async () => {
    const f = ferry as FerryProcs;
    const rng = rngFor(`${S}/real`);
    const pushes = FULL ? 30 : 6;
    const targets: string[] = [];
    const ids: string[] = [];
    for (let i = 0; i < pushes; i++) {
      writeImage(root, `p${i}`, [
        Math.round((2 + rng() * 10) * MiB),
        Math.round((0.5 + rng()) * MiB),
      ]);
      targets.push(`${proxy.host}/chaos/app${i}:1`);
    }
    proxy.resetCounters();
    proxy.chaos({ rng, reset: 0.04, error500: 0.04, error429: 0.04 });
    for (let i = 0; i < pushes; i++) {
      const r = await apiCall(f.url, TOKEN, 'POST', '/v1/pushes', {
        source: `dir:${root}/p${i}`,
        target: targets[i],
      });
      assert.equal(r.status, 202, r.text);
      ids.push(r.body.id);
    }
    figure(S, 'real registry: pushes started', pushes);
    const finals = [];
    try {
      for (const id of ids)
        finals.push(await waitFinal(f.url, TOKEN, id, FULL ? 1_200_000 : 200_000));
    } finally {
      proxy.chaos(undefined);
    }
    const inj = proxy.injected;
    figure(
      S,
      'real registry: faults injected',
      `${inj.reset} resets, ${inj.error500} × 500, ${inj.error429} × 429`,
    );
    const ok = finals.filter((s) => s.status === 'succeeded').length;
    figure(S, 'real registry: pushes finished', `${ok}/${pushes} succeeded`);
    const ferryBytes = finals.reduce((n, s) => n + bytesSentOf(s), 0);
    figure(
      S,
      'real registry: bytes on the wire, proxy (up, all requests) / Ferry (layers bytesSent)',
      `${proxy.bytesUp} / ${ferryBytes} (informational: 500/429 answered by the proxy are not forwarded)`,
    );
    figure(
      S,
      'real registry: bytes re-sent (bytesSent − uploaded layer sizes)',
      finals.reduce((n, s) => n + resentOf(s), 0),
    );
    for (const s of finals)
      assert.equal(s.status, 'succeeded', `push ${s.id}: ${JSON.stringify(s.error)}`);
    assert.ok(inj.reset + inj.error500 + inj.error429 > 0, 'no fault was injected');
    for (let i = 0; i < pushes; i++) {
      const info = await skopeoInspect(`docker://${registry.host}/chaos/app${i}:1`);
      assert.equal(info.Digest, finals[i].manifest?.digest);
    }
  });

  it('fake registry reporting offsets: at most one chunk re-sent per reset; proxy and Ferry byte counts agree', async () => {
    const f = ferry as FerryProcs;
    const rng = rngFor(`${S}/fake`);
    const layerMb = FULL ? 64 : 16;
    const img = writeImage(root, 'fake', [layerMb * MiB]);
    fakeProxy.resetCounters();
    // Resets only, on PATCHes, somewhere inside the 1 MiB chunk's body.
    fakeProxy.chaos({ rng, reset: 0.25, resetWithin: MiB, methods: ['PATCH'] });
    const r = await apiCall(f.url, TOKEN, 'POST', '/v1/pushes', {
      source: `dir:${img}`,
      target: `${fakeProxy.host}/fake/app:1`,
    });
    assert.equal(r.status, 202, r.text);
    let state;
    try {
      state = await waitFinal(f.url, TOKEN, r.body.id, FULL ? 600_000 : 180_000);
    } finally {
      fakeProxy.chaos(undefined);
    }
    const resets = fakeProxy.injected.reset;
    figure(
      S,
      'fake registry: pushes',
      `1 started, ${state.status === 'succeeded' ? 1 : 0}/1 succeeded`,
    );
    figure(S, 'fake registry: faults injected', `${resets} resets mid-PATCH`);
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    const blobBytes = [...fake.blobs.values()].reduce((n, b) => n + b.length, 0);
    const requests = fake.requests.length;
    const manifestBytes = [...fake.manifests.values()].reduce((n, b) => n + b.length, 0);
    // Everything up the wire that is not the layer: the config blob, the manifest, request headers.
    const overhead =
      requests * HEADER_ALLOWANCE + blobBytes - Number(state.layers[0].size) + manifestBytes;
    const resent = Math.max(0, fakeProxy.bytesUp - Number(state.layers[0].size) - overhead);
    const wireLayerBytes = fakeProxy.bytesUp - overhead;
    const ferryBytes = bytesSentOf(state);
    figure(S, 'fake registry: layer size', String(state.layers[0].size));
    figure(
      S,
      'fake registry: bytes re-sent (proxy up − layer − config/manifest − headers)',
      `≤ ${resent} (${(resent / MiB).toFixed(2)} MiB for ${resets} resets; bound 1 chunk = 1 MiB each)`,
    );
    figure(
      S,
      'fake registry: layer bytes on the wire, proxy / Ferry bytesSent',
      `${wireLayerBytes} / ${ferryBytes} (tolerance: 1 KiB of headers per request + one 1 MiB chunk per reset, for bytes in flight when it hit, + 1 %)`,
    );
    assert.ok(resets > 0, 'no reset was injected');
    assert.ok(
      resent <= resets * MiB,
      `re-sent ${resent} bytes for ${resets} resets: more than one 1 MiB chunk per reset`,
    );
    // Ferry counts what it wrote; the proxy what it read. They differ by headers and by what was
    // in flight (socket buffers) when a connection was reset — at most the chunk being sent.
    const tolerance = requests * HEADER_ALLOWANCE + resets * MiB + 0.01 * wireLayerBytes;
    assert.ok(
      Math.abs(wireLayerBytes - ferryBytes) <= tolerance,
      `bytes on the wire by the proxy (${wireLayerBytes}) and by Ferry (${ferryBytes}) differ by more than ${Math.round(tolerance)}`,
    );
  });
});
