/**
 * A Ferry stack for end-to-end tests: redis-server and docker-registry from
 * the harness, and Ferry's roles started in this process (or as separate
 * `ferry serve --role` processes). Every part is stopped by stop().
 */
import { randomBytes } from 'node:crypto';
import { closeSync, cpSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { loadConfig, type FerryConfig } from '@ferry/config';
import { createLogger } from '@ferry/log';
import {
  isFinalStatus,
  openQueueContext,
  type PushRequest,
  type PushState,
  type QueueContext,
} from '@ferry/queue';
import { startApi, type RunningApi } from '@ferry/api';
import {
  startRedis,
  startRegistry,
  tmpDir,
  type RedisHandle,
  type RegistryHandle,
} from '../helpers';
import type { RoleHandle } from '@ferry/runtime';
import { start as startLookup } from '@ferry/lookup-worker';
import { start as startUpload } from '@ferry/upload-worker';
import { start as startCoordinator } from '@ferry/coordinator';

export interface WorkerStack {
  config: FerryConfig;
  ctx: QueueContext;
  roles: RoleHandle[];
  /** The REST API of the stack (pushes are submitted through it). */
  api: RunningApi;
  stop(): Promise<void>;
}

/** A config for a stack on the given redis and registry hosts, with a fresh queue prefix. */
export function stackConfig(env: Record<string, string>): FerryConfig {
  return loadConfig({
    FERRY_QUEUE_PREFIX: `{t${randomBytes(4).toString('hex')}}`,
    FERRY_LOG_LEVEL: process.env.FERRY_TEST_LOG_LEVEL ?? 'error',
    FERRY_SHUTDOWN_TIMEOUT: '5',
    FERRY_DOCKER_CONFIG: '/nonexistent/ferry-test/config.json',
    FERRY_PORT: '0',
    ...env,
  });
}

/** Starts the API and the three worker roles in this process. */
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
  const api = await startApi(config, logger);
  await untilReady(api.url);
  return {
    config,
    ctx,
    roles,
    api,
    async stop() {
      await api.close().catch(() => undefined);
      await Promise.allSettled(roles.map((r) => r.close()));
      await ctx.close();
    },
  };
}

/**
 * Waits until the API's /readyz answers 200: the API comes up before its Redis
 * connection is ready (it answers 503 meanwhile), and a push sent in between
 * would be refused with FERRY_UNAVAILABLE.
 */
async function untilReady(url: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await fetch(`${url}/readyz`).then(
      (r) => r.status === 200,
      () => false,
    );
    if (ok) return;
    if (Date.now() > deadline)
      throw new Error(`the API at ${url} was not ready in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** An error answer of the API, with its code and field. */
export class ApiRequestError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

/** Submits a push through the stack's REST API (POST /v1/pushes); resolves with its id. */
export async function submitPush(
  stack: Pick<WorkerStack, 'api'>,
  request: Partial<PushRequest> & { source: string; target: string },
): Promise<string> {
  const res = await fetch(`${stack.api.url}/v1/pushes`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(request),
  });
  const body = (await res.json()) as {
    id?: string;
    error?: { code: string; message: string; field?: string };
  };
  if (res.status !== 202 || !body.id) {
    throw new ApiRequestError(
      res.status,
      body.error?.code ?? 'FERRY_UNKNOWN',
      body.error?.message ?? JSON.stringify(body),
      body.error?.field,
    );
  }
  return body.id;
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

/** Submits a push through the API and waits for its final state. */
export async function pushAndWait(
  stack: Pick<WorkerStack, 'api' | 'ctx'>,
  request: Partial<PushRequest> & { source: string; target: string },
): Promise<PushState> {
  return waitForPush(stack.ctx, await submitPush(stack, request));
}

/** Copies the sample image examples/hello to ROOT/hello (symlinks kept as written). */
export function copyHello(root: string): string {
  const to = join(root, 'hello');
  cpSync(join(__dirname, '..', '..', 'examples', 'hello'), to, {
    recursive: true,
    verbatimSymlinks: true,
  });
  return to;
}

/** Writes `mb` MiB of incompressible bytes to path (parents created), one MiB at a time. */
export function writeRandomFile(path: string, mb: number): void {
  mkdirSync(dirname(path), { recursive: true });
  const fd = openSync(path, 'w');
  try {
    for (let i = 0; i < mb; i++) writeSync(fd, randomBytes(1024 * 1024));
  } finally {
    closeSync(fd);
  }
}

export interface LocalStack {
  redis: RedisHandle;
  registry: RegistryHandle;
  /** The source root (a temp dir) the stack reads from. */
  root: string;
  stack: WorkerStack;
  stop(): Promise<void>;
}

/**
 * redis-server, a plain docker-registry, a temp source root, and Ferry's API
 * and workers in this process, allowed to push to that registry. `env` adds to
 * or overrides the configuration.
 */
export async function startLocalStack(
  name: string,
  opts: { env?: Record<string, string>; uploadWorkers?: number } = {},
): Promise<LocalStack> {
  const [redis, registry] = await Promise.all([startRedis(), startRegistry()]);
  const root = tmpDir(name);
  const stack = await startWorkers(
    stackConfig({
      FERRY_REDIS_URL: redis.url,
      FERRY_REGISTRY_ALLOW: registry.host,
      FERRY_SOURCE_ROOT: root,
      ...opts.env,
    }),
    { uploadWorkers: opts.uploadWorkers },
  );
  return {
    redis,
    registry,
    root,
    stack,
    async stop() {
      await stack.stop();
      await Promise.allSettled([redis.stop(), registry.stop()]);
    },
  };
}
