import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, symlinkSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { PushRequestSchema, ROUTES } from '@ferry/api';
import { assembleJobId, lookupJobId, SigningStore, type PushEvent } from '@ferry/queue';
import { startRedis, type RedisHandle } from '../../../test/helpers/redis';
import { tmpDir } from '../../../test/helpers/tmp';
import { AUTH, makeApi, makeSourceRoot, readSse, type TestApi } from './helpers';

describe('api (fastify + real redis-server)', function () {
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
    api = await makeApi(redis.url, src.root);
  });
  afterEach(async () => {
    await api?.close();
  });

  const good = () => ({
    source: `dir:${src.app}`,
    target: '127.0.0.1:59999/team/app:1.0',
    tags: ['latest', 'v1'],
  });

  async function post(body: unknown, headers: Record<string, string> = AUTH) {
    return api.app.inject({
      method: 'POST',
      url: '/v1/pushes',
      headers: { 'content-type': 'application/json', ...headers },
      payload: typeof body === 'string' ? body : JSON.stringify(body),
    });
  }

  /** Everything that would show a push was enqueued or recorded. */
  async function footprint() {
    const [lookup, assemble, pushes] = await Promise.all([
      api.queues.lookup.getJobCounts('waiting', 'delayed', 'active'),
      api.queues.assemble.getJobCounts('waiting', 'waiting-children'),
      api.store.list({ limit: 1000 }),
    ]);
    return { lookup, assemble, pushes: pushes.length };
  }

  it('accepts a push: 202, state with pending layers, one lookup job per layer under the push', async () => {
    const res = await post(good());
    assert.equal(res.statusCode, 202, res.body);
    const body = res.json();
    assert.equal(body.status, 'queued');
    assert.deepEqual(body.links, {
      self: `/v1/pushes/${body.id}`,
      events: `/v1/pushes/${body.id}/events`,
    });
    assert.equal(res.headers.location, body.links.self);

    const job = await api.queues.lookup.getJob(lookupJobId(body.id, 0, 1));
    assert.ok(job, 'lookup job for layer 1');
    assert.equal(job.data.source, `dir:${src.app}`);
    assert.equal(job.data.target, '127.0.0.1:59999/team/app:1.0');
    assert.ok(await api.queues.assemble.getJob(assembleJobId(body.id)));

    const get = await api.app.inject({ method: 'GET', url: body.links.self, headers: AUTH });
    assert.equal(get.statusCode, 200);
    const state = get.json();
    assert.equal(state.status, 'queued');
    assert.deepEqual(state.tags, ['latest', 'v1']);
    assert.equal(state.layers.length, 2);
    assert.deepEqual(
      state.layers.map((l: { state: string }) => l.state),
      ['pending', 'pending'],
    );
    assert.equal(state.request, undefined, 'the raw request is not echoed');

    const list = await api.app.inject({
      method: 'GET',
      url: '/v1/pushes?status=queued',
      headers: AUTH,
    });
    assert.deepEqual(
      list.json().pushes.map((p: { id: string }) => p.id),
      [body.id],
    );
    const none = await api.app.inject({
      method: 'GET',
      url: '/v1/pushes?status=failed',
      headers: AUTH,
    });
    assert.deepEqual(none.json().pushes, []);
  });

  it('a target without a tag gets :latest, and the source path is stored as checked', async () => {
    const res = await post({
      source: `dir:${src.root}/images/./app`,
      target: 'localhost:59999/team/app',
    });
    assert.equal(res.statusCode, 202, res.body);
    const state = await api.store.get(res.json().id);
    assert.equal(state?.target, 'localhost:59999/team/app:latest');
    assert.equal(state?.source, `dir:${src.app}`);
  });

  describe('refuses bad requests with the documented 4xx and enqueues nothing', () => {
    const outside = tmpDir('api-outside');
    const cases: {
      name: string;
      body: () => unknown;
      status: number;
      code: string;
      field?: string;
      headers?: Record<string, string>;
    }[] = [
      {
        name: 'source of the wrong type',
        body: () => ({ ...good(), source: 5 }),
        status: 400,
        code: 'FERRY_VALIDATION',
        field: 'source',
      },
      {
        name: 'tags not an array',
        body: () => ({ ...good(), tags: 'latest' }),
        status: 400,
        code: 'FERRY_VALIDATION',
        field: 'tags',
      },
      {
        name: 'a tag outside the grammar',
        body: () => ({ ...good(), tags: ['ok', 'bad tag'] }),
        status: 400,
        code: 'FERRY_VALIDATION',
        field: 'tags[1]',
      },
      {
        name: 'an unknown field',
        body: () => ({ ...good(), colour: 'blue' }),
        status: 400,
        code: 'FERRY_VALIDATION',
        field: 'colour',
      },
      {
        name: 'an unknown sign option',
        body: () => ({ ...good(), sign: { gpg: true } }),
        status: 400,
        code: 'FERRY_VALIDATION',
        field: 'sign',
      },
      {
        name: 'schema1 not a boolean',
        body: () => ({ ...good(), schema1: 'yes' }),
        status: 400,
        code: 'FERRY_VALIDATION',
        field: 'schema1',
      },
      {
        name: 'signing asked for, no signer configured',
        body: () => ({ ...good(), sign: { cosign: true } }),
        status: 422,
        code: 'FERRY_SIGNING_NOT_CONFIGURED',
        field: 'sign',
      },
      {
        name: 'a schema1 manifest asked for, no signer configured',
        body: () => ({ ...good(), schema1: true }),
        status: 422,
        code: 'FERRY_SIGNING_NOT_CONFIGURED',
        field: 'schema1',
      },
      {
        name: 'an unknown format',
        body: () => ({ ...good(), format: 'zip' }),
        status: 400,
        code: 'FERRY_VALIDATION',
        field: 'format',
      },
      {
        name: 'a platform without arch',
        body: () => ({ ...good(), platform: 'linux' }),
        status: 400,
        code: 'FERRY_VALIDATION',
        field: 'platform',
      },
      {
        name: 'a missing target',
        body: () => ({ source: good().source }),
        status: 400,
        code: 'FERRY_VALIDATION',
        field: 'target',
      },
      ...(['schema1', 'format', 'dirOptions'] as const).map((field) => ({
        name: `a docker:// copy with ${field} (it would rewrite the copied bytes)`,
        body: () => ({
          ...good(),
          source: 'docker://127.0.0.1:1/src/app:1',
          [field]: { schema1: true, format: 'docker', dirOptions: { owners: 'keep' } }[field],
        }),
        status: 422,
        code: 'FERRY_COPY_UNSUPPORTED',
        field,
      })),
      {
        name: 'a docker:// source on a registry that is not allowed',
        body: () => ({ ...good(), source: 'docker://registry.invalid:5000/src/app:1' }),
        status: 403,
        code: 'FERRY_REGISTRY_NOT_ALLOWED',
        field: 'source',
      },
      {
        name: 'allTags with a source that names a tag',
        body: () => ({
          ...good(),
          tags: undefined,
          source: 'docker://127.0.0.1:1/src/app:1',
          allTags: true,
        }),
        status: 400,
        code: 'FERRY_VALIDATION',
        field: 'allTags',
      },
      {
        name: 'allTags with a source that is not docker://',
        body: () => ({ ...good(), allTags: true }),
        status: 400,
        code: 'FERRY_VALIDATION',
        field: 'allTags',
      },
      {
        name: 'a second target on a registry that is not allowed',
        body: () => ({ ...good(), targets: ['registry.invalid:5000/a/b:1'] }),
        status: 403,
        code: 'FERRY_REGISTRY_NOT_ALLOWED',
        field: 'targets',
      },
      { name: 'not JSON', body: () => '{"source": ', status: 400, code: 'FERRY_BAD_JSON' },
      {
        name: 'an unknown source type',
        body: () => ({ ...good(), source: `tarball:${src.app}` }),
        status: 400,
        code: 'FERRY_BAD_SOURCE',
        field: 'source',
      },
      {
        name: 'a source without transport',
        body: () => ({ ...good(), source: src.app }),
        status: 400,
        code: 'FERRY_BAD_SOURCE',
        field: 'source',
      },
      {
        name: 'a path outside the root',
        body: () => ({ ...good(), source: `dir:${outside}` }),
        status: 403,
        code: 'FERRY_SOURCE_OUTSIDE_ROOT',
        field: 'source',
      },
      {
        name: 'a ../ escape',
        body: () => ({ ...good(), source: `dir:${src.root}/../${outside.split('/').pop()}` }),
        status: 403,
        code: 'FERRY_SOURCE_OUTSIDE_ROOT',
        field: 'source',
      },
      {
        name: 'a symlink out of the root',
        body: () => ({ ...good(), source: `dir:${src.root}/escape` }),
        status: 403,
        code: 'FERRY_SOURCE_OUTSIDE_ROOT',
        field: 'source',
      },
      {
        name: 'a path that does not exist',
        body: () => ({ ...good(), source: `dir:${src.root}/nope` }),
        status: 422,
        code: 'FERRY_SOURCE_NOT_FOUND',
        field: 'source',
      },
      {
        name: 'a registry not allowed',
        body: () => ({ ...good(), target: 'evil.example.com/team/app:1' }),
        status: 403,
        code: 'FERRY_REGISTRY_NOT_ALLOWED',
        field: 'target',
      },
      {
        name: 'a bad reference',
        body: () => ({ ...good(), target: '127.0.0.1:59999/Team/App' }),
        status: 400,
        code: 'FERRY_BAD_REFERENCE',
        field: 'target',
      },
      {
        name: 'a target with a scheme',
        body: () => ({ ...good(), target: 'https://127.0.0.1:59999/team/app' }),
        status: 400,
        code: 'FERRY_BAD_REFERENCE',
        field: 'target',
      },
      { name: 'no token', body: good, headers: {}, status: 401, code: 'FERRY_UNAUTHORIZED' },
      {
        name: 'a wrong token',
        body: good,
        headers: { authorization: 'Bearer nope' },
        status: 401,
        code: 'FERRY_UNAUTHORIZED',
      },
      {
        name: 'a body over the limit',
        body: () => ({
          ...good(),
          tags: Array.from({ length: 3000 }, (_, i) => `t${i}-${'x'.repeat(20)}`),
        }),
        status: 413,
        code: 'FERRY_BODY_TOO_LARGE',
      },
    ];
    before(() => {
      symlinkSync(outside, join(src.root, 'escape'));
      mkdirSync(join(outside, 'layers', 'a'), { recursive: true });
    });
    for (const c of cases) {
      it(c.name, async () => {
        const before = await footprint();
        const res = await post(c.body(), c.headers ?? AUTH);
        assert.equal(res.statusCode, c.status, res.body);
        const body = res.json();
        assert.equal(body.error.code, c.code, res.body);
        assert.equal(typeof body.error.message, 'string');
        assert.ok(body.error.message.length > 5);
        if (c.field) assert.equal(body.error.field, c.field, res.body);
        if (c.status === 401) assert.match(String(res.headers['www-authenticate']), /^Bearer/);
        assert.deepEqual(await footprint(), before, 'nothing enqueued or recorded');
      });
    }
    it('a form-encoded body is not accepted as a push', async () => {
      const res = await post('source=x&target=y', {
        ...AUTH,
        'content-type': 'application/x-www-form-urlencoded',
      });
      assert.equal(res.statusCode, 415, res.body);
      assert.equal(res.json().error.code, 'FERRY_UNSUPPORTED_MEDIA_TYPE');
    });
    it('GET of an unknown push is 404, a malformed id 400', async () => {
      const r1 = await api.app.inject({
        method: 'GET',
        url: '/v1/pushes/unknown-id',
        headers: AUTH,
      });
      assert.equal(r1.statusCode, 404);
      assert.equal(r1.json().error.code, 'FERRY_PUSH_NOT_FOUND');
      const r2 = await api.app.inject({ method: 'GET', url: '/v1/pushes/a%3Ab', headers: AUTH });
      assert.equal(r2.statusCode, 400);
      assert.equal(r2.json().error.field, 'id');
    });
  });

  it('Idempotency-Key: the same key gives the same push; another body with it is refused', async () => {
    const h = { ...AUTH, 'idempotency-key': 'deploy-42' };
    const a = await post(good(), h);
    const b = await post(good(), h);
    assert.equal(a.statusCode, 202);
    assert.equal(b.statusCode, 202);
    assert.equal(b.json().id, a.json().id);
    assert.equal(b.headers['idempotent-replayed'], 'true');
    assert.equal((await api.store.list()).length, 1);
    assert.equal((await api.queues.lookup.getJobCounts('waiting')).waiting, 2);
    const c = await post({ ...good(), tags: ['other'] }, h);
    assert.equal(c.statusCode, 422);
    assert.equal(c.json().error.code, 'FERRY_IDEMPOTENCY_CONFLICT');
    const d = await post(good(), { ...AUTH, 'idempotency-key': 'deploy-43' });
    assert.notEqual(d.json().id, a.json().id);
  });

  it('DELETE cancels: status cancelled, waiting jobs removed; a finished push answers 409', async () => {
    const { id } = (await post(good())).json();
    const del = await api.app.inject({ method: 'DELETE', url: `/v1/pushes/${id}`, headers: AUTH });
    assert.equal(del.statusCode, 200, del.body);
    assert.equal(del.json().status, 'cancelled');
    assert.equal((await api.store.get(id))?.status, 'cancelled');
    assert.equal(await api.store.isCancelled(id), true);
    assert.equal((await api.queues.lookup.getJobCounts('waiting')).waiting, 0);
    assert.equal(await api.queues.assemble.getJob(assembleJobId(id)), undefined);
    const again = await api.app.inject({
      method: 'DELETE',
      url: `/v1/pushes/${id}`,
      headers: AUTH,
    });
    assert.equal(again.statusCode, 200);

    const other = (await post(good())).json().id;
    await api.store.finish(other, {
      manifest: { digest: 'sha256:' + '1'.repeat(64), mediaType: 'x', size: 1 },
    });
    const late = await api.app.inject({
      method: 'DELETE',
      url: `/v1/pushes/${other}`,
      headers: AUTH,
    });
    assert.equal(late.statusCode, 409);
    assert.equal(late.json().error.code, 'FERRY_PUSH_FINISHED');
  });

  describe('SSE over a real HTTP connection', () => {
    let base: string;
    beforeEach(async () => {
      await api.app.listen({ host: '127.0.0.1', port: 0 });
      base = `http://127.0.0.1:${(api.app.server.address() as AddressInfo).port}`;
    });

    it('delivers events in order with their stream ids, ends after the final status, and resumes after Last-Event-ID', async () => {
      const { id } = (await post(good())).json();
      const digest = 'sha256:' + 'a'.repeat(64);
      const got = readSse(`${base}/v1/pushes/${id}/events`, AUTH, Infinity, () => {
        void (async () => {
          await api.store.setStatus(id, 'running');
          await api.store.updateLayer(
            id,
            { imageIndex: 0, index: 0 },
            { digest, size: 10, state: 'exists' },
          );
          await api.store.updateLayer(
            id,
            { imageIndex: 0, index: 1 },
            { state: 'uploading', bytesSent: 5 },
          );
          await api.store.updateLayer(
            id,
            { imageIndex: 0, index: 1 },
            { state: 'uploaded', bytesSent: 10, digest, size: 10 },
          );
          await api.store.appendEvent(id, { type: 'log', message: 'assembling' });
          await api.store.finish(id, {
            manifest: {
              digest,
              mediaType: 'application/vnd.oci.image.manifest.v1+json',
              size: 300,
            },
          });
        })();
      });
      const res = await got;
      assert.equal(res.status, 200);
      assert.match(res.contentType, /^text\/event-stream/);
      assert.equal(res.ended, true, 'the server ended the stream after the final event');
      const events = res.events.map((e) => JSON.parse(e.data) as PushEvent);
      assert.deepEqual(
        events.map((e) =>
          e.type === 'status'
            ? `status:${e.status}`
            : e.type === 'layer'
              ? `layer:${e.index}:${e.state}`
              : e.type,
        ),
        [
          'status:queued',
          'status:running',
          'layer:0:exists',
          'layer:1:uploading',
          'layer:1:uploaded',
          'log',
          'status:succeeded',
        ],
      );
      const stored = await api.store.readEvents(id);
      assert.deepEqual(
        res.events.map((e) => e.id),
        stored.map((e) => e.id),
        'SSE ids are the stream ids',
      );

      const resumed = await readSse(`${base}/v1/pushes/${id}/events`, {
        ...AUTH,
        'last-event-id': stored[2].id,
      });
      assert.deepEqual(
        resumed.events.map((e) => e.id),
        stored.slice(3).map((e) => e.id),
      );
      assert.equal(resumed.ended, true);
      const atEnd = await readSse(`${base}/v1/pushes/${id}/events`, {
        ...AUTH,
        'last-event-id': stored[stored.length - 1].id,
      });
      assert.deepEqual(atEnd.events, []);
      assert.equal(atEnd.ended, true, 'resuming after the final event ends at once');
    });

    it('keeps a stream open across keep-alives until events come, and refuses a bad Last-Event-ID', async () => {
      const { id } = (await post(good())).json();
      const first = await readSse(`${base}/v1/pushes/${id}/events`, AUTH, 1);
      assert.equal(first.events.length, 1);
      const pending = readSse(
        `${base}/v1/pushes/${id}/events`,
        { ...AUTH, 'last-event-id': first.events[0].id! },
        1,
      );
      await new Promise((r) => setTimeout(r, 1_200)); // longer than the 500 ms keep-alive in tests
      await api.store.cancel(id);
      const later = await pending;
      assert.equal(JSON.parse(later.events[0].data).status, 'cancelled');

      const bad = await fetch(`${base}/v1/pushes/${id}/events`, {
        headers: { ...AUTH, 'last-event-id': 'x' },
      });
      assert.equal(bad.status, 400);
      assert.equal(
        ((await bad.json()) as { error: { code: string } }).error.code,
        'FERRY_BAD_EVENT_ID',
      );
      const unknown = await fetch(`${base}/v1/pushes/nope/events`, { headers: AUTH });
      assert.equal(unknown.status, 404);
      const noToken = await fetch(`${base}/v1/pushes/${id}/events`);
      assert.equal(noToken.status, 401);
    });
  });

  describe('Bull Board', () => {
    it('sends a browser to the login form, sets an HttpOnly SameSite=Strict cookie, then serves /admin/queues', async () => {
      const anon = await api.app.inject({
        method: 'GET',
        url: '/admin/queues',
        headers: { accept: 'text/html' },
      });
      assert.equal(anon.statusCode, 303);
      assert.equal(anon.headers.location, '/admin/login');
      const anonApi = await api.app.inject({ method: 'GET', url: '/admin/queues/api/queues' });
      assert.equal(anonApi.statusCode, 401);

      const form = await api.app.inject({ method: 'GET', url: '/admin/login' });
      assert.equal(form.statusCode, 200);
      assert.match(form.body, /<form method="post" action="\/admin\/login">/);

      const wrong = await api.app.inject({
        method: 'POST',
        url: '/admin/login',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        payload: 'token=guess',
      });
      assert.equal(wrong.statusCode, 401);
      assert.equal(wrong.headers['set-cookie'], undefined);

      const login = await api.app.inject({
        method: 'POST',
        url: '/admin/login',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        payload: 'token=secret-token-2',
      });
      assert.equal(login.statusCode, 303);
      assert.equal(login.headers.location, '/admin/queues');
      const setCookie = String(login.headers['set-cookie']);
      assert.match(setCookie, /HttpOnly/);
      assert.match(setCookie, /SameSite=Strict/);
      assert.ok(!setCookie.includes('secret-token'), 'the token is not in the cookie');
      const cookie = setCookie.split(';')[0];

      const page = await api.app.inject({
        method: 'GET',
        url: '/admin/queues',
        headers: { cookie, accept: 'text/html' },
      });
      assert.equal(page.statusCode, 200);
      assert.match(String(page.headers['content-type']), /html/);
      const queues = await api.app.inject({
        method: 'GET',
        url: '/admin/queues/api/queues',
        headers: { cookie },
      });
      assert.equal(queues.statusCode, 200, queues.body);
      const names = (queues.json().queues as { name: string }[]).map((q) => q.name).sort();
      assert.deepEqual(names, ['assemble', 'lookup', 'upload']);

      // the cookie is for Bull Board only, and a tampered one is refused
      const apiWithCookie = await api.app.inject({
        method: 'GET',
        url: '/v1/pushes',
        headers: { cookie },
      });
      assert.equal(apiWithCookie.statusCode, 401);
      const tampered = cookie.replace(/\.(.)/, (_m, c: string) => `.${c === 'A' ? 'B' : 'A'}`);
      const bad = await api.app.inject({
        method: 'GET',
        url: '/admin/queues/api/queues',
        headers: { cookie: tampered },
      });
      assert.equal(bad.statusCode, 401);
      // a bearer header works too
      const bearer = await api.app.inject({
        method: 'GET',
        url: '/admin/queues/api/queues',
        headers: AUTH,
      });
      assert.equal(bearer.statusCode, 200);
    });
  });

  it('/openapi.json lists the routes and documents the very schema that validates', async () => {
    const res = await api.app.inject({ method: 'GET', url: '/openapi.json', headers: AUTH });
    assert.equal(res.statusCode, 200);
    const doc = res.json();
    assert.equal(doc.openapi, '3.1.0');
    for (const path of [
      '/v1/pushes',
      '/v1/pushes/{id}',
      '/v1/pushes/{id}/events',
      '/healthz',
      '/readyz',
      '/metrics',
      '/v1/signing/public-key',
      '/admin/queues',
      '/admin/login',
      '/sigstore/{path}',
    ]) {
      assert.ok(doc.paths[path], `documents ${path}`);
    }
    assert.ok(
      doc.paths['/v1/pushes'].post &&
        doc.paths['/v1/pushes'].get &&
        doc.paths['/v1/pushes/{id}'].delete,
    );
    const documented = doc.paths['/v1/pushes'].post.requestBody.content['application/json'].schema;
    assert.deepEqual(documented, JSON.parse(JSON.stringify(PushRequestSchema)));
    assert.equal(
      ROUTES.find((r) => r.url === '/v1/pushes' && r.method === 'POST')?.schema?.body,
      PushRequestSchema,
    );
    // what the document forbids, the server refuses: every enum value it lists is accepted, others are not
    for (const format of documented.properties.format.enum as string[]) {
      const ok = await post({ ...good(), format });
      assert.equal(ok.statusCode, 202, `${format}: ${ok.body}`);
    }
    const notInDoc = await post({ ...good(), format: 'tarball' });
    assert.equal(notInDoc.statusCode, 400);
    assert.equal(documented.additionalProperties, false);
  });

  it('/healthz and /readyz need no token; /readyz answers 503 when Redis is gone', async () => {
    const other = await startRedis();
    const api2 = await makeApi(other.url, src.root);
    try {
      const h = await api2.app.inject({ method: 'GET', url: '/healthz' });
      assert.equal(h.statusCode, 200);
      const r1 = await api2.app.inject({ method: 'GET', url: '/readyz' });
      assert.equal(r1.statusCode, 200, r1.body);
      await other.stop();
      const r2 = await api2.app.inject({ method: 'GET', url: '/readyz' });
      assert.equal(r2.statusCode, 503, r2.body);
      assert.match(r2.json().reason, /redis/);
      const h2 = await api2.app.inject({ method: 'GET', url: '/healthz' });
      assert.equal(h2.statusCode, 200, 'the process is still up');
      const p = await api2.app.inject({
        method: 'POST',
        url: '/v1/pushes',
        headers: { ...AUTH, 'content-type': 'application/json' },
        payload: JSON.stringify(good()),
      });
      assert.equal(p.statusCode, 503, p.body);
      assert.equal(p.json().error.code, 'FERRY_UNAVAILABLE');
    } finally {
      await api2.close();
      await other.stop();
    }
  });

  it('/metrics shows cluster counters, pushes by status and queue depths', async () => {
    const { id } = (await post(good())).json();
    await api.store.metrics.inc('ferry_blobs_total', { result: 'mounted' }, 2);
    await api.store.metrics.inc('ferry_bytes_uploaded_total', {}, 12345);
    await api.store.finish(id, { error: { code: 'FERRY_X', message: 'x' } });
    const noToken = await api.app.inject({ method: 'GET', url: '/metrics' });
    assert.equal(noToken.statusCode, 401);
    const res = await api.app.inject({ method: 'GET', url: '/metrics', headers: AUTH });
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /text\/plain/);
    assert.match(res.body, /^ferry_pushes_total\{status="failed"\} 1$/m);
    assert.match(res.body, /^ferry_blobs_total\{result="mounted"\} 2$/m);
    assert.match(res.body, /^ferry_bytes_uploaded_total 12345$/m);
    assert.match(res.body, /^ferry_push_duration_seconds_count 1$/m);
    assert.match(res.body, /^# TYPE ferry_pushes_total counter$/m);
    assert.match(res.body, /^# TYPE ferry_push_duration_seconds histogram$/m);
    assert.match(res.body, /^ferry_pushes\{status="failed"\} 1$/m);
    assert.match(res.body, /^ferry_queue_jobs\{queue="lookup",state="waiting"\} 2$/m);
  });

  it('signing routes serve what SigningStore holds (404 without it); /sigstore needs no token and refuses malformed paths', async () => {
    const signing = new SigningStore(api.conn, { prefix: api.config.queuePrefix });
    await api.app.listen({ host: '127.0.0.1', port: 0 });
    const port = (api.app.server.address() as AddressInfo).port;
    /** A GET with the path exactly as written (fetch and inject would resolve `..` first). */
    const raw = (path: string, method = 'GET') =>
      new Promise<{ status: number; type: string; body: Buffer }>((done, fail) => {
        const req = httpRequest({ host: '127.0.0.1', port, path, method }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (d: Buffer) => chunks.push(d));
          res.on('end', () =>
            done({
              status: res.statusCode ?? 0,
              type: String(res.headers['content-type']),
              body: Buffer.concat(chunks),
            }),
          );
        });
        req.on('error', fail);
        req.end(method === 'GET' ? undefined : 'x');
      });
    const hex = 'ab'.repeat(32);
    const sigPath = `/sigstore/team/app@sha256=${hex}/signature-1`;

    // nothing published yet: 404, the key routes still need a token
    const a = await api.app.inject({ method: 'GET', url: '/v1/signing/public-key', headers: AUTH });
    assert.equal(a.statusCode, 404);
    assert.equal(a.json().error.code, 'FERRY_NOT_CONFIGURED');
    const b = await api.app.inject({ method: 'GET', url: '/v1/signing/pgp-key', headers: AUTH });
    assert.equal(b.statusCode, 404);
    assert.equal(b.json().error.code, 'FERRY_NOT_CONFIGURED');
    for (const url of ['/v1/signing/public-key', '/v1/signing/pgp-key']) {
      assert.equal((await api.app.inject({ method: 'GET', url })).statusCode, 401, url);
    }
    const c = await raw(sigPath);
    assert.equal(c.status, 404, c.body.toString());
    assert.equal(JSON.parse(c.body.toString()).error.code, 'FERRY_NOT_FOUND');

    // published (as a coordinator does): served as published
    const pem = generateKeyPairSync('ec', { namedCurve: 'P-256' })
      .publicKey.export({ type: 'spki', format: 'pem' })
      .toString();
    const armored =
      '-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxjMEZ\n-----END PGP PUBLIC KEY BLOCK-----\n';
    assert.deepEqual(await signing.publishKey('cosign', { key: pem, fingerprint: 'sha256:c0' }), {
      ok: true,
    });
    await signing.publishKey('pgp', { key: armored, fingerprint: 'PGPFPR' });
    const k = await api.app.inject({ method: 'GET', url: '/v1/signing/public-key', headers: AUTH });
    assert.equal(k.statusCode, 200, k.body);
    assert.equal(k.headers['content-type'], 'application/x-pem-file');
    assert.equal(k.headers['x-ferry-key-fingerprint'], 'sha256:c0');
    assert.equal(k.body, pem);
    const g = await api.app.inject({ method: 'GET', url: '/v1/signing/pgp-key', headers: AUTH });
    assert.equal(g.statusCode, 200, g.body);
    assert.equal(g.headers['content-type'], 'application/pgp-keys');
    assert.equal(g.body, armored);

    // a lookaside signature: binary, byte for byte, with no token although tokens are configured
    const sig = Buffer.from([0xa3, 0x01, 0x00, 0xff, 0x89, 0x0d, 0x0a, 0x1a]);
    assert.equal(await signing.addLookaside('team/app', `sha256:${hex}`, sig), 1);
    const s1 = await raw(sigPath);
    assert.equal(s1.status, 200, s1.body.toString());
    assert.equal(s1.type, 'application/octet-stream');
    assert.deepEqual(s1.body, sig);
    // also over HTTP as containers/image asks, a nested repository path and a query string
    await signing.addLookaside('org/team/app', `sha256:${hex}`, sig);
    const nested = await raw(`/sigstore/org/team/app@sha256=${hex}/signature-1?x=1`);
    assert.equal(nested.status, 200, nested.body.toString());
    assert.deepEqual(nested.body, sig);
    // what is not there: another n, another repository, another digest
    for (const url of [
      `/sigstore/team/app@sha256=${hex}/signature-2`,
      `/sigstore/team/other@sha256=${hex}/signature-1`,
      `/sigstore/team/app@sha256=${'cd'.repeat(32)}/signature-1`,
    ]) {
      const r = await raw(url);
      assert.equal(r.status, 404, url);
      assert.equal(JSON.parse(r.body.toString()).error.code, 'FERRY_NOT_FOUND', url);
    }
    // malformed: 400, never a read outside the layout
    for (const tail of [
      `team/../app@sha256=${hex}/signature-1`,
      `../team/app@sha256=${hex}/signature-1`,
      `team/%2e%2e/app@sha256=${hex}/signature-1`,
      `team/./app@sha256=${hex}/signature-1`,
      `team//app@sha256=${hex}/signature-1`,
      `/team/app@sha256=${hex}/signature-1`,
      `team/app/@sha256=${hex}/signature-1`,
      `Team/App@sha256=${hex}/signature-1`,
      `team/app@sha256=${hex.toUpperCase()}/signature-1`,
      `team/app@sha256=${hex.slice(2)}/signature-1`,
      `team/app@sha512=${hex}${hex}/signature-1`,
      `team/app@sha256:${hex}/signature-1`,
      `team/app@sha256=${hex}/signature-0`,
      `team/app@sha256=${hex}/signature-65`,
      `team/app@sha256=${hex}/signature-01`,
      `team/app@sha256=${hex}/signature-1/x`,
      `team/app@sha256=${hex}/signature-1%00`,
      `team/app@sha256=${hex}`,
      '',
    ]) {
      const r = await raw(`/sigstore/${tail}`);
      assert.equal(r.status, 400, `${tail}: ${r.body.toString()}`);
      assert.equal(JSON.parse(r.body.toString()).error.code, 'FERRY_VALIDATION', tail);
    }
    // an undecodable path: fastify itself answers 400 (FST_ERR_BAD_URL) before any route
    assert.equal((await raw(`/sigstore/team/app@sha256=${hex}/signature-1%`)).status, 400);
    const long = await raw('/sigstore/' + 'a/'.repeat(130) + `x@sha256=${hex}/signature-1`);
    assert.equal(long.status, 400, 'a repository path over 255 characters');
    // read-only
    for (const method of ['PUT', 'POST', 'DELETE'] as const) {
      const r = await raw(sigPath, method);
      assert.ok(r.status >= 400 && r.status < 500, `${method}: ${r.status}`);
    }
    assert.deepEqual(await signing.getLookaside('team/app', `sha256:${hex}`, 1), sig);
  });

  it('with no tokens configured every route is open', async () => {
    const open = await makeApi(redis.url, src.root, { FERRY_API_TOKENS: '' });
    try {
      const res = await open.app.inject({
        method: 'POST',
        url: '/v1/pushes',
        headers: { 'content-type': 'application/json' },
        payload: JSON.stringify(good()),
      });
      assert.equal(res.statusCode, 202, res.body);
      const board = await open.app.inject({ method: 'GET', url: '/admin/queues/api/queues' });
      assert.equal(board.statusCode, 200);
    } finally {
      await open.close();
    }
  });
});
