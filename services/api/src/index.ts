/**
 * @ferry/api — the REST interface, SSE progress, Bull Board, health and metrics.
 * `start(config, logger)` is the role entry point `ferry serve` calls.
 */
import type { FastifyInstance } from 'fastify';
import { checkSourceRoot, type FerryConfig } from '@ferry/config';
import type { Logger } from '@ferry/log';
import { openQueueContext } from '@ferry/queue';
import { closeWithDeadline } from '@ferry/runtime';
import { buildApi } from './app';

export { buildApi, BODY_LIMIT, type ApiDeps } from './app';
export { ApiError, STATUS_BY_CODE, statusOf } from './errors';
export { Auth } from './auth';
export { buildOpenApi } from './openapi';
export { ROUTES, PushRequestSchema } from './schemas';
export {
  defaultInspector,
  SourceContentError,
  type Inspector,
  type InspectedSource,
} from './inspect';

export interface RunningApi {
  app: FastifyInstance;
  /** The address it listens on, e.g. http://127.0.0.1:8080 */
  url: string;
  /** Stops taking requests, ends SSE streams, closes Redis — within FERRY_SHUTDOWN_TIMEOUT. */
  close(): Promise<void>;
}

/** Builds the API on a Redis connection (made in the background) and listens on FERRY_HOST:FERRY_PORT. */
export async function startApi(config: FerryConfig, logger: Logger): Promise<RunningApi> {
  // Pushes name paths below the source root: a root that is not a directory stops the start.
  checkSourceRoot(config);
  // Not waiting for Redis: the API comes up either way and /readyz tells when Redis answers.
  const ctx = await openQueueContext(config, {
    role: 'producer',
    name: 'ferry-api',
    waitReady: false,
  });
  const app = buildApi({
    config,
    redis: ctx.connection,
    queues: ctx.queues,
    store: ctx.store,
    logger,
  });
  try {
    await app.listen({ host: config.host, port: config.port });
  } catch (err) {
    await ctx.close();
    throw err;
  }
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : config.port;
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  const url = `http://${host}:${port}`;
  logger.info(`api listening on ${url} (Bull Board: ${url}/admin/queues)`);
  let closing: Promise<void> | undefined;
  return {
    app,
    url,
    close() {
      closing ??= (async () => {
        const clean = await closeWithDeadline(
          [{ name: 'api', close: () => app.close() }],
          config.shutdownTimeout * 1000,
          logger,
        );
        if (!clean) app.server.closeAllConnections();
        await ctx.close();
      })();
      return closing;
    },
  };
}

/** The role entry point shared by every service: start, and hand back close(). */
export async function start(
  config: FerryConfig,
  logger: Logger,
): Promise<{ close(): Promise<void>; url: string }> {
  return startApi(config, logger);
}
