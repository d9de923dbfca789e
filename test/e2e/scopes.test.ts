/**
 * Token scopes end to end (issue 9, must-show "Token scopes"): a push token
 * cannot pause a queue in Bull Board while an admin token can; a token limited
 * to …/team/* gets 403 for another repository; after real pushes to a
 * basic-auth docker-registry, no token value and no registry credential is in
 * Redis (every key's value scanned) or in the roles' logs (winston captured).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { Redis } from 'ioredis';
import { createLogger } from '@ferry/log';
import { openQueueContext, type QueueContext } from '@ferry/queue';
import { startApi, type RunningApi } from '@ferry/api';
import type { RoleHandle } from '@ferry/runtime';
import { start as startLookup } from '@ferry/lookup-worker';
import { start as startUpload } from '@ferry/upload-worker';
import { start as startCoordinator } from '@ferry/coordinator';
import {
  startRedis,
  startRegistry,
  tmpDir,
  type RedisHandle,
  type RegistryHandle,
} from '../helpers';
import { copyHello, stackConfig, waitForPush } from './stack';

const PUSH_TOKEN = 'push-tok-7f3a9c1e5b';
const ADMIN_TOKEN = 'admin-tok-2d8e4f6a0c';
const TEAM_TOKEN = 'team-tok-9b1c3e5d7f';

/** Every string value in Redis, whatever the key's type. */
async function everyValue(redis: Redis): Promise<string> {
  const out: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'COUNT', 500);
    cursor = next;
    for (const key of keys) {
      out.push(key);
      const type = await redis.type(key);
      if (type === 'string') out.push((await redis.get(key)) ?? '');
      else if (type === 'hash') out.push(...Object.entries(await redis.hgetall(key)).flat());
      else if (type === 'list') out.push(...(await redis.lrange(key, 0, -1)));
      else if (type === 'set') out.push(...(await redis.smembers(key)));
      else if (type === 'zset') out.push(...(await redis.zrange(key, 0, -1)));
      else if (type === 'stream') {
        for (const [id, fields] of await redis.xrange(key, '-', '+')) out.push(id, ...fields);
      }
    }
  } while (cursor !== '0');
  return out.join('\n');
}

describe('e2e: token scopes, and no secret in Redis or logs', function () {
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let root: string;
  let ctx: QueueContext;
  let api: RunningApi;
  const roles: RoleHandle[] = [];
  let logs = '';

  before(async () => {
    [redis, registry] = await Promise.all([startRedis(), startRegistry({ auth: 'basic' })]);
    root = tmpDir('e2e-scopes');
    copyHello(root);
    const config = stackConfig({
      FERRY_REDIS_URL: redis.url,
      FERRY_REGISTRY_ALLOW: registry.host,
      FERRY_SOURCE_ROOT: root,
      FERRY_DOCKER_CONFIG: registry.dockerConfigPath,
      FERRY_API_TOKENS: `${PUSH_TOKEN},ci=${TEAM_TOKEN}@${registry.host}/team/*`,
      FERRY_ADMIN_TOKENS: `ops=${ADMIN_TOKEN}@*`,
      FERRY_LOG_LEVEL: 'debug',
    });
    const sink = new PassThrough();
    sink.on('data', (d: Buffer) => (logs += d.toString('utf8')));
    const logger = createLogger({ level: 'debug', format: 'json', stream: sink });
    ctx = await openQueueContext(config, { role: 'producer', name: 'ferry-test' });
    roles.push(await startLookup(config, logger));
    roles.push(await startUpload(config, logger));
    roles.push(await startCoordinator(config, logger));
    api = await startApi(config, logger);
  });
  after(async () => {
    await api?.close().catch(() => undefined);
    await Promise.allSettled(roles.map((r) => r.close()));
    await ctx?.close();
    await Promise.allSettled([redis?.stop(), registry?.stop()]);
  });

  function call(method: string, path: string, token: string, body?: unknown) {
    return fetch(`${api.url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body ? { 'content-type': 'application/json' } : {}),
      },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
  }

  it('a push token cannot pause a queue in Bull Board (403); an admin token can', async () => {
    const denied = await call('PUT', '/admin/queues/api/queues/upload/pause', PUSH_TOKEN);
    assert.equal(denied.status, 403);
    assert.equal(
      ((await denied.json()) as { error: { code: string } }).error.code,
      'FERRY_FORBIDDEN',
    );
    assert.equal(await ctx.queues.upload.isPaused(), false);
    const view = await call('GET', '/admin/queues/api/queues', PUSH_TOKEN);
    assert.equal(view.status, 200);

    const paused = await call('PUT', '/admin/queues/api/queues/upload/pause', ADMIN_TOKEN);
    assert.equal(paused.status, 200);
    assert.equal(await ctx.queues.upload.isPaused(), true);
    const resumed = await call('PUT', '/admin/queues/api/queues/upload/resume', ADMIN_TOKEN);
    assert.equal(resumed.status, 200);
    assert.equal(await ctx.queues.upload.isPaused(), false);
  });

  it('pushes with each token to a basic-auth registry; a …/team/* token gets 403 elsewhere', async () => {
    const source = `dir:${join(root, 'hello')}`;
    const ids: string[] = [];
    for (const [token, target] of [
      [TEAM_TOKEN, `${registry.host}/team/hello:1`],
      [PUSH_TOKEN, `${registry.host}/other/hello:1`],
      [ADMIN_TOKEN, `${registry.host}/ops/hello:1`],
    ] as const) {
      const res = await call('POST', '/v1/pushes', token, { source, target });
      assert.equal(res.status, 202, await res.clone().text());
      ids.push(((await res.json()) as { id: string }).id);
    }
    const before = await ctx.store.list({ limit: 1000 });
    const refused = await call('POST', '/v1/pushes', TEAM_TOKEN, {
      source,
      target: `${registry.host}/other/hello:2`,
    });
    assert.equal(refused.status, 403);
    const err = ((await refused.json()) as { error: { code: string; field: string } }).error;
    assert.equal(err.code, 'FERRY_FORBIDDEN');
    assert.equal(err.field, 'target');
    assert.equal((await ctx.store.list({ limit: 1000 })).length, before.length, 'nothing recorded');

    const names = [];
    for (const id of ids) {
      const state = await waitForPush(ctx, id);
      assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
      names.push(state.request.requestedBy);
    }
    assert.deepEqual(names, ['ci', 'api#1', 'ops']);
  });

  it('no token value and no registry credential is in Redis or in the logs', async () => {
    assert.ok(registry.username && registry.password);
    const auth = Buffer.from(`${registry.username}:${registry.password}`).toString('base64');
    const docker = readFileSync(registry.dockerConfigPath, 'utf8');
    assert.ok(docker.includes(auth), 'the docker config holds the credential searched for');
    const secrets = [PUSH_TOKEN, ADMIN_TOKEN, TEAM_TOKEN, registry.password, auth];

    const conn = new Redis(redis.url);
    let values: string;
    try {
      values = await everyValue(conn);
    } finally {
      conn.disconnect();
    }
    assert.ok(values.includes('requestedBy'), 'the scan reached the push state');
    assert.ok(logs.includes('push accepted'), 'the logs were captured');
    for (const s of secrets) {
      assert.ok(!values.includes(s), `a secret (${s.slice(0, 4)}…) is in Redis`);
      assert.ok(!logs.includes(s), `a secret (${s.slice(0, 4)}…) is in the logs`);
    }
  });
});
