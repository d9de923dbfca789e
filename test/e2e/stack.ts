/**
 * A Ferry stack for end-to-end tests: redis-server and docker-registry from
 * the harness, and Ferry's roles started in this process (or as separate
 * `ferry serve --role` processes). Every part is stopped by stop().
 */
import { randomBytes } from 'node:crypto';
import { loadConfig, type FerryConfig } from '@ferry/config';
import { createLogger } from '@ferry/log';
import {
  enqueuePush,
  isFinalStatus,
  openQueueContext,
  type PushRequest,
  type PushState,
  type QueueContext,
} from '@ferry/queue';
import { openSource } from '@ferry/image-source';
import type { RoleHandle } from '@ferry/runtime';
import { start as startLookup } from '@ferry/lookup-worker';
import { start as startUpload } from '@ferry/upload-worker';
import { start as startCoordinator } from '@ferry/coordinator';

export interface WorkerStack {
  config: FerryConfig;
  ctx: QueueContext;
  roles: RoleHandle[];
  stop(): Promise<void>;
}

/** A config for a stack on the given redis and registry hosts, with a fresh queue prefix. */
export function stackConfig(env: Record<string, string>): FerryConfig {
  return loadConfig({
    FERRY_QUEUE_PREFIX: `{t${randomBytes(4).toString('hex')}}`,
    FERRY_LOG_LEVEL: process.env.FERRY_TEST_LOG_LEVEL ?? 'error',
    FERRY_SHUTDOWN_TIMEOUT: '5',
    FERRY_DOCKER_CONFIG: '/nonexistent/ferry-test/config.json',
    ...env,
  });
}

/** Starts the three worker roles in this process. */
export async function startWorkers(
  config: FerryConfig,
  opts: { uploadWorkers?: number } = {},
): Promise<WorkerStack> {
  const logger = createLogger({
    level: config.logLevel,
    format: 'json',
    silent: !process.env.FERRY_TEST_LOG_LEVEL,
  });
  const ctx = await openQueueContext(config, { role: 'producer', name: 'ferry-test' });
  const roles: RoleHandle[] = [];
  roles.push(await startLookup(config, logger));
  for (let i = 0; i < (opts.uploadWorkers ?? 1); i++) roles.push(await startUpload(config, logger));
  roles.push(await startCoordinator(config, logger));
  return {
    config,
    ctx,
    roles,
    async stop() {
      await Promise.allSettled(roles.map((r) => r.close()));
      await ctx.close();
    },
  };
}

/** Creates and enqueues a push the way the API does, without HTTP. */
export async function submitPush(
  config: FerryConfig,
  ctx: QueueContext,
  request: Partial<PushRequest> & { source: string; target: string },
): Promise<string> {
  const id = randomBytes(8).toString('hex');
  const full: PushRequest = { tags: [], format: 'oci', ...request };
  const opened = await openSource(full.source, {
    root: config.sourceRoot,
    gzipLevel: config.gzipLevel,
    platform: full.platform,
  });
  const layout = { images: opened.images.map((i) => ({ layers: i.layers.length })) };
  await ctx.store.create(id, full, { layout });
  await enqueuePush(ctx.queues, id, full, layout, { gzipLevel: config.gzipLevel });
  return id;
}

/** Waits until the push reaches a final status; returns its state. */
export async function waitForPush(
  ctx: QueueContext,
  id: string,
  timeoutMs = 120_000,
): Promise<PushState> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const state = await ctx.store.get(id);
    if (state && isFinalStatus(state.status)) return state;
    if (Date.now() > deadline) {
      throw new Error(`push ${id} not final after ${timeoutMs} ms: ${JSON.stringify(state)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
