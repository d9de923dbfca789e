/**
 * The JSON schemas of the REST interface, written once: fastify validates
 * requests with them (routes.ts registers ROUTE_SCHEMAS as they are) and
 * /openapi.json is generated from the very same objects (openapi.ts).
 */

export const TAG_PATTERN = '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$';
export const PLATFORM_PATTERN = '^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$';
export const PUSH_ID_PATTERN = '^[A-Za-z0-9_-]{1,100}$';

export const ErrorSchema = {
  $id: 'Error',
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: {
        code: { type: 'string', description: 'Stable FERRY_… code' },
        message: { type: 'string' },
        field: { type: 'string', description: 'The request field that was wrong' },
      },
    },
  },
} as const;

export const PushRequestSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['source'],
  properties: {
    source: {
      type: 'string',
      minLength: 1,
      maxLength: 4096,
      description:
        'oci:PATH[:REF], docker-archive:PATH[:REF] or dir:PATH (PATH inside the server’s source root), or docker://HOST[:PORT]/REPO[:TAG|@DIGEST] (copied registry to registry)',
      examples: ['oci:/srv/images/app:1.0'],
    },
    target: {
      type: 'string',
      minLength: 1,
      maxLength: 512,
      description:
        'A Docker reference HOST[:PORT]/REPO[:TAG] on an allowed registry (this or `targets` is required)',
      examples: ['registry.example.com/team/app:1.0'],
    },
    targets: {
      type: 'array',
      minItems: 1,
      maxItems: 16,
      uniqueItems: true,
      items: { type: 'string', minLength: 1, maxLength: 512 },
      description: 'Fan-out: several targets, pushed from one read of the source (after `target`)',
    },
    allTags: {
      type: 'boolean',
      description: 'docker:// source without a tag: copy every tag of the repository',
    },
    copySignatures: {
      type: 'boolean',
      description: 'docker:// source: copy its cosign signatures along (default true)',
    },
    tags: {
      type: 'array',
      maxItems: 100,
      uniqueItems: true,
      items: { type: 'string', pattern: TAG_PATTERN },
      description: 'Extra tags',
    },
    sign: {
      description: 'true: every configured key',
      anyOf: [
        { type: 'boolean' },
        {
          type: 'object',
          additionalProperties: false,
          properties: { cosign: { type: 'boolean' }, pgp: { type: 'boolean' } },
        },
      ],
    },
    schema1: { type: 'boolean' },
    format: { type: 'string', enum: ['oci', 'docker'] },
    platform: {
      type: 'string',
      pattern: PLATFORM_PATTERN,
      description: 'os/arch[/variant]: one image of an index',
    },
    dirOptions: {
      type: 'object',
      additionalProperties: false,
      description: 'dir: sources only — how layer tars record owners and mtimes',
      properties: {
        owners: {
          type: 'string',
          enum: ['root', 'keep'],
          description: "root (default): uid/gid 0; keep: each file's numeric uid/gid",
        },
        mtime: {
          description: "epoch (default): 0; keep: each file's mtime; an integer: that epoch second",
          anyOf: [
            { type: 'string', enum: ['epoch', 'keep'] },
            { type: 'integer', minimum: 0, maximum: 8589934591 },
          ],
        },
      },
    },
  },
} as const;

export const PushIdParamsSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['id'],
  properties: { id: { type: 'string', pattern: PUSH_ID_PATTERN } },
} as const;

export const ListQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    status: { type: 'string', enum: ['queued', 'running', 'succeeded', 'failed', 'cancelled'] },
    limit: {
      type: 'string',
      pattern: '^(?:[1-9][0-9]{0,2}|1000)$',
      description: '1-1000, default 50',
    },
  },
} as const;

export const EventsQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    lastEventId: { type: 'string', description: 'Like the Last-Event-ID header' },
  },
} as const;

const ManifestRefSchema = {
  type: 'object',
  properties: {
    digest: { type: 'string' },
    mediaType: { type: 'string' },
    size: { type: 'integer' },
    tag: { type: 'string' },
    platform: { type: 'string' },
  },
} as const;

export const PushStateSchema = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    status: { type: 'string', enum: ['queued', 'running', 'succeeded', 'failed', 'cancelled'] },
    requestedBy: { type: 'string', description: 'Name of the token that started the push' },
    source: { type: 'string' },
    target: { type: 'string' },
    targets: {
      type: 'array',
      description: 'Fan-out: how each target ended',
      items: {
        type: 'object',
        properties: {
          target: { type: 'string' },
          status: { type: 'string', enum: ['succeeded', 'failed'] },
          manifest: ManifestRefSchema,
          error: {
            type: 'object',
            properties: { code: { type: 'string' }, message: { type: 'string' } },
          },
        },
      },
    },
    tags: { type: 'array', items: { type: 'string' } },
    layers: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          index: { type: 'integer' },
          imageIndex: { type: 'integer' },
          digest: { type: 'string' },
          size: { type: 'integer' },
          state: {
            type: 'string',
            enum: ['pending', 'exists', 'mounted', 'uploading', 'uploaded', 'cancelled'],
          },
          bytesSent: { type: 'integer' },
          total: { type: 'integer', description: 'dir: layers: size of the uncompressed tar' },
          bytesRead: {
            type: 'integer',
            description: 'dir: layers: uncompressed bytes read so far',
          },
          mountedFrom: { type: 'string' },
        },
      },
    },
    manifest: ManifestRefSchema,
    manifests: { type: 'array', items: ManifestRefSchema },
    signatures: { type: 'array', items: { type: 'object' } },
    error: {
      type: 'object',
      properties: { code: { type: 'string' }, message: { type: 'string' } },
    },
    createdAt: { type: 'string', format: 'date-time' },
    startedAt: { type: 'string', format: 'date-time' },
    finishedAt: { type: 'string', format: 'date-time' },
    links: { type: 'object', properties: { self: { type: 'string' }, events: { type: 'string' } } },
  },
} as const;

export const PushAcceptedSchema = {
  type: 'object',
  required: ['id', 'status', 'links'],
  properties: {
    id: { type: 'string' },
    status: { type: 'string' },
    links: {
      type: 'object',
      properties: { self: { type: 'string' }, events: { type: 'string' } },
    },
  },
} as const;

type Json = unknown;

export const QueueNameParamsSchema = {
  type: 'object',
  required: ['queueName'],
  properties: { queueName: { type: 'string', enum: ['lookup', 'upload', 'assemble'] } },
} as const;

export interface RouteDoc {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** fastify syntax (:id); openapi.ts converts to {id}. */
  url: string;
  summary: string;
  /**
   * false: no bearer token needed. true: a bearer token from FERRY_API_TOKENS
   * or FERRY_ADMIN_TOKENS when any is set — /openapi.json then applies the
   * bearer scheme and documents 401 (openapi.ts adds it).
   */
  auth: boolean;
  /** Bull Board: the session cookie of the login form is taken as well as a bearer token. */
  session?: boolean;
  /** Only admin tokens (FERRY_ADMIN_TOKENS) may: a push token gets 403 (documented when tokens are set). */
  adminOnly?: boolean;
  /** Registered by Bull Board or the login scope, not by routeAdder (documentation only here). */
  external?: boolean;
  /** Fed to fastify as the route's validation schema, and to the OpenAPI document. */
  schema?: { body?: Json; params?: Json; querystring?: Json; headers?: Json };
  /** Documentation only (fastify does not serialise with them). */
  responses: Record<
    string,
    { description: string; content?: Record<string, Json>; headers?: Record<string, Json> }
  >;
  /** A non-JSON request body, documentation only (the login form). */
  form?: Json;
}

const json = (schema: Json) => ({ 'application/json': { schema } });
const err = (description: string) => ({
  description,
  content: json({ $ref: '#/components/schemas/Error' }),
});

/** Every route of the API, in one table: routes.ts registers handlers by `${method} ${url}`. */
export const ROUTES: RouteDoc[] = [
  {
    method: 'POST',
    url: '/v1/pushes',
    summary: 'Start a push (Idempotency-Key header: same key, same push)',
    auth: true,
    schema: { body: PushRequestSchema },
    responses: {
      '202': { description: 'Accepted and queued', content: json(PushAcceptedSchema) },
      '400': err('Malformed field'),
      '401': err('Missing or wrong token'),
      '403': err(
        "Source outside the root, registry not allowed, or a target outside the token's patterns (NAME=TOKEN@PATTERN)",
      ),
      '413': err('Body too large'),
      '422': err('Source or platform not found; Idempotency-Key reused with another body'),
    },
  },
  {
    method: 'GET',
    url: '/v1/pushes',
    summary: 'List pushes, newest first',
    auth: true,
    schema: { querystring: ListQuerySchema },
    responses: {
      '200': {
        description: 'Pushes',
        content: json({
          type: 'object',
          properties: { pushes: { type: 'array', items: PushStateSchema } },
        }),
      },
      '400': err('Bad status or limit'),
    },
  },
  {
    method: 'GET',
    url: '/v1/pushes/:id',
    summary: 'State of a push',
    auth: true,
    schema: { params: PushIdParamsSchema },
    responses: {
      '200': { description: 'The push', content: json(PushStateSchema) },
      '404': err('Unknown push'),
    },
  },
  {
    method: 'GET',
    url: '/v1/pushes/:id/events',
    summary:
      'Progress as Server-Sent Events; each event has an id, Last-Event-ID resumes after it; ends after the final status',
    auth: true,
    schema: { params: PushIdParamsSchema, querystring: EventsQuerySchema },
    responses: {
      '200': {
        description: 'text/event-stream',
        content: { 'text/event-stream': { schema: { type: 'string' } } },
      },
      '400': err('Bad Last-Event-ID'),
      '404': err('Unknown push'),
    },
  },
  {
    method: 'DELETE',
    url: '/v1/pushes/:id',
    summary: 'Cancel a push',
    auth: true,
    schema: { params: PushIdParamsSchema },
    responses: {
      '200': { description: 'Cancelled', content: json(PushAcceptedSchema) },
      '404': err('Unknown push'),
      '409': err('The push has finished already'),
    },
  },
  {
    method: 'GET',
    url: '/v1/signing/public-key',
    summary:
      'PEM (SPKI) of the cosign verification key the coordinators sign with, as they published it',
    auth: true,
    responses: {
      '200': {
        description:
          'The public key; X-Ferry-Key-Fingerprint is the fingerprint published with it (sha256:<hex> of its SPKI DER)',
        headers: { 'X-Ferry-Key-Fingerprint': { schema: { type: 'string' } } },
        content: { 'application/x-pem-file': { schema: { type: 'string' } } },
      },
      '404': err(
        'No cosign key published: no coordinator with FERRY_SIGNING_KEY has started (FERRY_NOT_CONFIGURED)',
      ),
    },
  },
  {
    method: 'GET',
    url: '/v1/signing/pgp-key',
    summary: 'Armored OpenPGP public key of the simple-signing (lookaside) signatures',
    auth: true,
    responses: {
      '200': {
        description:
          'The armored public key; X-Ferry-Key-Fingerprint is the fingerprint published with it',
        headers: { 'X-Ferry-Key-Fingerprint': { schema: { type: 'string' } } },
        content: { 'application/pgp-keys': { schema: { type: 'string' } } },
      },
      '404': err(
        'No OpenPGP key published: no coordinator with FERRY_PGP_KEY has started (FERRY_NOT_CONFIGURED)',
      ),
    },
  },
  {
    method: 'GET',
    url: '/sigstore/*',
    summary:
      'Lookaside OpenPGP signatures as containers/image reads them (registries.d `lookaside: <ferry>/sigstore`): /sigstore/{repository path, no host}@sha256={64 hex}/signature-{n}, n from 1 to 64; read-only, no token',
    auth: false,
    responses: {
      '200': {
        description: 'The binary OpenPGP signature',
        content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } },
      },
      '400': err('Not a lookaside path (FERRY_VALIDATION, field path)'),
      '404': err('No such signature (FERRY_NOT_FOUND)'),
    },
  },
  {
    method: 'GET',
    url: '/healthz',
    summary: 'The process is up',
    auth: false,
    responses: { '200': { description: 'ok' } },
  },
  {
    method: 'GET',
    url: '/readyz',
    summary: 'Redis answers',
    auth: false,
    responses: { '200': { description: 'ready' }, '503': { description: 'Redis unreachable' } },
  },
  {
    method: 'GET',
    url: '/metrics',
    summary:
      'Prometheus metrics: this process’ own, ferry_redis_up, and while Redis answers the cluster-wide counters, pushes by status and queue depths',
    auth: true,
    responses: {
      '200': {
        description: 'Prometheus text format 0.0.4 (also while Redis is down: ferry_redis_up 0)',
        content: { 'text/plain': { schema: { type: 'string' } } },
      },
    },
  },
  {
    method: 'GET',
    url: '/admin/login',
    summary: 'Bull Board sign-in form',
    auth: false,
    external: true,
    responses: {
      '200': { description: 'HTML form', content: { 'text/html': { schema: { type: 'string' } } } },
      '303': {
        description: 'No tokens are configured: straight to /admin/queues',
        headers: { Location: { schema: { type: 'string', const: '/admin/queues' } } },
      },
    },
  },
  {
    method: 'POST',
    url: '/admin/login',
    summary:
      'Sign in to Bull Board with an API token: sets an HttpOnly, SameSite=Strict session cookie (ferry_session, 12 h) that carries the token’s scope',
    auth: false,
    external: true,
    form: {
      type: 'object',
      required: ['token'],
      properties: { token: { type: 'string' } },
    },
    responses: {
      '303': {
        description: 'Signed in; the session cookie is set and the browser goes to /admin/queues',
        headers: {
          Location: { schema: { type: 'string', const: '/admin/queues' } },
          'Set-Cookie': { schema: { type: 'string' } },
        },
      },
      '401': {
        description: 'Wrong token; the form again',
        content: { 'text/html': { schema: { type: 'string' } } },
      },
      '429': err('Too many sign-in attempts from this address (Retry-After says when to try)'),
    },
  },
  {
    method: 'GET',
    url: '/admin/queues',
    summary:
      'Bull Board (lookup, upload and assemble queues): a bearer token, or the session cookie of /admin/login',
    auth: true,
    session: true,
    external: true,
    responses: {
      '200': {
        description: 'The Bull Board page',
        content: { 'text/html': { schema: { type: 'string' } } },
      },
      '303': {
        description:
          'A browser (GET with Accept: text/html) without a valid token or session: to the sign-in form',
        headers: { Location: { schema: { type: 'string', const: '/admin/login' } } },
      },
    },
  },
  {
    method: 'GET',
    url: '/admin/queues/api/queues',
    summary:
      'Bull Board’s queue list (JSON); a push token’s view is read-only (readOnlyMode: true)',
    auth: true,
    session: true,
    external: true,
    responses: {
      '200': {
        description: 'The queues',
        content: json({
          type: 'object',
          properties: { queues: { type: 'array', items: { type: 'object' } } },
        }),
      },
    },
  },
  {
    method: 'PUT',
    url: '/admin/queues/api/queues/:queueName/pause',
    summary: 'Pause a queue in Bull Board (admin tokens only)',
    auth: true,
    session: true,
    adminOnly: true,
    external: true,
    schema: { params: QueueNameParamsSchema },
    responses: { '200': { description: 'Paused' }, '404': { description: 'No such queue' } },
  },
  {
    method: 'PUT',
    url: '/admin/queues/api/queues/:queueName/resume',
    summary: 'Resume a queue in Bull Board (admin tokens only)',
    auth: true,
    session: true,
    adminOnly: true,
    external: true,
    schema: { params: QueueNameParamsSchema },
    responses: { '200': { description: 'Resumed' }, '404': { description: 'No such queue' } },
  },
  {
    method: 'GET',
    url: '/openapi.json',
    summary: 'This document',
    auth: true,
    responses: { '200': { description: 'OpenAPI 3.1', content: json({ type: 'object' }) } },
  },
];

export function routeDoc(method: RouteDoc['method'], url: string): RouteDoc {
  const r = ROUTES.find((x) => x.method === method && x.url === url);
  if (!r) throw new Error(`no route ${method} ${url} in ROUTES`);
  return r;
}
