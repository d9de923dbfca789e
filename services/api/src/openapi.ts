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
    op.security = r.auth && opts.tokensRequired ? [{ bearer: [] }] : [];
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
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
    },
  };
}
