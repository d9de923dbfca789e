/**
 * A take-over resumes the registry's upload session rather than restarting it:
 * an upload worker process is SIGKILLed while its next PATCH is held at the
 * proxy (not a byte of it forwarded), and the worker that takes the job over
 * sends only what the registry does not have yet.
 */
import assert from 'node:assert/strict';
import { isFinalStatus } from '@ferry/queue';
import type { RoleHandle } from '@ferry/runtime';
import { skopeoInspect, type ServiceHandle } from '../../../test/helpers';
import {
  createPush,
  layerFacts,
  layersOf,
  startServiceEnv,
  until,
  writeDirImage,
  type ServiceEnv,
} from './helpers';
import { enqueue, spawnUploadWorker, startOtherRoles } from './processes';

const MiB = 1024 * 1024;

describe('upload-worker: a take-over resumes the session (processes, SIGKILL)', function () {
  this.timeout(180_000);
  let env: ServiceEnv;
  let roles: RoleHandle[] = [];
  const workers: ServiceHandle[] = [];

  before(async () => {
    env = await startServiceEnv('takeover');
    roles = await startOtherRoles(env);
  });
  after(async () => {
    await Promise.allSettled(workers.map((w) => w.stop()));
    await Promise.allSettled(roles.map((r) => r.close()));
    await env?.stop();
  });

  it('after a SIGKILL with a PATCH held, the next worker resumes from the registry offset', async () => {
    const img = writeDirImage(env.root, 'resume', { '01-data': { mb: 8 } });
    const push = await createPush(env, `dir:${img}`, `${env.proxy.host}/resume/data:1`);
    const [layer] = await layersOf(env, push.request);
    const expected = await layerFacts(layer);
    assert.ok(expected.size > 8 * MiB, 'the layer is incompressible');
    const workerEnv = { FERRY_UPLOAD_CHUNK_SIZE: String(MiB), FERRY_JOB_LOCK_TIMEOUT: '3' };

    // Three 1 MiB chunks reach the registry; the fourth PATCH is held before a byte goes through.
    const held = env.proxy.holdNext('PATCH', { skip: 3 });
    const first = await spawnUploadWorker(env, workerEnv);
    workers.push(first);
    await enqueue(env, push);
    await held;
    process.kill(first.pid, 'SIGKILL');
    await until(() => first.exited);
    env.proxy.dropHeld();
    const accepted = 3 * MiB;
    const patchesBefore = env.proxy.requests('PATCH');
    const upBefore = env.proxy.bytesUp;

    const second = await spawnUploadWorker(env, workerEnv);
    workers.push(second);
    const state = await until(async () => {
      const s = await env.ctx.store.get(push.id);
      return s && isFinalStatus(s.status) ? s : undefined;
    }, 100);
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    const sent = env.proxy.bytesUp - upBefore;
    const rest = expected.size - accepted;
    // The take-over sends the rest of the layer (plus headers, the config and the manifest) —
    // not the layer again from byte 0.
    assert.ok(sent >= rest, `sent ${sent} < rest ${rest}`);
    assert.ok(
      sent < rest + MiB / 2,
      `the take-over sent ${sent} bytes for a ${expected.size}-byte layer of which ${accepted} were accepted: it restarted`,
    );
    // Five more 1 MiB chunks (the remainder rides on the PUT), never the first three again.
    assert.equal(env.proxy.requests('PATCH') - patchesBefore, Math.floor(rest / MiB));
    assert.equal(state.layers[0].digest, expected.digest);
    assert.equal(state.layers[0].size, expected.size);
    const info = await skopeoInspect(`docker://${env.registry.host}/resume/data:1`);
    assert.deepEqual(info.Layers, [expected.digest]);
    assert.equal(info.Digest, state.manifest?.digest);
  });
});
