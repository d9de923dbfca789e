import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import type { Redis } from 'ioredis';
import type { FerryConfig } from '@ferry/config';
import type { Logger } from '@ferry/log';
import {
  removePushJobs,
  type FerryQueues,
  type PushLayout,
  type PushState,
  type PushStatus,
  type PushStore,
} from '@ferry/queue';
import { Auth, loginPage } from './auth';
import { ApiError } from './errors';
import { defaultInspector, type Inspector } from './inspect';
import { checkIdempotencyKey, createPush, type PushBody } from './pushes';
import { lastEventIdOf, streamEvents } from './sse';
import { createMetricsRegistry } from './metrics';
import { buildOpenApi } from './openapi';
import { routeDoc, type RouteDoc } from './schemas';

export interface ApiDeps {
  config: FerryConfig;
  /** A 'producer' connection (fails fast when Redis is gone). */
  redis: Redis;
  queues: FerryQueues;
  store: PushStore;
  logger: Logger;
  /** Source / target checks; defaults to @ferry/image-source and @ferry/registry-client. */
  inspector?: Inspector;
  /** SSE: how long one blocking read waits before a keep-alive comment. Default 15 s. */
  sseKeepAliveMs?: number;
  version?: string;
}

export const BODY_LIMIT = 64 * 1024;

const PUBLIC_PATHS = new Set(['/healthz', '/readyz']);

function pathOf(url: string): string {
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}

/** "tags/0" → "tags[0]"; the field a validation error names. */
function fieldOf(v: {
  instancePath?: string;
  keyword?: string;
  params?: Record<string, unknown>;
}): string {
  const parts = (v.instancePath ?? '').split('/').filter(Boolean);
  if (v.keyword === 'required' && typeof v.params?.missingProperty === 'string')
    parts.push(v.params.missingProperty);
  if (v.keyword === 'additionalProperties' && typeof v.params?.additionalProperty === 'string') {
    parts.push(v.params.additionalProperty);
  }
  return parts.reduce((acc, p) => (/^\d+$/.test(p) ? `${acc}[${p}]` : acc ? `${acc}.${p}` : p), '');
}

function validationError(
  err: {
    validation?: {
      instancePath?: string;
      keyword?: string;
      params?: Record<string, unknown>;
      message?: string;
    }[];
  },
  context: string | undefined,
): ApiError {
  const v = err.validation?.[0] ?? {};
  const field = fieldOf(v);
  const where = context && context !== 'body' ? `${context} ` : '';
  let message: string;
  if (v.keyword === 'additionalProperties')
    message = `unknown ${where}field ${JSON.stringify(field)}`;
  else if (v.keyword === 'required') message = `${where}field ${JSON.stringify(field)} is required`;
  else if (!field) message = `${context ?? 'request'} ${v.message ?? 'is invalid'}`;
  else message = `${where}${field} ${v.message ?? 'is invalid'}`;
  return new ApiError('FERRY_VALIDATION', message, field || context);
}

function isRedisDown(err: unknown): boolean {
  const m = (err as Error)?.message ?? '';
  return (
    /Stream isn't writeable|Connection is closed|enableOfflineQueue|ECONNREFUSED|ECONNRESET|max retries per request/i.test(
      m,
    ) || (err as { name?: string })?.name === 'MaxRetriesPerRequestError'
  );
}

function links(id: string) {
  return { self: `/v1/pushes/${id}`, events: `/v1/pushes/${id}/events` };
}

function layoutOf(state: PushState): PushLayout {
  const images: { layers: number }[] = [];
  for (const l of state.layers) {
    images[l.imageIndex] = { layers: Math.max(images[l.imageIndex]?.layers ?? 0, l.index + 1) };
  }
  return { images: Array.from(images, (i) => i ?? { layers: 0 }) };
}

function publicState(state: PushState) {
  const { request: _request, ...rest } = state;
  return { ...rest, links: links(state.id) };
}

/** The REST API, SSE, Bull Board, health and metrics — on the given connection, queues and store. */
export function buildApi(deps: ApiDeps): FastifyInstance {
  const { config, store, queues, logger } = deps;
  const inspector = deps.inspector ?? defaultInspector;
  const auth = new Auth(config.apiTokens);
  const keepAliveMs = deps.sseKeepAliveMs ?? 15_000;
  const app = Fastify({
    logger: false,
    bodyLimit: BODY_LIMIT,
    return503OnClosing: true,
    ajv: {
      customOptions: {
        removeAdditional: false,
        coerceTypes: false,
        useDefaults: false,
        allErrors: false,
      },
    },
  });
  const streams = new Set<() => void>();

  // ---- errors: one shape, one code → status table ----
  app.setErrorHandler(
    (
      err: Error & {
        code?: string;
        statusCode?: number;
        validation?: never;
        validationContext?: string;
      },
      req,
      reply,
    ) => {
      let e: ApiError;
      if (err instanceof ApiError) e = err;
      else if (err.validation) e = validationError(err, err.validationContext);
      else if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE')
        e = new ApiError('FERRY_BODY_TOO_LARGE', `the body is larger than ${BODY_LIMIT} bytes`);
      else if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE')
        e = new ApiError('FERRY_UNSUPPORTED_MEDIA_TYPE', 'send the body as application/json');
      else if (
        err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' ||
        err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' ||
        err instanceof SyntaxError
      ) {
        e = new ApiError('FERRY_BAD_JSON', `the body is not valid JSON: ${err.message}`);
      } else if (isRedisDown(err))
        e = new ApiError('FERRY_UNAVAILABLE', 'the queue store (Redis) is unreachable; try again');
      else if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500)
        e = new ApiError('FERRY_VALIDATION', err.message);
      else {
        logger.error('api: request failed', { method: req.method, url: pathOf(req.url), err });
        e = new ApiError('FERRY_INTERNAL', 'internal error');
      }
      if (e.code === 'FERRY_UNAUTHORIZED') reply.header('www-authenticate', 'Bearer realm="ferry"');
      void reply.code(e.status).send(e.toBody());
    },
  );
  app.setNotFoundHandler((req, reply) => {
    void reply
      .code(404)
      .send(new ApiError('FERRY_NOT_FOUND', `no route ${req.method} ${pathOf(req.url)}`).toBody());
  });

  // ---- auth ----
  app.addHook('onRequest', async (req, reply) => {
    const path = pathOf(req.url);
    if (PUBLIC_PATHS.has(path) || path.startsWith('/sigstore/')) return;
    if (path === '/admin/login') return;
    if (auth.checkToken(Auth.bearer(req.headers.authorization))) return;
    if (path === '/admin/queues' || path.startsWith('/admin/queues/')) {
      if (auth.checkSession(req.headers.cookie)) return;
      if (req.method === 'GET' && (req.headers.accept ?? '').includes('text/html')) {
        return reply.redirect('/admin/login', 303);
      }
    }
    // Answered here rather than thrown: Bull Board's routes have an error handler of their own.
    const e = new ApiError(
      'FERRY_UNAUTHORIZED',
      req.headers.authorization
        ? 'the bearer token is not valid'
        : 'a bearer token is required (Authorization: Bearer …)',
    );
    return reply.code(e.status).header('www-authenticate', 'Bearer realm="ferry"').send(e.toBody());
  });

  app.addHook('onResponse', async (req, reply) => {
    logger.log('http', `${req.method} ${pathOf(req.url)} ${reply.statusCode}`, {
      ms: Math.round(reply.elapsedTime),
    });
  });

  const route = (
    method: RouteDoc['method'],
    url: string,
    handler: (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>,
  ) => {
    const doc = routeDoc(method, url);
    app.route({ method, url, schema: doc.schema, handler });
  };

  // ---- pushes ----
  route('POST', '/v1/pushes', async (req, reply) => {
    const key = checkIdempotencyKey(req.headers['idempotency-key']);
    const r = await createPush(
      { config, store, queues, inspector, logger },
      req.body as PushBody,
      key,
    );
    reply.code(202).header('location', links(r.id).self);
    if (r.replayed) reply.header('idempotent-replayed', 'true');
    return reply.send({ id: r.id, status: r.status, links: links(r.id) });
  });

  route('GET', '/v1/pushes', async (req) => {
    const q = req.query as { status?: PushStatus; limit?: string };
    const list = await store.list({ status: q.status, limit: q.limit ? Number(q.limit) : 50 });
    return { pushes: list.map((p) => ({ ...p, links: links(p.id) })) };
  });

  route('GET', '/v1/pushes/:id', async (req) => {
    const { id } = req.params as { id: string };
    const state = await store.get(id);
    if (!state) throw new ApiError('FERRY_PUSH_NOT_FOUND', `no push ${id}`, 'id');
    return publicState(state);
  });

  route('DELETE', '/v1/pushes/:id', async (req) => {
    const { id } = req.params as { id: string };
    const state = await store.get(id);
    if (!state) throw new ApiError('FERRY_PUSH_NOT_FOUND', `no push ${id}`, 'id');
    if (state.status === 'cancelled') return { id, status: 'cancelled', links: links(id) };
    const r = await store.cancel(id);
    if (!r.ok) {
      throw new ApiError(
        'FERRY_PUSH_FINISHED',
        `push ${id} has ${r.previous ?? state.status} already`,
        'id',
      );
    }
    const removed = await removePushJobs(queues, id, layoutOf(state));
    // Layers not in the registry yet will never be: say so (an upload still running
    // stops within a few seconds, cancels its registry session and says so too).
    for (const l of state.layers) {
      if (l.state === 'pending' || l.state === 'uploading') {
        await store.updateLayer(
          id,
          { imageIndex: l.imageIndex, index: l.index },
          { state: 'cancelled' },
        );
      }
    }
    logger.info('push cancelled', { id, removedJobs: removed });
    return { id, status: 'cancelled', removedJobs: removed, links: links(id) };
  });

  route('GET', '/v1/pushes/:id/events', async (req, reply) => {
    const { id } = req.params as { id: string };
    const last = lastEventIdOf(req.headers['last-event-id'], req.query as { lastEventId?: string });
    const status = await store.status(id);
    if (!status) throw new ApiError('FERRY_PUSH_NOT_FOUND', `no push ${id}`, 'id');
    reply.hijack();
    await streamEvents({ store, logger, keepAliveMs, streams }, id, last, req.raw, reply.raw);
  });

  // ---- signing (a later issue) ----
  const notConfigured = (what: string) => async () => {
    throw new ApiError('FERRY_NOT_CONFIGURED', `${what} is not configured on this server`);
  };
  route('GET', '/v1/signing/public-key', notConfigured('a cosign signing key'));
  route('GET', '/v1/signing/pgp-key', notConfigured('an OpenPGP key'));
  route('GET', '/sigstore/*', notConfigured('OpenPGP lookaside signing'));

  // ---- health, metrics, docs ----
  route('GET', '/healthz', async () => ({ status: 'ok' }));
  route('GET', '/readyz', async (_req, reply) => {
    try {
      const pong = await Promise.race([
        deps.redis.ping(),
        new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error('PING timed out')), 1_000).unref(),
        ),
      ]);
      if (pong !== 'PONG') throw new Error(`PING answered ${pong}`);
      return { status: 'ready' };
    } catch (err) {
      return reply
        .code(503)
        .send({ status: 'not ready', reason: `redis: ${(err as Error).message}` });
    }
  });
  const metrics = createMetricsRegistry(store, queues);
  route('GET', '/metrics', async (_req, reply) => {
    const text = await metrics.metrics();
    return reply.header('content-type', metrics.contentType).send(text);
  });
  const openapi = buildOpenApi({ version: deps.version ?? '0.1.0', tokensRequired: !auth.open });
  route('GET', '/openapi.json', async () => openapi);

  // ---- Bull Board: bearer header, or the session cookie the login form sets ----
  app.register(async (scope) => {
    scope.addContentTypeParser(
      'application/x-www-form-urlencoded',
      { parseAs: 'string', bodyLimit: 4096 },
      (_req, body, done) => {
        done(null, Object.fromEntries(new URLSearchParams(body as string)));
      },
    );
    scope.get('/admin/login', async (_req, reply) => {
      if (auth.open) return reply.redirect('/admin/queues', 303);
      return reply.type('text/html; charset=utf-8').send(loginPage());
    });
    scope.post('/admin/login', async (req, reply) => {
      const token = (req.body as Record<string, unknown> | undefined)?.token;
      if (typeof token !== 'string' || !auth.checkToken(token) || auth.open) {
        if (auth.open) return reply.redirect('/admin/queues', 303);
        return reply
          .code(401)
          .type('text/html; charset=utf-8')
          .send(loginPage('That token is not valid.'));
      }
      const secure = req.protocol === 'https';
      return reply.header('set-cookie', auth.sessionCookie(secure)).redirect('/admin/queues', 303);
    });
    scope.post('/admin/logout', async (_req, reply) =>
      reply.header('set-cookie', Auth.clearCookie()).redirect('/admin/login', 303),
    );
  });
  const board = new FastifyAdapter();
  board.setBasePath('/admin/queues');
  createBullBoard({
    queues: [queues.lookup, queues.upload, queues.assemble].map(
      (q) => new BullMQAdapter(q as never),
    ),
    serverAdapter: board,
    options: { uiConfig: { boardTitle: 'Ferry' } },
  });
  app.register(board.registerPlugin() as never, { prefix: '/admin/queues' });

  app.addHook('preClose', async () => {
    for (const stop of [...streams]) stop();
  });
  if (auth.open)
    logger.warn('api: FERRY_API_TOKENS is empty — every route is open to anyone who can reach it');
  return app;
}
