/**
 * Scenario 2: the registry unreachable mid-push (the proxy in front of it
 * resets every connection for CI 40 s / full 60 s), then back. With the
 * default FERRY_RETRY_BUDGET the push finishes, and its event stream shows
 * `waiting` events while the registry was away.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  readSse,
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
  sleep,
  startFerryProcs,
  waitFinal,
  writeImage,
  type FerryProcs,
} from './harness';

const S = '2 registry outage';
const TOKEN = 'faults-' + randomBytes(8).toString('hex');

describe(`faults ${S}: the registry unreachable mid-push, then back`, function () {
  this.timeout(FULL ? 900_000 : 300_000);
  const outageMs = FULL ? 60_000 : 40_000;
  let redis: DurableRedisHandle;
  let registry: RegistryHandle;
  let proxy: ProxyHandle;
  let ferry: FerryProcs | undefined;
  let root: string;

  before(async () => {
    [redis, registry] = await Promise.all([startDurableRedis(), startRegistry()]);
    proxy = await startProxy({ host: '127.0.0.1', port: registry.port });
    root = tmpDir('faults-outage');
  });
  after(async () => {
    await ferry?.stop();
    await proxy?.stop();
    await Promise.allSettled([redis?.stop(), registry?.stop()]);
    if (root) removeTmpDir(root);
  });

  it(`a ${outageMs / 1000} s outage mid-upload: the push succeeds with the default budget and shows waiting events`, async () => {
    const img = writeImage(root, 'outage', [24 * MiB, 2 * MiB]);
    ferry = await startFerryProcs(
      {
        FERRY_REDIS_URL: redis.url,
        FERRY_SOURCE_ROOT: root,
        FERRY_REGISTRY_ALLOW: proxy.host,
        FERRY_API_TOKENS: TOKEN,
        FERRY_GZIP_LEVEL: '1',
        FERRY_UPLOAD_CHUNK_SIZE: String(MiB),
        // FERRY_RETRY_BUDGET not set: the default (900 s) must ride this out.
      },
      ['api', 'coordinator', 'lookup', 'upload'],
    );
    const f = ferry;
    // Hold the 4th PATCH so the outage starts mid-upload, with bytes already accepted.
    const held = proxy.holdNext('PATCH', { skip: 3 });
    const r = await apiCall(f.url, TOKEN, 'POST', '/v1/pushes', {
      source: `dir:${img}`,
      target: `${proxy.host}/outage/app:1`,
    });
    assert.equal(r.status, 202, r.text);
    const id = r.body.id as string;
    figure(S, 'pushes started', 1);
    const heldInTime = await Promise.race([
      held.then(() => true),
      sleep(120_000).then(() => false),
    ]);
    if (!heldInTime) {
      const st = await apiCall(f.url, TOKEN, 'GET', `/v1/pushes/${id}`);
      throw new Error(
        `no 4th PATCH within 120 s (${proxy.requests('PATCH')} PATCHes): ${st.text}\n${f.logs().slice(-3000)}`,
      );
    }
    const t0 = Date.now();
    proxy.refuse(true); // cuts the held request and every connection from now on
    proxy.dropHeld();
    await sleep(outageMs);
    proxy.refuse(false);
    figure(
      S,
      'outage',
      `${((Date.now() - t0) / 1000).toFixed(1)} s (proxy resets every connection)`,
    );
    figure(S, 'faults injected (connections refused)', proxy.injected.refused);

    const state = await waitFinal(f.url, TOKEN, id, FULL ? 900_000 : 240_000);
    figure(S, 'pushes finished', `${state.status === 'succeeded' ? 1 : 0}/1 succeeded`);
    figure(S, 'push took', `${((Date.now() - t0) / 1000).toFixed(1)} s after the outage began`);
    figure(
      S,
      'bytes sent (Ferry) / on the wire (proxy, up)',
      `${bytesSentOf(state)} / ${proxy.bytesUp}`,
    );
    const events = await readSse(`${f.url}/v1/pushes/${id}/events`, {
      authorization: `Bearer ${TOKEN}`,
    });
    const waiting = events.events.filter((e) => {
      try {
        return JSON.parse(e.data).type === 'waiting';
      } catch {
        return false;
      }
    });
    figure(S, 'bytes re-sent (bytesSent − uploaded layer sizes)', resentOf(state));
    figure(S, 'waiting events', waiting.length);
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    assert.ok(
      waiting.length > 0,
      `no waiting event in ${events.events
        .map((e) => e.data)
        .join('\n')
        .slice(0, 2000)}`,
    );
    const w = JSON.parse(waiting[0].data);
    assert.ok(
      w.registry !== undefined && w.attempt !== undefined,
      `a waiting event names registry and attempt: ${waiting[0].data}`,
    );
  });
});
