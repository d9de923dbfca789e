/**
 * Scenario 7: token scopes. A push token cannot pause a queue in Bull Board
 * (an admin token can); a token limited to `HOST/team/*` gets 403 for another
 * repository and pushes to its own; neither the tokens nor the registry's
 * credentials appear in Redis (every key's value scanned) or in any role's log.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import {
  skopeoInspect,
  startRegistry,
  tmpDir,
  removeTmpDir,
  type RegistryHandle,
} from '../helpers';
import { startDurableRedis, type DurableRedisHandle } from '../helpers/durable-redis';
import {
  MiB,
  apiCall,
  figure,
  startFerryProcs,
  waitFinal,
  writeImage,
  type FerryProcs,
} from './harness';

const S = '7 token scopes';
const PUSH = 'faults-push-' + randomBytes(12).toString('hex');
const TEAM = 'faults-team-' + randomBytes(12).toString('hex');
const ADMIN = 'faults-admin-' + randomBytes(12).toString('hex');

/** Every key and value in Redis, as text (strings, hashes, lists, sets, sorted sets, streams). */
async function dumpRedis(url: string): Promise<{ keys: number; text: string }> {
  const r = new Redis(url);
  const parts: string[] = [];
  let keys = 0;
  try {
    let cursor = '0';
    do {
      const [next, batch] = await r.scan(cursor, 'COUNT', 500);
      cursor = next;
      for (const k of batch) {
        keys++;
        parts.push(k);
        const type = await r.type(k);
        if (type === 'string') parts.push((await r.getBuffer(k))?.toString('latin1') ?? '');
        else if (type === 'hash') parts.push(JSON.stringify(await r.hgetall(k)));
        else if (type === 'list') parts.push(JSON.stringify(await r.lrange(k, 0, -1)));
        else if (type === 'set') parts.push(JSON.stringify(await r.smembers(k)));
        else if (type === 'zset')
          parts.push(JSON.stringify(await r.zrange(k, 0, -1, 'WITHSCORES')));
        else if (type === 'stream') parts.push(JSON.stringify(await r.xrange(k, '-', '+')));
      }
    } while (cursor !== '0');
  } finally {
    r.disconnect();
  }
  return { keys, text: parts.join('\n') };
}

describe(`faults ${S}: push and admin tokens, target patterns, no secret in Redis or logs`, function () {
  this.timeout(300_000);
  let redis: DurableRedisHandle;
  let registry: RegistryHandle;
  let ferry: FerryProcs | undefined;
  let root: string;

  before(async () => {
    [redis, registry] = await Promise.all([startDurableRedis(), startRegistry({ auth: 'basic' })]);
    root = tmpDir('faults-tokens');
  });
  after(async () => {
    await ferry?.stop();
    await Promise.allSettled([redis?.stop(), registry?.stop()]);
    if (root) removeTmpDir(root);
  });

  it('scopes hold and no secret leaks', async () => {
    const img = writeImage(root, 'app', [2 * MiB]);
    ferry = await startFerryProcs(
      {
        FERRY_REDIS_URL: redis.url,
        FERRY_SOURCE_ROOT: root,
        FERRY_REGISTRY_ALLOW: registry.host,
        FERRY_API_TOKENS: `${PUSH},team=${TEAM}@${registry.host}/team/*`,
        FERRY_ADMIN_TOKENS: ADMIN,
        FERRY_DOCKER_CONFIG: registry.dockerConfigPath,
        FERRY_LOG_LEVEL: 'debug',
      },
      ['api', 'coordinator', 'lookup', 'upload'],
    );
    const f = ferry;
    const upload = new Queue('upload', {
      connection: { host: '127.0.0.1', port: redis.port },
      prefix: f.env.FERRY_QUEUE_PREFIX,
    });
    try {
      // Bull Board writes: a push token is refused, an admin token may.
      const byPush = await apiCall(f.url, PUSH, 'PUT', '/admin/queues/api/queues/upload/pause');
      const pausedByPush = await upload.isPaused();
      figure(
        S,
        'push token: PUT …/upload/pause',
        `${byPush.status}, queue paused: ${pausedByPush}`,
      );
      if (pausedByPush) await upload.resume();
      const allByPush = await apiCall(f.url, PUSH, 'PUT', '/admin/queues/api/queues/pause');
      const pausedAll = await upload.isPaused();
      figure(
        S,
        'push token: PUT …/queues/pause (all)',
        `${allByPush.status}, upload paused: ${pausedAll}`,
      );
      if (pausedAll) await upload.resume();
      const readByPush = await apiCall(f.url, PUSH, 'GET', '/admin/queues/api/queues');
      figure(S, 'push token: GET …/api/queues (read-only view)', readByPush.status);
      const byAdmin = await apiCall(f.url, ADMIN, 'PUT', '/admin/queues/api/queues/upload/pause');
      const pausedByAdmin = await upload.isPaused();
      figure(
        S,
        'admin token: PUT …/upload/pause',
        `${byAdmin.status}, queue paused: ${pausedByAdmin}`,
      );
      await apiCall(f.url, ADMIN, 'PUT', '/admin/queues/api/queues/upload/resume');
      await upload.resume();

      // Target patterns.
      const other = await apiCall(f.url, TEAM, 'POST', '/v1/pushes', {
        source: `dir:${img}`,
        target: `${registry.host}/other/app:1`,
      });
      figure(S, 'team token → HOST/other/app', `${other.status} ${other.body?.error?.code ?? ''}`);
      const own = await apiCall(f.url, TEAM, 'POST', '/v1/pushes', {
        source: `dir:${img}`,
        target: `${registry.host}/team/app:1`,
      });
      figure(S, 'team token → HOST/team/app', own.status);
      assert.equal(own.status, 202, own.text);
      const viaPush = await apiCall(f.url, PUSH, 'POST', '/v1/pushes', {
        source: `dir:${img}`,
        target: `${registry.host}/any/app:1`,
      });
      assert.equal(viaPush.status, 202, viaPush.text);
      const s1 = await waitFinal(f.url, TEAM, own.body.id, 120_000);
      const s2 = await waitFinal(f.url, PUSH, viaPush.body.id, 120_000);
      figure(
        S,
        'pushes (started / succeeded)',
        `2 / ${[s1, s2].filter((s) => s.status === 'succeeded').length}`,
      );
      figure(S, 'the team push records requestedBy', String(s1.requestedBy));
      assert.equal(s1.status, 'succeeded', JSON.stringify(s1.error));
      assert.equal(s2.status, 'succeeded', JSON.stringify(s2.error));
      const info = await skopeoInspect(`docker://${registry.host}/team/app:1`, [
        '--creds',
        `${registry.username}:${registry.password}`,
      ]);
      assert.equal(info.Digest, s1.manifest?.digest);

      // Secrets: tokens, the registry password, the Basic credential as sent.
      const secrets: Record<string, string> = {
        'push token': PUSH,
        'team token': TEAM,
        'admin token': ADMIN,
        'registry password': registry.password as string,
        'registry Basic credential': Buffer.from(
          `${registry.username}:${registry.password}`,
        ).toString('base64'),
      };
      const dump = await dumpRedis(redis.url);
      const logs = f.logs();
      const inRedis = Object.entries(secrets)
        .filter(([, v]) => dump.text.includes(v))
        .map(([k]) => k);
      const inLogs = Object.entries(secrets)
        .filter(([, v]) => logs.includes(v))
        .map(([k]) => k);
      figure(S, 'Redis keys scanned', dump.keys);
      figure(S, 'log bytes scanned (all roles, debug level)', logs.length);
      figure(S, 'secrets found in Redis', inRedis.length ? inRedis.join(', ') : 'none');
      figure(S, 'secrets found in logs', inLogs.length ? inLogs.join(', ') : 'none');

      assert.ok(
        byPush.status >= 400 && byPush.status < 500,
        `a push token paused a queue: ${byPush.status}`,
      );
      assert.equal(pausedByPush, false, 'the push token paused the upload queue');
      assert.ok(
        allByPush.status >= 400 && allByPush.status < 500 && !pausedAll,
        `a push token paused every queue: ${allByPush.status}`,
      );
      assert.ok(
        byAdmin.status >= 200 && byAdmin.status < 300 && pausedByAdmin,
        `an admin token could not pause: ${byAdmin.status}`,
      );
      assert.equal(other.status, 403, other.text);
      assert.equal(s1.requestedBy, 'team');
      assert.deepEqual(inRedis, [], 'secrets in Redis');
      assert.deepEqual(inLogs, [], 'secrets in logs');
    } finally {
      await upload.close();
    }
  });
});
