import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { imageLookupJobId, lookupJobId } from '@ferry/queue';
import { startRedis, type RedisHandle } from '../../../test/helpers/redis';
import { AUTH, makeApi, makeSourceRoot, writeOciLayout, type TestApi } from './helpers';

describe('api: layouts from real sources (@ferry/image-source, metadata only)', function () {
  let redis: RedisHandle;
  let src: { root: string; app: string };
  let api: TestApi;

  before(async () => {
    redis = await startRedis();
    src = makeSourceRoot();
    writeOciLayout(join(src.root, 'oci-multi'), 1, 2, '1.0');
    mkdirSync(join(src.root, 'oci-broken', 'blobs', 'sha256'), { recursive: true });
    writeFileSync(join(src.root, 'oci-broken', 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    writeFileSync(
      join(src.root, 'oci-broken', 'index.json'),
      '{"schemaVersion": 2, "manifests": [ {"digest": "nope"} ]}',
    );
    api = await makeApi(redis.url, src.root);
  });
  after(async () => {
    await api?.close();
    await redis?.stop();
  });

  async function post(body: unknown) {
    return api.app.inject({
      method: 'POST',
      url: '/v1/pushes',
      headers: { 'content-type': 'application/json', ...AUTH },
      payload: JSON.stringify(body),
    });
  }

  it('an OCI index gets one lookup job per platform, covering its layers (digests stated)', async () => {
    const res = await post({
      source: `oci:${src.root}/oci-multi:1.0`,
      target: '127.0.0.1:59999/team/multi:1.0',
    });
    assert.equal(res.statusCode, 202, res.body);
    const { id } = res.json();
    const state = await api.store.get(id);
    assert.deepEqual(
      state?.layers.map((l) => `${l.imageIndex}/${l.index}`),
      ['0/0', '1/0', '1/1'],
    );
    const jobs = await Promise.all(
      [0, 1].map((i) => api.queues.lookup.getJob(imageLookupJobId(id, i))),
    );
    assert.deepEqual(
      jobs.map((j) => [j?.data.imageIndex, j?.data.layerIndex, j?.data.layers ?? 1]),
      [
        [0, 0, 1],
        [1, 0, 2],
      ],
    );
    // No job of its own for any layer.
    for (const [i, l] of [
      [0, 0],
      [1, 0],
      [1, 1],
    ]) {
      assert.equal(await api.queues.lookup.getJob(lookupJobId(id, i, l)), undefined);
    }
  });

  it('platform picks one image; an unknown platform is 422 FERRY_PLATFORM_NOT_FOUND', async () => {
    const res = await post({
      source: `oci:${src.root}/oci-multi:1.0`,
      target: '127.0.0.1:59999/team/multi:arm',
      platform: 'linux/arm64',
    });
    assert.equal(res.statusCode, 202, res.body);
    const state = await api.store.get(res.json().id);
    assert.equal(state?.layers.length, 2);
    assert.equal(state?.request.platform, 'linux/arm64');

    const before = (await api.queues.lookup.getJobCounts('waiting')).waiting;
    const bad = await post({
      source: `oci:${src.root}/oci-multi:1.0`,
      target: '127.0.0.1:59999/team/multi:s',
      platform: 'linux/s390x',
    });
    assert.equal(bad.statusCode, 422, bad.body);
    assert.equal(bad.json().error.code, 'FERRY_PLATFORM_NOT_FOUND');
    assert.equal((await api.queues.lookup.getJobCounts('waiting')).waiting, before);
  });

  it('a malformed layout is a problem of the content: the push is recorded as failed and nothing is enqueued', async () => {
    const before = (await api.queues.lookup.getJobCounts('waiting')).waiting;
    const res = await post({
      source: `oci:${src.root}/oci-broken`,
      target: '127.0.0.1:59999/team/broken:1',
    });
    assert.equal(res.statusCode, 202, res.body);
    assert.equal(res.json().status, 'failed');
    const state = await api.store.get(res.json().id);
    assert.equal(state?.status, 'failed');
    assert.match(String(state?.error?.code), /^FERRY_/);
    assert.equal((await api.queues.lookup.getJobCounts('waiting')).waiting, before);
  });

  it('a dir: source is sent to the workers as its real path', async () => {
    const res = await post({
      source: `dir:${src.root}/images/../images/app`,
      target: '127.0.0.1:59999/team/app',
    });
    assert.equal(res.statusCode, 202, res.body);
    const state = await api.store.get(res.json().id);
    assert.equal(state?.source, `dir:${src.app}`);
    assert.equal(state?.target, '127.0.0.1:59999/team/app:latest');
  });
});
