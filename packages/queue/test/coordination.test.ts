import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import {
  BlobIndex,
  Lease,
  PushStore,
  Semaphore,
  SigningStore,
  createConnection,
  waitReady,
  type PermitControl,
  type PushRequest,
  type StoredEvent,
} from '@ferry/queue';
import { startRedis, type RedisHandle } from '../../../test/helpers/redis';

const request: PushRequest = {
  source: 'dir:/srv/images/app',
  target: '127.0.0.1:59999/team/app:1.0',
  tags: [],
  format: 'oci',
};

const digest = 'sha256:' + 'c'.repeat(64);
const diffId = 'sha256:' + 'd'.repeat(64);

async function until(what: string, fn: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function prefix(): string {
  return `{c${randomUUID().slice(0, 8)}}`;
}

describe('@ferry/queue coordination (lease fencing, permits, scripts, shared followers)', function () {
  let redis: RedisHandle;
  let conn: Redis;
  const extra: Redis[] = [];

  async function connection(): Promise<Redis> {
    const c = createConnection(redis.url, { role: 'producer' });
    extra.push(c);
    await waitReady(c);
    return c;
  }

  before(async () => {
    redis = await startRedis();
    conn = createConnection(redis.url, { role: 'producer' });
    await waitReady(conn);
  });
  after(async () => {
    extra.forEach((c) => c.disconnect());
    conn?.disconnect();
    await redis?.stop();
  });

  it('scripts keep working after SCRIPT FLUSH (a restarted Redis forgets them)', async () => {
    const lease = new Lease(conn, { prefix: prefix() });
    const t = await lease.acquire('k', 'a', 5_000);
    assert.ok(t);
    await conn.script('FLUSH');
    assert.equal(await lease.renew('k', 'a', t, 5_000), true);
    const sem = new Semaphore(conn, { prefix: prefix(), name: 'lookup', limit: 1 });
    await conn.script('FLUSH');
    assert.equal(await sem.use('r', async () => sem.count('r')), 1);
  });

  describe('Lease fencing', () => {
    it('a holder whose lease expired and was taken over commits nothing; the new holder commits', async () => {
      const p = prefix();
      const lease = new Lease(conn, { prefix: p });
      const blobs = new BlobIndex(conn, { prefix: p });
      const key = `127.0.0.1:59999/${digest}`;
      const t1 = await lease.acquire(key, 'worker-a', 100);
      assert.ok(t1);
      assert.equal(await lease.check(key, 'worker-a', t1), true);
      await until('the lease expires', async () => (await lease.holder(key)) === null);
      const t2 = await lease.acquire(key, 'worker-b', 5_000);
      assert.ok(t2 && t2 > t1);

      const upload = (owner: string, token: number) =>
        blobs.recordUpload({
          lease: { key, owner, token },
          registry: '127.0.0.1:59999',
          repository: `team/${owner}`,
          digest,
          compressed: { diffId, level: 6, zlib: 'z1', size: 123 },
        });
      assert.equal(await lease.check(key, 'worker-a', t1), false);
      assert.equal(await upload('worker-a', t1), false, 'the stale holder commits nothing');
      assert.deepEqual(await blobs.reposWithBlob('127.0.0.1:59999', digest), []);
      assert.equal(await blobs.lookupCompressed(diffId, 6, 'z1'), null);
      // the same owner name with the old token is stale too
      assert.equal(await upload('worker-b', t1), false);

      assert.equal(await upload('worker-b', t2), true);
      assert.deepEqual(await blobs.reposWithBlob('127.0.0.1:59999', digest), ['team/worker-b']);
      assert.deepEqual(await blobs.lookupCompressed(diffId, 6, 'z1'), { digest, size: 123 });
    });

    it('Lease.commit runs arbitrary writes only under the current token', async () => {
      const p = prefix();
      const lease = new Lease(conn, { prefix: p });
      const t = await lease.acquire('k', 'a', 5_000);
      assert.ok(t);
      const target = `${p}:test:value`;
      const write = (v: string) => [{ keys: [target], command: ['SET', { key: 0 }, v] }];
      assert.equal(await lease.commit('k', 'a', t + 1, write('x')), false);
      assert.equal(await conn.get(target), null);
      assert.equal(await lease.commit('k', 'a', t, write('k1')), true);
      assert.equal(await conn.get(target), 'k1', 'a value shaped like a key tag is kept as is');
    });

    it('a keeper renews while held and reports a take-over as lost', async () => {
      const lease = new Lease(conn, { prefix: prefix() });
      const t = await lease.acquire('k', 'a', 150);
      assert.ok(t);
      let lostCalls = 0;
      const keeper = lease.keep('k', 'a', t, 150, { onLost: () => lostCalls++ });
      // held across three ttls: the renewals keep it
      await new Promise((r) => setTimeout(r, 450));
      assert.equal(keeper.lost, false);
      assert.equal(await lease.check('k', 'a', t), true, 'still ours after three ttls');
      // taken over (the hash deleted as an expiry would, then another owner)
      await conn.del(lease.keys.lease('k'));
      assert.ok(await lease.acquire('k', 'b', 5_000));
      await until('lost', async () => keeper.lost);
      assert.equal(keeper.signal.aborted, true);
      assert.equal((keeper.signal.reason as { code: string }).code, 'FERRY_LEASE_LOST');
      assert.throws(() => keeper.throwIfLost(), /lease k: lost/);
      assert.equal(lostCalls, 1);
      keeper.stop();
    });

    it('a renewal that throws (connection gone) counts as lost and aborts the signal', async () => {
      const own = await connection();
      const lease = new Lease(own, { prefix: prefix() });
      const t = await lease.acquire('k', 'a', 300);
      assert.ok(t);
      const reasons: Error[] = [];
      const keeper = lease.keep('k', 'a', t, 300, { onLost: (e) => reasons.push(e) });
      own.disconnect();
      await until('lost', async () => keeper.lost);
      assert.equal(keeper.signal.aborted, true);
      assert.equal(reasons.length, 1);
      assert.match(reasons[0].message, /renewal failed|not renewed/);
      keeper.stop();
    });

    it('stop() ends renewing without marking lost', async () => {
      const lease = new Lease(conn, { prefix: prefix() });
      const t = await lease.acquire('k', 'a', 100);
      assert.ok(t);
      const keeper = lease.keep('k', 'a', t, 100);
      keeper.stop();
      await until('the lease expires', async () => (await lease.holder('k')) === null);
      assert.equal(keeper.lost, false);
      assert.equal(keeper.signal.aborted, false);
    });
  });

  describe('Semaphore permit control', () => {
    it('a holder that releases while it sleeps lets another in, and takes the permit back after it', async () => {
      const sem = new Semaphore(conn, { prefix: prefix(), name: 'lookup', limit: 1 });
      const events: string[] = [];
      let inside = 0;
      let maxInside = 0;
      const enter = (who: string) => {
        inside++;
        maxInside = Math.max(maxInside, inside);
        events.push(`${who} in`);
      };
      const leave = (who: string) => {
        inside--;
        events.push(`${who} out`);
      };
      let bStarted!: () => void;
      const bIn = new Promise<void>((r) => (bStarted = r));
      let letBFinish!: () => void;
      const bGate = new Promise<void>((r) => (letBFinish = r));

      const a = sem.use(
        'reg',
        async (permit: PermitControl) => {
          enter('a');
          assert.equal(permit.held, true);
          // a Retry-After: give the permit back while waiting
          leave('a');
          await permit.release();
          assert.equal(permit.held, false);
          events.push('a released');
          const b = sem.use('reg', async () => {
            enter('b');
            assert.equal(await sem.count('reg'), 1);
            bStarted();
            await bGate;
            leave('b');
          });
          await bIn;
          const back = permit.reacquire({ timeoutMs: 10_000, pollMs: 5 });
          events.push('a asks again');
          letBFinish();
          await back;
          enter('a');
          assert.equal(permit.held, true);
          assert.equal(permit.signal.aborted, false);
          leave('a');
          await b;
          return 'a done';
        },
        { timeoutMs: 10_000, pollMs: 5 },
      );
      assert.equal(await a, 'a done');
      assert.deepEqual(events, [
        'a in',
        'a out',
        'a released',
        'b in',
        'a asks again',
        'b out',
        'a in',
        'a out',
      ]);
      assert.equal(maxInside, 1, 'never more than the limit inside');
      assert.equal(await sem.count('reg'), 0);
    });

    it('pause() frees the permit for its duration', async () => {
      const sem = new Semaphore(conn, { prefix: prefix(), name: 'lookup', limit: 1 });
      const counts: number[] = [];
      await sem.use('reg', async (permit) => {
        counts.push(await sem.count('reg'));
        const other = sem.tryAcquire('reg');
        await permit.pause(1, undefined);
        counts.push(await sem.count('reg'));
        assert.equal(await other, null, 'taken before the pause');
      });
      assert.deepEqual(counts, [1, 1]);
    });

    it('a permit whose renewal fails aborts its signal (the holder stops its registry call)', async () => {
      const own = await connection();
      const sem = new Semaphore(own, { prefix: prefix(), name: 'lookup', limit: 2, leaseMs: 300 });
      const result = sem.use('reg', async (permit) => {
        own.disconnect();
        await new Promise<void>((resolve) => {
          if (permit.signal.aborted) resolve();
          permit.signal.addEventListener('abort', () => resolve(), { once: true });
        });
        assert.equal(permit.held, false);
        return (permit.signal.reason as { code: string }).code;
      });
      assert.equal(await result, 'FERRY_PERMIT_LOST');
    });

    it('a waiter in the same process takes a released slot at once, not at its next poll', async () => {
      const sem = new Semaphore(conn, { prefix: prefix(), name: 'lookup', limit: 1 });
      const held = await sem.acquire('reg');
      assert.ok(held);
      // Polling every 10 s or more: only the local wake-up can get it the slot within seconds.
      const started = Date.now();
      const waiting = sem.acquire('reg', { pollMs: 10_000, timeoutMs: 60_000 });
      await new Promise((r) => setTimeout(r, 100));
      await held.release();
      const next = await waiting;
      assert.ok(next, 'the waiter got the slot');
      assert.ok(Date.now() - started < 5_000, `took ${Date.now() - started} ms`);
      await next.release();
    });

    it('the old callback signature still works', async () => {
      const sem = new Semaphore(conn, { prefix: prefix(), name: 'lookup', limit: 1 });
      assert.equal(await sem.use('reg', async () => 42), 42);
    });
  });

  describe('SigningStore', () => {
    it('lookaside: one signature per signer and reference, replaced in place when signed again', async () => {
      const store = new SigningStore(conn, { prefix: prefix() });
      const digest = 'sha256:' + 'a'.repeat(64);
      const n1 = await store.addLookaside(
        'team/app',
        digest,
        Buffer.from('sig-1'),
        'K|r/team/app:1',
      );
      const n2 = await store.addLookaside(
        'team/app',
        digest,
        Buffer.from('sig-2'),
        'K|r/team/app:2',
      );
      // A re-push signs tag 1 again (a new time, so new bytes): the same slot, not a new one.
      const again = await store.addLookaside(
        'team/app',
        digest,
        Buffer.from('sig-1b'),
        'K|r/team/app:1',
      );
      assert.deepEqual([n1, n2, again], [1, 2, 1]);
      assert.equal((await store.getLookaside('team/app', digest, 1))?.toString(), 'sig-1b');
      assert.equal((await store.getLookaside('team/app', digest, 2))?.toString(), 'sig-2');
      assert.equal(await store.getLookaside('team/app', digest, 3), undefined);
    });

    it('publishing another key than the one published is refused, naming the published one', async () => {
      const store = new SigningStore(conn, { prefix: prefix() });
      assert.deepEqual(await store.publishKey('cosign', { key: 'A', fingerprint: 'fa' }), {
        ok: true,
      });
      assert.deepEqual(await store.publishKey('cosign', { key: 'A', fingerprint: 'fa' }), {
        ok: true,
      });
      const r = await store.publishKey('cosign', { key: 'B', fingerprint: 'fb' });
      assert.equal(r.ok, false);
      assert.equal(!r.ok && r.published.fingerprint, 'fa');
    });
  });

  describe('shared event followers', () => {
    async function clientCount(): Promise<number> {
      const list = (await conn.client('LIST')) as string;
      return list.split('\n').filter((l) => l.trim()).length;
    }

    it('200 followers of 200 pushes share at most 3 connections, each gets its own events in order', async () => {
      const own = await connection();
      const store = new PushStore(own, { prefix: prefix(), ttlSeconds: 600 });
      const ids = Array.from({ length: 200 }, (_, i) => `p${i}`);
      await Promise.all(ids.map((id) => store.create(id, request)));
      const before = await clientCount();

      const got = new Map<string, StoredEvent[]>(ids.map((id) => [id, []]));
      const follow = async (id: string) => {
        const reader = store.eventReader(id);
        let after: string | undefined;
        const mine = got.get(id)!;
        while (mine.length < 4) {
          const events = await reader.read(after, 10_000);
          mine.push(...events);
          if (events.length) after = events[events.length - 1].id;
        }
        reader.close();
      };
      const followers = ids.map(follow);
      let most = 0;
      for (let round = 0; round < 3; round++) {
        for (const id of ids)
          await store.appendEvent(id, { type: 'log', message: `${id}#${round}` });
        most = Math.max(most, (await clientCount()) - before);
      }
      await Promise.all(followers);
      most = Math.max(most, (await clientCount()) - before);
      assert.ok(most <= 3, `followers used ${most} extra connections`);
      for (const id of ids) {
        const messages = got
          .get(id)!
          .map((e) => (e.event.type === 'log' ? e.event.message : e.event.type));
        assert.deepEqual(messages, ['status', `${id}#0`, `${id}#1`, `${id}#2`]);
      }
      store.close();
    });

    it('close() ends a pending read with no events', async () => {
      const store = new PushStore(conn, { prefix: prefix(), ttlSeconds: 600 });
      await store.create('x1', request);
      const reader = store.eventReader('x1');
      const first = await reader.read(undefined, 1_000);
      assert.equal(first.length, 1);
      const pending = reader.read(first[0].id, 60_000);
      reader.close();
      assert.deepEqual(await pending, []);
      store.close();
    });
  });
});
