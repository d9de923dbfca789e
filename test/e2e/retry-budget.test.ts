/**
 * A registry outage longer than the client's own retries and longer than the
 * old 5 attempts × exponential backoff (issue 9, item 2): the docker-registry
 * process is killed while a layer's 4th PATCH is held at the proxy, stays
 * down ~40 s, and is started again on the same port, storage and secret. With
 * the default FERRY_RETRY_BUDGET the push waits (delayed, `waiting` events)
 * and finishes once the registry is back; skopeo reads the image back.
 */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { dirname } from 'node:path';
import { isFinalStatus, type WaitingEvent } from '@ferry/queue';
import type { RoleHandle } from '@ferry/runtime';
import { start as startUpload } from '@ferry/upload-worker';
import { findBinary, pidAlive, skopeoInspect, spawnService, type ServiceHandle } from '../helpers';
import {
  createPush,
  layerFacts,
  layersOf,
  startServiceEnv,
  until,
  writeDirImage,
  type ServiceEnv,
} from '../../services/upload-worker/test/helpers';
import { enqueue, startOtherRoles } from '../../services/upload-worker/test/processes';

const MiB = 1024 * 1024;
/** How long the registry stays down: past the old code's ~30 s of attempts, short enough for CI. */
const OUTAGE_MS = 40_000;

function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/v2/', timeout: 1_000 }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}

describe('e2e: a registry outage spends the retry budget, not attempts', function () {
  this.timeout(240_000);
  let env: ServiceEnv;
  let roles: RoleHandle[] = [];
  let restarted: ServiceHandle | undefined;

  before(async () => {
    env = await startServiceEnv('retry-budget', { FERRY_UPLOAD_CHUNK_SIZE: String(MiB) });
    roles = await startOtherRoles(env);
    roles.push(await startUpload(env.config, env.logger));
  });
  after(async () => {
    await Promise.allSettled(roles.map((r) => r.close()));
    await restarted?.stop();
    await env?.stop();
  });

  it('a push rides out a 40 s outage with waiting events and finishes when the registry is back', async () => {
    const binary = findBinary('docker-registry');
    const pid = env.registry.pid;
    if (!binary || pid === undefined) throw new Error('needs the docker-registry binary');
    assert.equal(env.config.retryBudget, 900, 'the default budget');
    const img = writeDirImage(env.root, 'outage', { '01-data': { mb: 8 } });
    const push = await createPush(env, `dir:${img}`, `${env.proxy.host}/outage/data:1`);
    const [layer] = await layersOf(env, push.request);
    const expected = await layerFacts(layer);

    // Mid-push: the 4th 1 MiB PATCH is held at the proxy, then the registry dies.
    const held = env.proxy.holdNext('PATCH', { skip: 3 });
    await enqueue(env, push);
    await held;
    process.kill(pid, 'SIGKILL');
    await until(() => !pidAlive(pid) || undefined, 50);
    env.proxy.release();

    // The outage: the job keeps failing transiently and waits, delayed, between tries.
    const down = Date.now();
    await until(async () => ((await answers(env.registry.port)) ? undefined : true));
    while (Date.now() - down < OUTAGE_MS) {
      const s = await env.ctx.store.get(push.id);
      assert.ok(
        s && !isFinalStatus(s.status),
        `the push ended during the outage: ${JSON.stringify(s?.error)}`,
      );
      await new Promise((r) => setTimeout(r, 500));
    }
    const during = (await env.ctx.store.readEvents(push.id))
      .map((e) => e.event)
      .filter((e): e is WaitingEvent => e.type === 'waiting');
    assert.ok(during.length >= 1, 'no waiting event during the outage');
    // More tries than the 5 attempts jobs used to have were needed... or are still coming.
    assert.deepEqual(
      during.map((e) => e.attempt),
      during.map((_, i) => i + 1),
      'attempts counted in order',
    );
    for (const e of during) {
      assert.equal(e.registry, env.proxy.host);
      assert.equal(new Date(e.nextTryAt).toISOString(), e.nextTryAt);
      assert.ok(e.budgetLeftSeconds > 0 && e.budgetLeftSeconds <= 900);
      assert.match(
        e.cause.code,
        /^FERRY_(REGISTRY_UNAVAILABLE|UPLOAD_SESSION_LOST|SEMAPHORE_TIMEOUT)$/,
      );
    }

    // Back on the same port, storage and secret (the upload session's state stays valid).
    restarted = await spawnService({
      name: 'docker-registry',
      cmd: binary,
      args: ['serve', env.registry.configPath],
      cwd: dirname(env.registry.configPath),
      ready: () => answers(env.registry.port),
    });
    const state = await until(async () => {
      const s = await env.ctx.store.get(push.id);
      return s && isFinalStatus(s.status) ? s : undefined;
    }, 200);
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    assert.equal(state.layers[0].digest, expected.digest);
    assert.ok(
      state.layers[0].bytesSent >= expected.size,
      `bytesSent ${state.layers[0].bytesSent} < ${expected.size}: every attempt's bytes count`,
    );
    const info = await skopeoInspect(`docker://${env.registry.host}/outage/data:1`);
    assert.deepEqual(info.Layers, [expected.digest]);
    assert.equal(info.Digest, state.manifest?.digest);
  });
});
