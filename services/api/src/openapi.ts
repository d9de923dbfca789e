import { ErrorSchema, ROUTES } from './schemas';

/** Converts a JSON schema object of a query or path to OpenAPI parameters (the same property schemas). */
function parameters(where: 'query' | 'path', schema: unknown): unknown[] {
  const s = schema as
    { properties?: Record<string, unknown>; required?: readonly string[] } | undefined;
  if (!s?.properties) return [];
  return Object.entries(s.properties).map(([name, prop]) => ({
    name,
    in: where,
    required: where === 'path' || (s.required ?? []).includes(name),
    schema: prop,
  }));
}

/** The OpenAPI 3.1 document, generated from ROUTES — the same schema objects fastify validates with. */
export function buildOpenApi(opts: {
  version: string;
  tokensRequired: boolean;
}): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of ROUTES) {
    const path = r.url.replace(/:([A-Za-z]+)/g, '{$1}').replace(/\*$/, '{path}');
    const op: Record<string, unknown> = {
      summary: r.summary,
      operationId: `${r.method.toLowerCase()}${path.replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ? c.toUpperCase() : ''))}`,
      responses: r.responses,
    };
    const params = [
      ...parameters('path', r.schema?.params),
      ...parameters('query', r.schema?.querystring),
    ];
    if (r.url.endsWith('*'))
      params.push({ name: 'path', in: 'path', required: true, schema: { type: 'string' } });
    if (r.method === 'POST' && r.url === '/v1/pushes') {
      params.push({
        name: 'Idempotency-Key',
        in: 'header',
        required: false,
        schema: { type: 'string', maxLength: 255 },
      });
    }
    if (params.length) op.parameters = params;
    if (r.form) {
      op.requestBody = {
        required: true,
        content: { 'application/x-www-form-urlencoded': { schema: r.form } },
      };
    }
    if (r.schema?.body) {
      op.requestBody = {
        required: true,
        content: { 'application/json': { schema: r.schema.body } },
      };
    }
    const guarded = r.auth && opts.tokensRequired;
    // Where tokens are enforced: the bearer scheme (Bull Board also takes its session cookie),
    // 401 without a valid one, and 403 where the token's scope decides.
    op.security = guarded ? [{ bearer: [] }, ...(r.session ? [{ session: [] }] : [])] : [];
    if (guarded) {
      const responses: Record<string, unknown> = { ...r.responses };
      responses['401'] = {
        description: r.session
          ? 'No valid bearer token or session cookie (an API client; a browser asking for HTML is redirected instead where 303 is listed)'
          : 'Missing or wrong bearer token',
        headers: {
          'WWW-Authenticate': { schema: { type: 'string', const: 'Bearer realm="ferry"' } },
        },
        content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
      };
      if (r.adminOnly) {
        responses['403'] = {
          description:
            'A push token (FERRY_API_TOKENS): Bull Board is read-only for it; pausing, cleaning and retrying need a token from FERRY_ADMIN_TOKENS',
          content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
        };
      }
      op.responses = Object.fromEntries(
        Object.entries(responses).sort(([a], [b]) => a.localeCompare(b)),
      );
    }
    (paths[path] ??= {})[r.method.toLowerCase()] = op;
  }
  const { $id: _id, ...errorSchema } = ErrorSchema;
  return {
    openapi: '3.1.0',
    info: {
      title: 'Ferry',
      version: opts.version,
      description: 'Pushes container images to OCI / Docker v2 registries through a worker queue.',
    },
    paths,
    components: {
      schemas: { Error: errorSchema },
      securitySchemes: {
        bearer: {
          type: 'http',
          scheme: 'bearer',
          description:
            'A token from FERRY_API_TOKENS (push) or FERRY_ADMIN_TOKENS (admin: also Bull Board’s writes). Enforced when either is set; with none set every route is open.',
        },
        session: {
          type: 'apiKey',
          in: 'cookie',
          name: 'ferry_session',
          description:
            'Bull Board only: the session POST /admin/login sets, with its token’s scope',
        },
      },
    },
  };
}
