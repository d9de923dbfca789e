/**
 * The assemble processor against a real redis-server and docker-registry, with
 * the lookup and upload roles running and a coordinator whose registry client
 * records its calls: the config blob is mounted from a repository the blob
 * index knows holds it (HEAD, then mount — never uploaded again), and a dir:
 * config.json edited after the push was accepted fails the assemble step with
 * FERRY_SOURCE_CHANGED before any manifest or tag is written.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assembleJobId, QUEUE_NAMES, type AssembleJob, type PushResult } from '@ferry/queue';
import {
  RegistryClient,
  type BlobSource,
  type CallOptions,
  type RepoRef,
  type UploadOptions,
} from '@ferry/registry-client';
import { SourceCache, startWorker, type RoleHandle } from '@ferry/runtime';
import { start as startLookup } from '@ferry/lookup-worker';
import { start as startUpload } from '@ferry/upload-worker';
import { assembleProcessor } from '@ferry/coordinator';
import { skopeoInspect } from '../../../test/helpers';
import { copyHello, waitForPush } from '../../../test/e2e/stack';
import {
  createPush,
  startServiceEnv,
  until,
  writeOciImage,
  type ServiceEnv,
} from '../../upload-worker/test/helpers';
import { enqueue } from '../../upload-worker/test/processes';

interface Call {
  op: 'exists' | 'mount' | 'upload' | 'manifest';
  repository: string;
  digest?: string;
  from?: string;
  reference?: string;
}

/** The coordinator's registry client, recording what it asks of the registry. */
class RecordingClient extends RegistryClient {
  readonly calls: Call[] = [];

  override blobExists(repo: RepoRef, digest: string, call?: CallOptions) {
    this.calls.push({ op: 'exists', repository: repo.repository, digest });
    return super.blobExists(repo, digest, call);
  }

  override mountBlob(repo: RepoRef, digest: string, from: string, call?: CallOptions) {
    this.calls.push({ op: 'mount', repository: repo.repository, digest, from });
    return super.mountBlob(repo, digest, from, call);
  }

  override uploadBlob(repo: RepoRef, source: BlobSource, opts?: UploadOptions) {
    this.calls.push({ op: 'upload', repository: repo.repository, digest: source.digest });
    return super.uploadBlob(repo, source, opts);
  }

  override putManifest(...args: Parameters<RegistryClient['putManifest']>) {
    this.calls.push({ op: 'manifest', repository: args[0].repository, reference: args[1] });
    return super.putManifest(...args);
  }
}

describe('coordinator: assembleProcessor (real redis-server and docker-registry)', function () {
  this.timeout(180_000);
  let env: ServiceEnv;
  let roles: RoleHandle[] = [];
  const clients: RecordingClient[] = [];

  before(async () => {
    env = await startServiceEnv('assemble');
    roles = [await startLookup(env.config, env.logger), await startUpload(env.config, env.logger)];
  });
  after(async () => {
    await Promise.allSettled(roles.map((r) => r.close()));
    await Promise.allSettled(clients.map((c) => c.close()));
    await env?.stop();
  });

  /** A coordinator (the role's worker and processor) whose registry client records its calls. */
  async function startAssembler(): Promise<{ client: RecordingClient; role: RoleHandle }> {
    const client = new RecordingClient({
      allow: env.config.registryAllow,
      insecure: env.config.insecureRegistries,
    });
    clients.push(client);
    const role = await startWorker<AssembleJob, PushResult | undefined>({
      role: 'coordinator',
      queueName: QUEUE_NAMES.assemble,
      concurrency: 1,
      config: env.config,
      logger: env.logger,
      processor: (ctx) =>
        assembleProcessor({
          ctx,
          client,
          sources: new SourceCache(env.config),
          logger: env.logger,
          gzipLevel: env.config.gzipLevel,
        }),
    });
    roles.push(role);
    return { client, role };
  }

  /** The digest a tag points at, or undefined when there is no such tag. */
  async function tagDigest(ref: string): Promise<string | undefined> {
    try {
      return (await skopeoInspect(`docker://${ref}`)).Digest;
    } catch {
      return undefined;
    }
  }

  it('the config blob is mounted from a repository that holds it, never uploaded again', async () => {
    const img = copyHello(env.root);
    const { client, role } = await startAssembler();
    try {
      const host = env.registry.host;
      const a = await createPush(env, `dir:${img}`, `${host}/mount/a:1`);
      await enqueue(env, a);
      const first = await waitForPush(env.ctx, a.id);
      assert.equal(first.status, 'succeeded', JSON.stringify(first.error));
      const manifestA = await skopeoInspect(`docker://${host}/mount/a:1`, ['--raw']);
      const configDigest: string = manifestA.config.digest;
      // Repository a got the config by upload, and the blob index knows a holds it.
      assert.ok(
        client.calls.some((c) => c.op === 'upload' && c.digest === configDigest),
        JSON.stringify(client.calls),
      );
      assert.ok((await env.ctx.blobs.reposWithBlob(host, configDigest)).includes('mount/a'));

      client.calls.length = 0;
      const b = await createPush(env, `dir:${img}`, `${host}/mount/b:1`);
      await enqueue(env, b);
      const second = await waitForPush(env.ctx, b.id);
      assert.equal(second.status, 'succeeded', JSON.stringify(second.error));
      const forConfig = client.calls.filter((c) => c.digest === configDigest);
      // HEAD on b (absent), then a mount from a; no upload of the config to b.
      assert.deepEqual(
        forConfig.map((c) => `${c.op} ${c.repository}${c.from ? ` from ${c.from}` : ''}`),
        ['exists mount/b', 'mount mount/b from mount/a', 'exists mount/b'],
      );
      assert.equal(client.calls.filter((c) => c.op === 'upload').length, 0);
      // The registry has it in b: skopeo reads b's config, the same image as a.
      const manifestB = await skopeoInspect(`docker://${host}/mount/b:1`, ['--raw']);
      assert.equal(manifestB.config.digest, configDigest);
      const config = await skopeoInspect(`docker://${host}/mount/b:1`, ['--config']);
      assert.equal(config.config.Labels['org.opencontainers.image.title'], 'ferry-hello');
      assert.equal(await tagDigest(`${host}/mount/b:1`), second.manifest?.digest);
      assert.equal(second.manifest?.digest, first.manifest?.digest);
    } finally {
      await role.close();
    }
  });

  it('an image whose config the lookup looked for: the coordinator puts it without looking, or leaves it', async () => {
    const { dir, config } = writeOciImage(env.root, 'config-hint');
    const { client, role } = await startAssembler();
    try {
      const host = env.registry.host;
      const first = await createPush(env, `oci:${dir}:latest`, `${host}/hint/app:1`);
      assert.equal(first.layout.lookupPerImage, true);
      await enqueue(env, first);
      const a = await waitForPush(env.ctx, first.id);
      assert.equal(a.status, 'succeeded', JSON.stringify(a.error));
      const forConfig = () =>
        client.calls.filter((c) => c.digest === config.digest).map((c) => c.op);
      // The lookup found it missing: one upload, no HEAD of the coordinator's own.
      assert.deepEqual(forConfig(), ['upload']);
      client.calls.length = 0;
      const again = await createPush(env, `oci:${dir}:latest`, `${host}/hint/app:2`);
      await enqueue(env, again);
      const b = await waitForPush(env.ctx, again.id);
      assert.equal(b.status, 'succeeded', JSON.stringify(b.error));
      // The lookup found it: the coordinator does not ask the registry about it at all.
      assert.deepEqual(forConfig(), []);
      const raw = await skopeoInspect(`docker://${host}/hint/app:2`, ['--raw']);
      assert.equal(raw.config.digest, config.digest);
      const read = await skopeoInspect(`docker://${host}/hint/app:2`, ['--config']);
      assert.equal(read.architecture, 'amd64');
    } finally {
      await role.close();
    }
  });

  it('nothing to sign: the manifest is stored by its tag PUTs (none by digest), its event before the tags', async () => {
    const img = copyHello(env.root);
    const { client, role } = await startAssembler();
    try {
      const host = env.registry.host;
      const p = await createPush(env, `dir:${img}`, `${host}/bytag/app:1`, { tags: ['two'] });
      await enqueue(env, p);
      const done = await waitForPush(env.ctx, p.id);
      assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
      const digest = done.manifest!.digest;
      // One PUT per tag and none by digest: the first tag PUT stored the manifest.
      assert.deepEqual(
        client.calls.filter((c) => c.op === 'manifest').map((c) => c.reference),
        ['1', 'two'],
      );
      // The registry serves it by digest and by both tags.
      const byDigest = await skopeoInspect(`docker://${host}/bytag/app@${digest}`, ['--raw']);
      assert.equal(byDigest.schemaVersion, 2);
      assert.equal(await tagDigest(`${host}/bytag/app:1`), digest);
      assert.equal(await tagDigest(`${host}/bytag/app:two`), digest);
      // Events keep their order: the manifest, then each tag, then the end (sent after them, on
      // the same connection, without waiting for them first).
      const events = (await env.ctx.store.readEvents(p.id))
        .map((e) => e.event)
        .filter((e) => e.type === 'manifest' || e.type === 'tag' || e.type === 'status')
        .map((e) =>
          e.type === 'status' ? `status ${e.status}` : `${e.type} ${'tag' in e ? e.tag : e.digest}`,
        );
      assert.deepEqual(events.slice(-4), [
        `manifest ${digest}`,
        'tag 1',
        'tag two',
        'status succeeded',
      ]);
    } finally {
      await role.close();
    }
  });

  it('a dir: config.json edited after the push was accepted: FERRY_SOURCE_CHANGED, nothing written', async () => {
    const parent = join(env.root, 'edited');
    mkdirSync(parent, { recursive: true });
    const img = copyHello(parent);
    const target = `${env.registry.host}/edited/img:1`;
    const push = await createPush(env, `dir:${img}`, target);
    // No coordinator runs yet: the assemble step is held until every layer job has finished.
    await enqueue(env, push);
    const parentJob = await env.ctx.queues.assemble.getJob(assembleJobId(push.id));
    assert.ok(parentJob);
    await until(async () => (await parentJob.getState()) === 'waiting');
    const cfgPath = join(img, 'config.json');
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
    cfg.config.Env = [...cfg.config.Env, 'EDITED=after-accept'];
    writeFileSync(cfgPath, JSON.stringify(cfg));

    const { client, role } = await startAssembler();
    try {
      const state = await waitForPush(env.ctx, push.id);
      assert.equal(state.status, 'failed');
      assert.equal(state.error?.code, 'FERRY_SOURCE_CHANGED', JSON.stringify(state.error));
      assert.match(state.error?.message ?? '', /config\.json/);
      // Failed once, for good (never retried), by the assemble step.
      await until(async () => (await parentJob.getState()) === 'failed');
      const failed = await env.ctx.queues.assemble.getJob(assembleJobId(push.id));
      assert.equal(failed?.attemptsMade, 1);
      assert.match(failed?.failedReason ?? '', /^FERRY_SOURCE_CHANGED: .*config\.json/);
      // Nothing reached the registry from the coordinator: no config, no manifest, no tag.
      assert.deepEqual(client.calls, []);
      assert.equal(await tagDigest(target), undefined);
    } finally {
      await role.close();
    }
  });
});
