/**
 * Lease fencing with SIGSTOP (issue 7): an upload worker process is stopped
 * while its last PATCH is at the proxy — before its commit — its blob lease and
 * job lock lapse, another worker takes the job over and commits the blob. When
 * the first worker continues it commits nothing: no second PUT reaches the
 * registry, and the blob index keeps the second worker's entry.
 */
import assert from 'node:assert/strict';
import { isFinalStatus } from '@ferry/queue';
import type { RoleHandle } from '@ferry/runtime';
import { skopeoInspect, type ServiceHandle } from '../helpers';
import {
  createPush,
  layerFacts,
  layersOf,
  startServiceEnv,
  until,
  writeDirImage,
  type ServiceEnv,
} from '../../services/upload-worker/test/helpers';
import {
  enqueue,
  spawnUploadWorker,
  startOtherRoles,
} from '../../services/upload-worker/test/processes';

const MiB = 1024 * 1024;

describe('e2e: upload lease fencing (SIGSTOP, take-over, SIGCONT)', function () {
  this.timeout(180_000);
  let env: ServiceEnv;
  let roles: RoleHandle[] = [];
  const workers: ServiceHandle[] = [];

  before(async () => {
    env = await startServiceEnv('fencing');
    roles = await startOtherRoles(env);
  });
  after(async () => {
    for (const w of workers) {
      try {
        process.kill(w.pid, 'SIGCONT');
      } catch {
        // gone
      }
    }
    await Promise.allSettled(workers.map((w) => w.stop()));
    await Promise.allSettled(roles.map((r) => r.close()));
    await env?.stop();
  });

  it('a worker stopped before its commit and continued after a take-over commits nothing', async () => {
    const img = writeDirImage(env.root, 'fenced', { '01-data': { mb: 4 } });
    const push = await createPush(env, `dir:${img}`, `${env.proxy.host}/fenced/data:1`);
    const [layer] = await layersOf(env, push.request);
    const expected = await layerFacts(layer);
    // Whole MiB chunks go as PATCHes; a last partial chunk rides on the final PUT.
    const patches = Math.floor(expected.size / MiB);
    const workerEnv = {
      FERRY_UPLOAD_CHUNK_SIZE: String(MiB),
      FERRY_JOB_LOCK_TIMEOUT: '3',
      FERRY_LOG_LEVEL: 'info',
    };
    const repos = env.ctx.uploadLease.keys.blobRepos(env.proxy.host, expected.digest);

    // Hold the last PATCH: after it the worker checks its lease and sends the final PUT (with
    // the rest of the blob).
    const held = env.proxy.holdNext('PATCH', { skip: patches - 1 });
    const first = await spawnUploadWorker(env, workerEnv);
    workers.push(first);
    await enqueue(env, push);
    await held;
    process.kill(first.pid, 'SIGSTOP');
    // The registry gets the whole last chunk; its answer waits in the stopped worker's socket.
    env.proxy.release();
    assert.equal(env.proxy.requests('PUT'), 0);

    // The stopped worker's lease and job lock lapse; another worker takes the job over.
    const second = await spawnUploadWorker(env, workerEnv);
    workers.push(second);
    const state = await until(async () => {
      const s = await env.ctx.store.get(push.id);
      return s && isFinalStatus(s.status) ? s : undefined;
    }, 100);
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    assert.equal(state.layers[0].digest, expected.digest);
    const putsByTakeOver = env.proxy.requests('PUT');
    assert.ok(putsByTakeOver >= 1, 'the take-over committed the blob');
    const indexed = await env.ctx.connection.zscore(repos, 'fenced/data');
    assert.ok(indexed !== null, 'the take-over published the blob');

    // The first worker goes on: it notices the lost lease and stops (or, unfenced, reports its push).
    process.kill(first.pid, 'SIGCONT');
    await until(
      () =>
        /FERRY_LEASE_LOST|lost the upload lease|lease .* lost|pushed sha256:/.test(first.logs()),
      50,
    );
    await until(async () => {
      const job = await env.ctx.queues.upload.getJob(`${push.id}-i0-l0-up`);
      return !job || (await job.getState()) === 'completed';
    });
    // It committed nothing: no PUT of its own reached the registry, the index entry is the take-over's.
    assert.equal(
      env.proxy.requests('PUT'),
      putsByTakeOver,
      `the stopped worker sent its PUT after losing the lease:\n${first.logs().slice(-3000)}`,
    );
    assert.equal(await env.ctx.connection.zscore(repos, 'fenced/data'), indexed);
    const after = await env.ctx.store.get(push.id);
    assert.equal(after?.status, 'succeeded');
    assert.equal(after?.layers[0].state, 'uploaded');
    const info = await skopeoInspect(`docker://${env.registry.host}/fenced/data:1`);
    assert.deepEqual(info.Layers, [expected.digest]);
    assert.equal(info.Digest, state.manifest?.digest);
  });
});
