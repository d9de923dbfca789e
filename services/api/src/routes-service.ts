/** Health, readiness, metrics, the OpenAPI document, and the signing routes (signing-routes.ts). */
import { buildOpenApi } from './openapi';
import { createApiMetrics } from './metrics';
import type { AddRoute, ApiDeps } from './app';
import type { Auth } from './auth';
import { signingRoutes } from './signing-routes';

export function serviceRoutes(route: AddRoute, deps: ApiDeps, auth: Auth): void {
  const { store, queues } = deps;
  // ---- signing: public keys and lookaside signatures the coordinators published ----
  signingRoutes(route, deps);

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
  const metrics = createApiMetrics(store, queues);
  route('GET', '/metrics', async (_req, reply) => {
    const text = await metrics.metrics();
    return reply.header('content-type', metrics.contentType).send(text);
  });
  const openapi = buildOpenApi({ version: deps.version ?? '0.1.0', tokensRequired: !auth.open });
  route('GET', '/openapi.json', async () => openapi);
}
