/**
 * Token scopes, the login rate limit, strict JSON bodies, normalised targets,
 * list limits and Last-Event-ID corners (issue 9, items 4, 6 and 7).
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { startRedis, type RedisHandle } from '../../../test/helpers/redis';
import { makeApi, makeSourceRoot, type TestApi } from './helpers';

const PUSH = { authorization: 'Bearer push-token-aaaa' };
const ADMIN = { authorization: 'Bearer admin-token-bbbb' };
const TEAM = { authorization: 'Bearer team-token-cccc' };

describe('api: token scopes and strict input', function () {
  let redis: RedisHandle;
  let src: { root: string; app: string };
  let api: TestApi;

  before(async () => {
    redis = await startRedis();
    src = makeSourceRoot();
  });
  after(async () => {
    await redis?.stop();
  });
  beforeEach(async () => {
    api = await makeApi(redis.url, src.root, {
      FERRY_API_TOKENS: 'push-token-aaaa,ci=team-token-cccc@127.0.0.1/team/*;registry.test:5000/x',
      FERRY_ADMIN_TOKENS: 'ops=admin-token-bbbb@*',
    });
  });
  afterEach(async () => {
    await api?.close();
  });

  const good = (target = '127.0.0.1:59999/team/app:1.0') => ({ source: `dir:${src.app}`, target });

  function post(body: unknown, headers: Record<string, string>, contentType = 'application/json') {
    return api.app.inject({
      method: 'POST',
      url: '/v1/pushes',
      headers: { 'content-type': contentType, ...headers },
      payload: typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body),
    });
  }

  async function enqueued(): Promise<number> {
    const [c, pushes] = await Promise.all([
      api.queues.lookup.getJobCounts('waiting', 'delayed', 'active'),
      api.store.list({ limit: 1000 }),
    ]);
    return Object.values(c).reduce((a, b) => a + b, 0) + pushes.length;
  }

  describe('Bull Board writes', () => {
    it('a push token reads Bull Board, read-only, and may not pause a queue (403); an admin token may', async () => {
      const view = await api.app.inject({ url: '/admin/queues/api/queues', headers: PUSH });
      assert.equal(view.statusCode, 200, view.body);
      const queues = view.json().queues as { readOnlyMode: boolean; allowRetries: boolean }[];
      assert.equal(queues.length, 3);
      assert.ok(
        queues.every((q) => q.readOnlyMode && !q.allowRetries),
        view.body,
      );

      for (const [method, url] of [
        ['PUT', '/admin/queues/api/queues/lookup/pause'],
        ['PUT', '/admin/queues/api/queues/pause'],
        ['PUT', '/admin/queues/api/queues/upload/clean/failed'],
        ['PUT', '/admin/queues/api/queues/upload/retry/failed'],
        ['POST', '/admin/queues/api/queues/lookup/add'],
      ] as const) {
        const res = await api.app.inject({ method, url, headers: PUSH });
        assert.equal(res.statusCode, 403, `${method} ${url}: ${res.body}`);
        assert.equal(res.json().error.code, 'FERRY_FORBIDDEN');
      }
      assert.equal(await api.queues.lookup.isPaused(), false);

      const adminView = await api.app.inject({ url: '/admin/queues/api/queues', headers: ADMIN });
      assert.ok(
        (adminView.json().queues as { readOnlyMode: boolean }[]).every((q) => !q.readOnlyMode),
      );
      const pause = await api.app.inject({
        method: 'PUT',
        url: '/admin/queues/api/queues/lookup/pause',
        headers: ADMIN,
      });
      assert.equal(pause.statusCode, 200, pause.body);
      assert.equal(await api.queues.lookup.isPaused(), true);
      await api.queues.lookup.resume();
    });

    it("the login form's session carries its token's scope", async () => {
      const login = async (token: string) => {
        const res = await api.app.inject({
          method: 'POST',
          url: '/admin/login',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          payload: `token=${token}`,
        });
        assert.equal(res.statusCode, 303, res.body);
        const cookie = String(res.headers['set-cookie']).split(';')[0]!;
        assert.ok(!cookie.includes(token));
        return cookie;
      };
      const pushCookie = await login('push-token-aaaa');
      const adminCookie = await login('admin-token-bbbb');
      const url = '/admin/queues/api/queues/lookup/pause';
      const denied = await api.app.inject({ method: 'PUT', url, headers: { cookie: pushCookie } });
      assert.equal(denied.statusCode, 403);
      const read = await api.app.inject({
        url: '/admin/queues/api/queues',
        headers: { cookie: pushCookie },
      });
      assert.equal(read.statusCode, 200);
      const ok = await api.app.inject({ method: 'PUT', url, headers: { cookie: adminCookie } });
      assert.equal(ok.statusCode, 200, ok.body);
      await api.queues.lookup.resume();
      // a cookie whose name was changed to the admin's fails its signature
      const forged = pushCookie.replace(
        /\.([A-Za-z0-9_-]+)\./,
        `.${Buffer.from('ops').toString('base64url')}.`,
      );
      const f = await api.app.inject({ method: 'PUT', url, headers: { cookie: forged } });
      assert.equal(f.statusCode, 401);
    });

    it('POST /admin/login: 10 tries a minute per address, then 429 with Retry-After', async () => {
      const statuses: number[] = [];
      let last;
      for (let i = 0; i < 12; i++) {
        last = await api.app.inject({
          method: 'POST',
          url: '/admin/login',
          remoteAddress: '10.1.1.1',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          payload: i === 11 ? 'token=admin-token-bbbb' : `token=guess-${i}`,
        });
        statuses.push(last.statusCode);
      }
      assert.deepEqual(statuses, [...Array(10).fill(401), 429, 429]);
      assert.ok(Number(last!.headers['retry-after']) >= 1, 'Retry-After in seconds');
      assert.equal(last!.json().error.code, 'FERRY_TOO_MANY_REQUESTS');
      assert.equal(last!.headers['set-cookie'], undefined, 'even the right token waits');
      // another address is counted on its own
      const other = await api.app.inject({
        method: 'POST',
        url: '/admin/login',
        remoteAddress: '10.1.1.2',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        payload: 'token=admin-token-bbbb',
      });
      assert.equal(other.statusCode, 303);
    });
  });

  describe('target patterns', () => {
    it('a token limited to …/team/* pushes there, gets 403 for another repository, and nothing is enqueued', async () => {
      const ok = await post(good('127.0.0.1:59999/team/app:1.0'), TEAM);
      assert.equal(ok.statusCode, 202, ok.body);
      const state = await api.store.get(ok.json().id);
      assert.equal(state!.request.requestedBy, 'ci');
      const shown = await api.app.inject({ url: `/v1/pushes/${ok.json().id}`, headers: TEAM });
      assert.equal(shown.json().requestedBy, 'ci');
      assert.ok(!JSON.stringify(state).includes('team-token-cccc'));

      const before = await enqueued();
      for (const target of [
        '127.0.0.1:59999/other/app:1.0',
        '127.0.0.1:59999/team:1.0',
        'localhost/team/app',
        'registry.test:5000/x/y',
      ]) {
        const res = await post(good(target), TEAM);
        assert.equal(res.statusCode, 403, `${target}: ${res.body}`);
        assert.equal(res.json().error.code, 'FERRY_FORBIDDEN');
        assert.equal(res.json().error.field, 'target');
        assert.ok(!res.body.includes('team-token-cccc'));
      }
      assert.equal(await enqueued(), before, 'nothing enqueued or recorded');
      // the host is normalised before it is matched: 127.1 is 127.0.0.1
      const alias = await post(good('127.1:59999/team/app:1.0'), TEAM);
      assert.equal(alias.statusCode, 202, alias.body);
      const second = await post(good('registry.test:5000/x'), TEAM);
      assert.equal(second.statusCode, 202, second.body);
    });

    it('unlimited and admin tokens push anywhere allowed, and record their names', async () => {
      const a = await post(good('127.0.0.1:59999/other/app:1.0'), PUSH);
      assert.equal(a.statusCode, 202, a.body);
      assert.equal((await api.store.get(a.json().id))!.request.requestedBy, 'api#1');
      const b = await post(good('127.0.0.1:59999/other/app:1.0'), ADMIN);
      assert.equal((await api.store.get(b.json().id))!.request.requestedBy, 'ops');
    });
  });

  describe('input', () => {
    it('stores the target with its host normalised (0x7f.1 → 127.0.0.1)', async () => {
      const res = await post(good('0x7f.1:59999/team/app:1.0'), PUSH);
      assert.equal(res.statusCode, 202, res.body);
      const state = await api.store.get(res.json().id);
      assert.equal(state!.target, '127.0.0.1:59999/team/app:1.0');
      assert.equal(state!.request.target, '127.0.0.1:59999/team/app:1.0');
      const jobs = await api.queues.lookup.getJobs(['waiting', 'delayed', 'waiting-children']);
      const mine = jobs.filter((j) => (j.data as { pushId: string }).pushId === res.json().id);
      assert.ok(mine.length > 0);
      for (const j of mine) assert.equal((j.data as { target: string }).target, state!.target);
    });

    it('GET /v1/pushes?limit= takes 1-1000', async () => {
      for (const [limit, status] of [
        ['5000', 400],
        ['1001', 400],
        ['0', 400],
        ['1000', 200],
        ['1', 200],
      ] as const) {
        const res = await api.app.inject({ url: `/v1/pushes?limit=${limit}`, headers: PUSH });
        assert.equal(res.statusCode, status, `limit=${limit}: ${res.body}`);
        if (status === 400) assert.equal(res.json().error.field, 'limit');
      }
    });

    const refused: [string, Buffer | string, string, number, string, RegExp][] = [
      [
        'a duplicate key',
        '{"target":"127.0.0.1:1/evil/x","target":"127.0.0.1:1/team/x","source":"dir:/x"}',
        'application/json',
        400,
        'FERRY_BAD_JSON',
        /"target" appears twice/,
      ],
      [
        'a duplicate key in a nested object (escaped the same)',
        '{"source":"dir:/x","target":"t","dirOptions":{"owners":"root","\\u006fwners":"keep"}}',
        'application/json',
        400,
        'FERRY_BAD_JSON',
        /"owners" appears twice/,
      ],
      [
        'a byte-order mark',
        Buffer.concat([
          Buffer.from([0xef, 0xbb, 0xbf]),
          Buffer.from('{"source":"x","target":"y"}'),
        ]),
        'application/json',
        400,
        'FERRY_BAD_JSON',
        /byte-order mark/,
      ],
      [
        'a latin-1 charset',
        '{"source":"x","target":"y"}',
        'application/json; charset=iso-8859-1',
        415,
        'FERRY_UNSUPPORTED_MEDIA_TYPE',
        /UTF-8/,
      ],
      [
        'a UTF-16 body',
        Buffer.from('\ufeff{"source":"x"}', 'utf16le'),
        'application/json; charset=utf-16',
        415,
        'FERRY_UNSUPPORTED_MEDIA_TYPE',
        /UTF-8/,
      ],
      [
        'bytes that are not UTF-8',
        Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]),
        'application/json',
        400,
        'FERRY_BAD_JSON',
        /UTF-8/,
      ],
      [
        'a __proto__ key',
        '{"source":"x","target":"y","__proto__":{"admin":true}}',
        'application/json',
        400,
        'FERRY_BAD_JSON',
        /__proto__/,
      ],
    ];
    for (const [what, body, type, status, code, msg] of refused) {
      it(`refuses ${what}: ${status} ${code}, nothing enqueued`, async () => {
        const before = await enqueued();
        const res = await post(body, PUSH, type);
        assert.equal(res.statusCode, status, res.body);
        assert.equal(res.json().error.code, code);
        assert.match(res.json().error.message, msg);
        assert.equal(await enqueued(), before);
      });
    }
    it('the duplicate-key error names the key as its field', async () => {
      const res = await post(
        '{"source":"dir:/x","target":"a","target":"b"}',
        PUSH,
        'application/json; charset=UTF-8',
      );
      assert.equal(res.json().error.field, 'target');
    });
  });

  describe('Last-Event-ID', () => {
    let base: string;
    beforeEach(async () => {
      // a keep-alive longer than the test: a stream that ends did not wait for it
      await api.close();
      api = await makeApi(redis.url, src.root, {}, { sseKeepAliveMs: 120_000 });
      await api.app.listen({ host: '127.0.0.1', port: 0 });
      base = `http://127.0.0.1:${(api.app.server.address() as AddressInfo).port}`;
    });
    const auth = { authorization: 'Bearer secret-token-1' };

    it('answers 400 FERRY_BAD_EVENT_ID for ids Redis would reject (a part beyond 2^64-1)', async () => {
      const { id } = (await post(good(), auth)).json();
      for (const bad of [
        '18446744073709551616-0',
        '0-18446744073709551616',
        '99999999999999999999',
      ]) {
        const res = await fetch(`${base}/v1/pushes/${id}/events`, {
          headers: { ...auth, 'last-event-id': bad },
        });
        assert.equal(res.status, 400, bad);
        assert.equal(
          ((await res.json()) as { error: { code: string } }).error.code,
          'FERRY_BAD_EVENT_ID',
        );
      }
      const max = await fetch(`${base}/v1/pushes/${id}/events?lastEventId=18446744073709551615-0`, {
        headers: auth,
        signal: AbortSignal.timeout(2_000),
      }).catch((e: Error) => e);
      // the largest id is a good one: the stream opens (and waits, the push is not finished)
      assert.ok(!(max instanceof Error) && max.status === 200);
      await max.body?.cancel();
    });

    it('an id past the end of a finished push ends the stream at once, with no events', async () => {
      const { id } = (await post(good(), auth)).json();
      await api.store.cancel(id);
      const res = await fetch(`${base}/v1/pushes/${id}/events`, {
        headers: { ...auth, 'last-event-id': '18446744073709551615-18446744073709551615' },
        signal: AbortSignal.timeout(20_000),
      });
      assert.equal(res.status, 200);
      const text = await res.text(); // resolves only when the server ends the stream
      assert.ok(!/^data:/m.test(text), text);
      // from the start, the same finished push replays its events and ends too
      const all = await (
        await fetch(`${base}/v1/pushes/${id}/events`, {
          headers: auth,
          signal: AbortSignal.timeout(20_000),
        })
      ).text();
      assert.match(all, /"status":"cancelled"/);
    });
  });
});
