import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import SwaggerParser from '@apidevtools/swagger-parser';
import Ajv2020 from 'ajv/dist/2020';
import { SigningStore } from '@ferry/queue';
import { startRedis, type RedisHandle } from '../../../test/helpers/redis';
import { makeApi, makeSourceRoot, type TestApi } from './helpers';

/*
 * /openapi.json is checked by a kept validator (@apidevtools/swagger-parser,
 * OpenAPI 3.1), and every response code it documents for a protected route is
 * produced by the running server, its JSON body checked against the
 * documented schema (ajv, draft 2020-12 as OpenAPI 3.1 uses).
 */

const PUSH = 'secret-token-1';
const PEM = '-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n';
const ARMORED =
  '-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxjME\n-----END PGP PUBLIC KEY BLOCK-----\n';
const ADMIN = 'admin-token-for-openapi';

type Op = {
  security?: Record<string, string[]>[];
  responses: Record<
    string,
    { content?: Record<string, { schema?: unknown }>; headers?: Record<string, unknown> }
  >;
};

describe('OpenAPI document: valid, and every documented code of a protected route is what the server answers', function () {
  let redis: RedisHandle;
  let api: TestApi;
  let base: string;
  let src: { root: string; app: string };
  let doc: { paths: Record<string, Record<string, Op>>; components: Record<string, unknown> };

  before(async () => {
    redis = await startRedis();
    src = makeSourceRoot();
    api = await makeApi(redis.url, src.root, { FERRY_ADMIN_TOKENS: ADMIN });
    await api.app.listen({ host: '127.0.0.1', port: 0 });
    base = `http://127.0.0.1:${(api.app.server.address() as AddressInfo).port}`;
    const res = await fetch(`${base}/openapi.json`, { headers: bearer(PUSH) });
    assert.equal(res.status, 200);
    doc = (await res.json()) as typeof doc;
  });
  after(async () => {
    await api?.close();
    await redis?.stop();
  });

  function bearer(token: string): Record<string, string> {
    return { authorization: `Bearer ${token}` };
  }

  async function newPush(): Promise<string> {
    const r = await fetch(`${base}/v1/pushes`, {
      method: 'POST',
      headers: { ...bearer(PUSH), 'content-type': 'application/json' },
      body: JSON.stringify({ source: `dir:${src.app}`, target: '127.0.0.1:59999/team/app:1' }),
    });
    assert.equal(r.status, 202, await r.clone().text());
    return ((await r.json()) as { id: string }).id;
  }

  const postPush = (body: unknown) =>
    fetch(`${base}/v1/pushes`, {
      method: 'POST',
      headers: { ...bearer(PUSH), 'content-type': 'application/json' },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
  const get = (path: string, headers: Record<string, string> = bearer(PUSH)) =>
    fetch(base + path, { headers, redirect: 'manual' });
  const put = (path: string, token: string) =>
    fetch(base + path, { method: 'PUT', headers: bearer(token) });
  const del = (path: string) => fetch(base + path, { method: 'DELETE', headers: bearer(PUSH) });
  const good = () => ({ source: `dir:${src.app}`, target: '127.0.0.1:59999/team/app:1' });
  const signing = () => new SigningStore(api.conn, { prefix: api.config.queuePrefix });
  /** Forgets the published keys (as on a cluster where no coordinator with a key has started). */
  const unpublish = async () => {
    const keys = await api.conn.keys(`${api.config.queuePrefix}:signing:key:*`);
    if (keys.length) await api.conn.del(...keys);
  };

  /** How to get each documented code (besides 401, checked for every protected operation alike). */
  const recipes: Record<string, Record<string, () => Promise<Response>>> = {
    'post /v1/pushes': {
      '202': () => postPush(good()),
      '400': () => postPush({ ...good(), tags: 'latest' }),
      '403': () => postPush({ ...good(), target: 'registry.not-allowed.example/team/app:1' }),
      '413': () => postPush({ ...good(), tags: Array(20_000).fill('latest-tag') }),
      '422': () => postPush({ ...good(), source: `dir:${src.root}/no-such-image` }),
    },
    'get /v1/pushes': {
      '200': () => get('/v1/pushes?limit=5'),
      '400': () => get('/v1/pushes?limit=0'),
    },
    'get /v1/pushes/{id}': {
      '200': async () => get(`/v1/pushes/${await newPush()}`),
      '404': () => get('/v1/pushes/no-such-push'),
    },
    'get /v1/pushes/{id}/events': {
      '200': async () => {
        const id = await newPush();
        await del(`/v1/pushes/${id}`); // a finished push: the stream ends after its final status
        return get(`/v1/pushes/${id}/events`);
      },
      '400': async () => get(`/v1/pushes/${await newPush()}/events?lastEventId=not-an-id`),
      '404': () => get('/v1/pushes/no-such-push/events'),
    },
    'delete /v1/pushes/{id}': {
      '200': async () => del(`/v1/pushes/${await newPush()}`),
      '404': () => del('/v1/pushes/no-such-push'),
      '409': async () => {
        const id = await newPush();
        await api.store.finish(id, { error: { code: 'FERRY_X', message: 'failed for the test' } });
        return del(`/v1/pushes/${id}`);
      },
    },
    'get /v1/signing/public-key': {
      '200': async () => {
        await signing().publishKey('cosign', { key: PEM, fingerprint: 'sha256:00' });
        return get('/v1/signing/public-key');
      },
      '404': async () => {
        await unpublish();
        return get('/v1/signing/public-key');
      },
    },
    'get /v1/signing/pgp-key': {
      '200': async () => {
        await signing().publishKey('pgp', { key: ARMORED, fingerprint: 'F00' });
        return get('/v1/signing/pgp-key');
      },
      '404': async () => {
        await unpublish();
        return get('/v1/signing/pgp-key');
      },
    },
    'get /metrics': { '200': () => get('/metrics') },
    'get /openapi.json': { '200': () => get('/openapi.json') },
    'get /admin/queues': {
      '200': () => get('/admin/queues', { ...bearer(PUSH), accept: 'text/html' }),
      '303': () => get('/admin/queues', { accept: 'text/html,application/xhtml+xml' }),
    },
    'get /admin/queues/api/queues': { '200': () => get('/admin/queues/api/queues') },
    'put /admin/queues/api/queues/{queueName}/pause': {
      '200': () => put('/admin/queues/api/queues/lookup/pause', ADMIN),
      '403': () => put('/admin/queues/api/queues/lookup/pause', PUSH),
      '404': () => put('/admin/queues/api/queues/no-such-queue/pause', ADMIN),
    },
    'put /admin/queues/api/queues/{queueName}/resume': {
      '200': () => put('/admin/queues/api/queues/lookup/resume', ADMIN),
      '403': () => put('/admin/queues/api/queues/lookup/resume', PUSH),
      '404': () => put('/admin/queues/api/queues/no-such-queue/resume', ADMIN),
    },
  };

  /** The path of an operation with its parameters filled, for the 401 checks. */
  function concrete(path: string): string {
    return path
      .replace('{id}', 'some-push')
      .replace('{queueName}', 'lookup')
      .replace('{path}', 'x');
  }

  it('is valid OpenAPI 3.1 (swagger-parser) with the bearer scheme declared', async () => {
    await SwaggerParser.validate(structuredClone(doc) as never);
    // the validator is not a rubber stamp: a response without its description is refused
    const broken = structuredClone(doc);
    delete (broken.paths['/metrics']!.get!.responses['200'] as { description?: string })
      .description;
    await assert.rejects(SwaggerParser.validate(broken as never));
    const schemes = doc.components.securitySchemes as Record<string, Record<string, string>>;
    assert.deepEqual(
      { type: schemes.bearer?.type, scheme: schemes.bearer?.scheme },
      { type: 'http', scheme: 'bearer' },
    );
    assert.deepEqual(
      { type: schemes.session?.type, in: schemes.session?.in, name: schemes.session?.name },
      { type: 'apiKey', in: 'cookie', name: 'ferry_session' },
    );
  });

  it('applies the bearer scheme where tokens are enforced, and documents 401 there (403 where scopes apply)', () => {
    const publicOps = ['get /healthz', 'get /readyz', 'get /sigstore/{path}', 'get /admin/login'];
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const key = `${method} ${path}`;
        if (publicOps.includes(key) || key === 'post /admin/login') {
          assert.deepEqual(op.security, [], `${key} needs no token`);
          assert.ok(!op.responses['401'] || key === 'post /admin/login', key);
          continue;
        }
        assert.ok(
          op.security?.some((s) => 'bearer' in s),
          `${key} lists the bearer scheme`,
        );
        assert.ok(op.responses['401'], `${key} documents 401`);
        assert.deepEqual(Object.keys(op.responses['401'].headers ?? {}), ['WWW-Authenticate']);
      }
    }
    for (const key of publicOps) {
      const [method, path] = key.split(' ');
      assert.ok(doc.paths[path!]?.[method!], `${key} is documented`);
    }
    assert.ok(doc.paths['/v1/pushes']!.post!.responses['403'], 'a token’s target patterns');
    assert.deepEqual(doc.paths['/admin/queues']!.get!.security, [{ bearer: [] }, { session: [] }]);
    assert.ok(doc.paths['/admin/queues/api/queues/{queueName}/pause']!.put!.responses['403']);
  });

  it('every documented code of every protected operation is what the running server answers', async () => {
    const deref = (await SwaggerParser.dereference(
      structuredClone(doc) as never,
    )) as unknown as typeof doc;
    const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
    const checked: string[] = [];
    for (const [path, ops] of Object.entries(deref.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        if (!op.security?.length) continue;
        const key = `${method} ${path}`;
        const recipe = recipes[key] ?? {};
        for (const [code, response] of Object.entries(op.responses)) {
          let res: Response;
          if (code === '401') {
            // No token, then a wrong one: an API client gets JSON 401 with the challenge.
            for (const headers of [{}, bearer('not-a-token')]) {
              res = await fetch(base + concrete(path), {
                method: method.toUpperCase(),
                headers: { accept: 'application/json', ...headers },
                redirect: 'manual',
              });
              assert.equal(res.status, 401, `${key}: ${await res.clone().text()}`);
              assert.equal(res.headers.get('www-authenticate'), 'Bearer realm="ferry"', key);
              const body = await res.json();
              const schema = response.content?.['application/json']?.schema;
              assert.ok(schema, `${key} 401 documents its JSON body`);
              assert.ok(ajv.validate(schema as object, body), `${key} 401: ${ajv.errorsText()}`);
            }
            checked.push(`${key} 401`);
            continue;
          }
          const make = recipe[code];
          assert.ok(make, `no check for documented ${key} ${code}: add one to the table`);
          res = await make();
          const text = await res.text();
          assert.equal(res.status, Number(code), `${key} ${code}: ${text.slice(0, 300)}`);
          for (const h of Object.keys(response.headers ?? {})) {
            assert.ok(res.headers.get(h), `${key} ${code} sends ${h}`);
          }
          const type = (res.headers.get('content-type') ?? '').split(';')[0]!.trim();
          const documented = response.content ? Object.keys(response.content) : [];
          if (documented.length) {
            assert.ok(documented.includes(type), `${key} ${code}: ${type} not in ${documented}`);
          }
          const schema = response.content?.['application/json']?.schema;
          if (type === 'application/json' && schema) {
            assert.ok(
              ajv.validate(schema as object, JSON.parse(text)),
              `${key} ${code}: ${ajv.errorsText()}: ${text.slice(0, 300)}`,
            );
          }
          checked.push(`${key} ${code}`);
        }
        for (const code of Object.keys(recipe)) {
          assert.ok(op.responses[code], `${key} answers ${code} but the document does not list it`);
        }
      }
    }
    assert.ok(checked.length >= 40, `checked ${checked.length}: ${checked.join(', ')}`);
    assert.equal(await api.queues.lookup.isPaused(), false, 'resumed again');
  });
});
