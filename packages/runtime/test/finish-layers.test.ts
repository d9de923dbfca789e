import assert from 'node:assert/strict';
import {
  JOB_VERSION,
  type LookupJob,
  type PushError,
  type PushRequest,
  type PushResult,
  type PushState,
  type PushStore,
} from '@ferry/queue';
import { currentLayerJob, finishPush, PermanentError, PushRequests } from '../src';

type Outcome = PushResult | { error: PushError };

/** A store whose finish() rejects `failures` times, then resolves; every call is counted. */
function flakyStore(failures: number) {
  const calls: { pushId: string; outcome: Outcome }[] = [];
  return {
    calls,
    store: {
      async finish(pushId: string, outcome: Outcome) {
        calls.push({ pushId, outcome });
        if (calls.length <= failures) throw new Error('Connection is closed.');
        return { changed: true };
      },
    } as unknown as PushStore,
  };
}

describe('runtime: finishPush records the end of a push until Redis takes it', () => {
  const outcome: Outcome = {
    manifest: { digest: 'sha256:' + 'a'.repeat(64), mediaType: 'x', size: 1 },
  };

  it('retries a failing finish() until it is recorded', async () => {
    const { calls, store } = flakyStore(4);
    const ok = await finishPush({ store }, 'p1', outcome, undefined, {
      delayMs: 1,
      maxDelayMs: 4,
      giveUpMs: 60_000,
    });
    assert.equal(ok, true);
    assert.equal(calls.length, 5, 'four failures, then the fifth call is recorded');
    assert.ok(calls.every((c) => c.pushId === 'p1' && c.outcome === outcome));
  });

  it('records at once when the store answers (one call)', async () => {
    const { calls, store } = flakyStore(0);
    assert.equal(await finishPush({ store }, 'p2', { error: { code: 'X', message: 'y' } }), true);
    assert.equal(calls.length, 1);
  });

  it('gives up after giveUpMs and returns false', async () => {
    const { calls, store } = flakyStore(Infinity);
    const ok = await finishPush({ store }, 'p3', outcome, undefined, {
      delayMs: 2,
      maxDelayMs: 5,
      giveUpMs: 40,
    });
    assert.equal(ok, false);
    assert.ok(calls.length >= 2, `tried more than once before giving up (${calls.length})`);
  });

  it('with giveUpMs 0 a failing store is tried once', async () => {
    const { calls, store } = flakyStore(Infinity);
    assert.equal(await finishPush({ store }, 'p4', outcome, undefined, { giveUpMs: 0 }), false);
    assert.equal(calls.length, 1);
  });
});

describe('runtime: currentLayerJob reads every payload version it knows', () => {
  const pin = { key: 'k'.repeat(64), snapshot: { kind: 'dir', layers: ['01'] } };
  const request: PushRequest = {
    source: 'dir:/srv/app',
    target: '127.0.0.1:5000/team/app:1',
    tags: [],
    format: 'oci',
    platform: 'linux/arm64',
    dirOptions: { owners: 'keep', mtime: 1700000000 },
    pin,
  };

  /** PushRequests over a store that serves one push's state and counts its reads. */
  function requestsOf(req: PushRequest | undefined) {
    let reads = 0;
    const store = {
      async get(id: string): Promise<PushState | undefined> {
        reads++;
        return req && id === 'p1' ? ({ id, request: req } as unknown as PushState) : undefined;
      },
    } as unknown as PushStore;
    return { requests: new PushRequests(store), reads: () => reads };
  }

  const v1 = {
    pushId: 'p1',
    imageIndex: 0,
    layerIndex: 2,
    source: 'dir:/srv/app',
    target: '127.0.0.1:5000/team/app:1',
    gzipLevel: 6,
  };

  it(`passes a version-${JOB_VERSION} payload as it is, without reading the push state`, async () => {
    const job: LookupJob = {
      ...v1,
      v: JOB_VERSION,
      platform: 'linux/amd64',
      dirOptions: { owners: 'root', mtime: 'epoch' },
      pin: { key: 'j'.repeat(64), snapshot: {} },
    };
    const { requests, reads } = requestsOf(request);
    const got = await currentLayerJob<LookupJob>(job, requests);
    assert.equal(got, job, 'the same object');
    assert.equal(reads(), 0);
  });

  it('fills a version-1 payload (no v) with platform, dirOptions and pin from the push request', async () => {
    const { requests, reads } = requestsOf(request);
    const got = await currentLayerJob<LookupJob>(v1, requests);
    assert.deepEqual(got, {
      ...v1,
      v: JOB_VERSION,
      platform: 'linux/arm64',
      dirOptions: { owners: 'keep', mtime: 1700000000 },
      pin,
    });
    assert.equal(reads(), 1);
  });

  it('a version-1 payload whose request has none of them gains only v', async () => {
    const plain: PushRequest = { source: v1.source, target: v1.target, tags: [], format: 'oci' };
    const { requests } = requestsOf(plain);
    assert.deepEqual(await currentLayerJob<LookupJob>(v1, requests), { ...v1, v: JOB_VERSION });
  });

  for (const old of [2, 3]) {
    it(`reads a version-${old} payload (one layer${old === 2 ? ', one target' : ''}) as version ${JOB_VERSION}, without reading the push state`, async () => {
      const { requests, reads } = requestsOf(request);
      const job = { ...v1, v: old } as unknown as LookupJob;
      const got = await currentLayerJob<LookupJob>(job, requests);
      assert.deepEqual(got, { ...v1, v: JOB_VERSION });
      assert.equal(got.layers, undefined, 'one layer');
      assert.equal(reads(), 0);
    });
  }

  it('refuses a version it does not know with FERRY_JOB_VERSION (permanent), never misreads it', async () => {
    const { requests, reads } = requestsOf(request);
    for (const v of [JOB_VERSION + 1, 0, 'two', 1.5, null]) {
      await assert.rejects(
        currentLayerJob<LookupJob>({ ...v1, v } as unknown as LookupJob, requests),
        (err: unknown) => {
          assert.ok(err instanceof PermanentError, `v=${String(v)}: ${String(err)}`);
          assert.equal(err.code, 'FERRY_JOB_VERSION');
          assert.match(err.message, new RegExp(`version ${String(v)} `));
          return true;
        },
      );
    }
    assert.equal(reads(), 0, 'an unknown payload reads nothing');
  });
});
