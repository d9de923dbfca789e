import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { FerryConfig } from '@ferry/config';
import type { Logger } from '@ferry/log';
import { SigningStore, type FerryQueues, type PushStore, type RedisConnection } from '@ferry/queue';
import { offerOpenedSource } from '@ferry/runtime';
import { Auth, type Principal } from './auth';
import { registerBoard } from './board';
import { ApiError } from './errors';
import { installJsonParser } from './json-body';
import { makeInspector, type Inspector } from './inspect';
import { pushRoutes } from './routes-pushes';
import { serviceRoutes } from './routes-service';
import { routeDoc, type RouteDoc } from './schemas';

export interface ApiDeps {
  config: FerryConfig;
  /** A 'producer' connection (fails fast when Redis is gone): one node, Sentinel's master or a Cluster. */
  redis: RedisConnection;
  queues: FerryQueues;
  store: PushStore;
  logger: Logger;
  /** Source / target checks; defaults to @ferry/image-source and @ferry/registry-client. */
  inspector?: Inspector;
  /** SSE: how long one blocking read waits before a keep-alive comment. Default 15 s. */
  sseKeepAliveMs?: number;
  version?: string;
  /** POST /admin/login tries per client address per minute. Default 10. */
  loginLimit?: number;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Who asked: set by the auth hook (the token's or session's name and scope). */
    principal?: Principal;
  }
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

/** The REST API, SSE, Bull Board, health and metrics — on the given connection, queues and store. */
export function buildApi(deps: ApiDeps): FastifyInstance {
  const { config, store, queues, logger } = deps;
  // In `ferry serve` the workers of this process take the API's opening of a pinned source.
  const inspector =
    deps.inspector ?? makeInspector((ref, opened) => offerOpenedSource(config, ref, opened));
  const auth = new Auth(config.tokens);
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
  installErrorHandling(app, logger);
  installJsonParser(app);
  installAuth(app, auth, logger);
  const route = routeAdder(app);
  const signing = new SigningStore(deps.redis, { prefix: config.queuePrefix });
  pushRoutes(route, { config, store, queues, inspector, logger, keepAliveMs, streams, signing });
  serviceRoutes(route, deps, auth);
  registerBoard(app, auth, queues, { loginLimit: deps.loginLimit });

  app.addHook('preClose', async () => {
    for (const stop of [...streams]) stop();
  });
  if (auth.open)
    logger.warn(
      'api: FERRY_API_TOKENS and FERRY_ADMIN_TOKENS are empty — every route is open to anyone who can reach it',
    );
  return app;
}

/** Every error answered in one shape, with its status from the one code → status table. */
function installErrorHandling(app: FastifyInstance, logger: Logger): void {
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
}

const READ_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

function isBoardPath(path: string): boolean {
  return path === '/admin/queues' || path.startsWith('/admin/queues/');
}

/**
 * Bearer tokens on every route but the public ones; Bull Board also takes the
 * session cookie. The principal (token name and scope) is kept on the request;
 * Bull Board's writes (anything but GET/HEAD under /admin/queues) need an admin
 * token or an admin's session, and a push token sees every queue read-only.
 */
function installAuth(app: FastifyInstance, auth: Auth, logger: Logger): void {
  app.decorateRequest('principal', undefined);
  app.addHook('onRequest', async (req, reply) => {
    const path = pathOf(req.url);
    if (PUBLIC_PATHS.has(path) || path.startsWith('/sigstore/')) return;
    if (path === '/admin/login') return;
    const board = isBoardPath(path);
    const principal =
      auth.identify(Auth.bearer(req.headers.authorization)) ??
      (board ? auth.sessionPrincipal(req.headers.cookie) : undefined);
    if (principal) {
      req.principal = principal;
      if (board && !principal.admin && !READ_METHODS.has(req.method)) {
        const e = new ApiError(
          'FERRY_FORBIDDEN',
          `token ${principal.name ?? ''} may only read Bull Board; pausing, cleaning and retrying need a token from FERRY_ADMIN_TOKENS`,
        );
        return reply.code(e.status).send(e.toBody());
      }
      return;
    }
    if (board && req.method === 'GET' && (req.headers.accept ?? '').includes('text/html')) {
      return reply.redirect('/admin/login', 303);
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

  // Bull Board's UI hides its write buttons for a queue in readOnlyMode: a push token's view says so.
  app.addHook('onSend', async (req, _reply, payload) => {
    if (req.principal?.admin !== false || req.method !== 'GET') return payload;
    if (pathOf(req.url) !== '/admin/queues/api/queues' || typeof payload !== 'string')
      return payload;
    try {
      const body = JSON.parse(payload) as { queues?: Record<string, unknown>[] };
      for (const q of body.queues ?? []) {
        q.readOnlyMode = true;
        q.allowRetries = false;
        q.allowCompletedRetries = false;
      }
      return JSON.stringify(body);
    } catch {
      return payload;
    }
  });

  app.addHook('onResponse', async (req, reply) => {
    logger.log('http', `${req.method} ${pathOf(req.url)} ${reply.statusCode}`, {
      ms: Math.round(reply.elapsedTime),
    });
  });
}

export type AddRoute = (
  method: RouteDoc['method'],
  url: string,
  handler: (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>,
) => void;

/** Adds a route with the schema its OpenAPI entry documents. */
function routeAdder(app: FastifyInstance): AddRoute {
  return (method, url, handler) => {
    const doc = routeDoc(method, url);
    app.route({ method, url, schema: doc.schema, handler });
  };
}
