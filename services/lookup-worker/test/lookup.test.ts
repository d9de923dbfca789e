/**
 * The lookup processor against a real redis-server and docker-registry: a
 * digest the OCI source states and the target has → 'exists', no upload job;
 * a missing one → exactly one upload child in the same flow, a version-2
 * payload carrying platform and pin; a version-1 payload (no `v`, no
 * platform) is read with the platform from the push state's request.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import {
  JOB_VERSION,
  lookupJobId,
  uploadJobId,
  type LookupJob,
  type UploadJob,
} from '@ferry/queue';
import { PushRequests, SourceCache } from '@ferry/runtime';
import { lookupProcessor } from '@ferry/lookup-worker';
import { createPush, startServiceEnv, type ServiceEnv } from '../../upload-worker/test/helpers';
import { enqueue } from '../../upload-worker/test/processes';

const sha = (b: Buffer | string) => 'sha256:' + createHash('sha256').update(b).digest('hex');

/** An OCI layout with one linux/amd64 image of two gzip layers; returns its path and the blobs. */
function writeOciLayout(root: string, name: string) {
  const dir = join(root, name);
  mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
  const put = (b: Buffer) => {
    const d = sha(b);
    writeFileSync(join(dir, 'blobs', 'sha256', d.slice(7)), b);
    return { digest: d, size: b.length, bytes: b };
  };
  const raws = [randomBytes(3000), randomBytes(5000)];
  const layers = raws.map((r) => put(gzipSync(r)));
  const config = put(
    Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: raws.map((r) => sha(r)) },
      }),
    ),
  );
  const manifest = put(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: {
          mediaType: 'application/vnd.oci.image.config.v1+json',
          digest: config.digest,
          size: config.size,
        },
        layers: layers.map((l) => ({
          mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
          digest: l.digest,
          size: l.size,
        })),
      }),
    ),
  );
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: manifest.digest,
          size: manifest.size,
          platform: { os: 'linux', architecture: 'amd64' },
          annotations: { 'org.opencontainers.image.ref.name': 'latest' },
        },
      ],
    }),
  );
  return { dir, layers };
}

describe('lookup-worker: lookupProcessor (real redis-server and docker-registry)', function () {
  this.timeout(120_000);
  let env: ServiceEnv;

  before(async () => {
    env = await startServiceEnv('lookup-proc');
  });
  after(async () => {
    await env?.stop();
  });

  async function runLookups(name: string, v1: boolean) {
    const { dir, layers } = writeOciLayout(env.root, name);
    const repo = { registry: env.registry.host, repository: `lookup/${name}` };
    // The target has layer 0 already.
    await env.client.uploadBlob(repo, {
      size: layers[0].size,
      digest: layers[0].digest,
      open: async () => ({
        stream: (await import('node:stream')).Readable.from([layers[0].bytes]),
        done: Promise.resolve({ digest: layers[0].digest, size: layers[0].size }),
      }),
    });
    const push = await createPush(
      env,
      `oci:${dir}:latest`,
      `${env.registry.host}/lookup/${name}:1`,
      {
        platform: 'linux/amd64',
      },
    );
    await enqueue(env, push);
    const processor = lookupProcessor({
      ctx: env.ctx,
      client: env.client,
      sources: new SourceCache(env.config),
      requests: new PushRequests(env.ctx.store),
      logger: env.logger,
    });
    const outcomes = [];
    for (const l of [0, 1]) {
      const job = await env.ctx.queues.lookup.getJob(lookupJobId(push.id, 0, l));
      assert.ok(job);
      if (v1) {
        // As the previous release wrote it: no version, no platform, no pin.
        const { v: _v, platform: _p, pin: _pin, ...old } = job.data;
        await job.updateData(old as LookupJob);
        assert.equal(job.data.v, undefined);
      }
      outcomes.push(await processor(job));
    }
    return { push, layers, outcomes };
  }

  for (const v1 of [false, true]) {
    it(`${v1 ? 'a version-1 payload (platform read back)' : `version ${JOB_VERSION}`}: present → exists, no upload; missing → one upload child with platform and pin`, async () => {
      const { push, layers, outcomes } = await runLookups(v1 ? 'old' : 'new', v1);
      assert.equal(outcomes[0].state, 'exists');
      assert.equal(outcomes[0].digest, layers[0].digest);
      assert.equal(outcomes[1].state, 'upload');
      assert.equal(outcomes[1].digest, layers[1].digest);
      const uploads = await env.ctx.queues.upload.getJobs(['waiting', 'delayed', 'active']);
      const mine = uploads.filter((j) => j.data.pushId === push.id);
      assert.deepEqual(
        mine.map((j) => j.id),
        [uploadJobId(push.id, 0, 1)],
      );
      const data: UploadJob = mine[0].data;
      assert.equal(data.v, JOB_VERSION);
      assert.equal(data.layerIndex, 1);
      assert.equal(data.platform, 'linux/amd64');
      assert.equal(data.pin?.key, push.request.pin?.key);
      // The upload job is a child of the push's assemble job, like the lookups.
      assert.equal(mine[0].parent?.id, `push-${push.id}`);
      const state = await env.ctx.store.get(push.id);
      assert.equal(state?.layers[0].state, 'exists');
      assert.equal(state?.layers[1].state, 'pending');
    });
  }
});
