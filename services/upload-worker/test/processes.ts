/** `ferry serve --role upload` as its own process, for take-over and fencing tests. */
import { join } from 'node:path';
import { enqueuePush } from '@ferry/queue';
import type { RoleHandle } from '@ferry/runtime';
import { start as startLookup } from '@ferry/lookup-worker';
import { start as startCoordinator } from '@ferry/coordinator';
import { freePort, spawnService, type ServiceHandle } from '../../../test/helpers';
import type { CreatedPush, ServiceEnv } from './helpers';

const repoRoot = join(__dirname, '..', '..', '..');

/** The environment an upload worker process of `env` runs with. */
export function processEnv(env: ServiceEnv, extra: Record<string, string>): Record<string, string> {
  const c = env.config;
  return {
    FERRY_REDIS_URL: c.redisUrl,
    FERRY_QUEUE_PREFIX: c.queuePrefix,
    FERRY_REGISTRY_ALLOW: c.registryAllow.join(','),
    FERRY_SOURCE_ROOT: c.sourceRoot,
    FERRY_GZIP_LEVEL: String(c.gzipLevel),
    FERRY_DOCKER_CONFIG: '/nonexistent/ferry-test/config.json',
    FERRY_LOG_LEVEL: process.env.FERRY_TEST_LOG_LEVEL ?? 'warn',
    NODE_ENV: 'production',
    ...extra,
  };
}

/** Starts one upload worker process; ready once its health server answers /readyz. */
export async function spawnUploadWorker(
  env: ServiceEnv,
  extra: Record<string, string>,
): Promise<ServiceHandle> {
  const healthPort = await freePort();
  return spawnService({
    name: 'ferry-upload',
    cmd: process.execPath,
    args: [join(repoRoot, 'bin', 'ferry.js'), 'serve', '--role', 'upload'],
    env: { ...processEnv(env, extra), FERRY_HEALTH_PORT: String(healthPort) },
    cwd: repoRoot,
    timeoutMs: 30_000,
    ready: async () => (await fetch(`http://127.0.0.1:${healthPort}/readyz`)).ok,
  });
}

/** The lookup and coordinator roles in this process (upload workers run as processes). */
export async function startOtherRoles(env: ServiceEnv): Promise<RoleHandle[]> {
  return [
    await startLookup(env.config, env.logger),
    await startCoordinator(env.config, env.logger),
  ];
}

/** Enqueues a created push as the API would. */
export async function enqueue(env: ServiceEnv, push: CreatedPush): Promise<void> {
  await enqueuePush(env.ctx.queues, push.id, push.request, push.layout, {
    gzipLevel: env.config.gzipLevel,
  });
}
