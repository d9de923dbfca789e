/**
 * Ferry as users run it: `ferry serve` processes (all roles in one, or each
 * role as its own process with several upload workers), driven through the
 * REST API, its Server-Sent Events and the `ferry` CLI.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { openSource } from '@ferry/image-source';
import { parseSse } from '../helpers/sse';
import { copyHello, writeRandomFile } from './stack';
import {
  skopeoInspect,
  startRedis,
  startRegistry,
  tmpDir,
  freePort,
  spawnService,
  type RedisHandle,
  type RegistryHandle,
  type ServiceHandle,
} from '../helpers';

const repoRoot = join(__dirname, '..', '..');
const bin = join(repoRoot, 'bin', 'ferry.js');
const TOKEN = 'e2e-' + randomBytes(8).toString('hex');

async function httpOk(url: string): Promise<boolean> {
  try {
    const r = await fetch(url);
    return r.ok;
  } catch {
    return false;
  }
}

interface Ferry {
  url: string;
  env: Record<string, string>;
  services: ServiceHandle[];
  stop(): Promise<void>;
}

/** Starts `ferry serve` for the given roles, one process per entry; the api role answers on url. */
async function startFerry(
  base: Record<string, string>,
  processes: ('all' | 'api' | 'lookup' | 'upload' | 'coordinator')[],
): Promise<Ferry> {
  const port = await freePort();
  const env: Record<string, string> = {
    FERRY_QUEUE_PREFIX: `{e2e${randomBytes(3).toString('hex')}}`,
    ...base,
    FERRY_PORT: String(port),
    FERRY_URL: `http://127.0.0.1:${port}`,
    FERRY_API_TOKENS: TOKEN,
    FERRY_TOKEN: TOKEN,
    FERRY_LOG_LEVEL: 'warn',
    FERRY_DOCKER_CONFIG: '/nonexistent/ferry-e2e/config.json',
    NODE_ENV: 'production',
  };
  const services: ServiceHandle[] = [];
  for (const role of processes) {
    const healthPort = role === 'all' || role === 'api' ? undefined : await freePort();
    services.push(
      await spawnService({
        name: `ferry-${role}`,
        cmd: process.execPath,
        args: [bin, 'serve', ...(role === 'all' ? [] : ['--role', role])],
        env: { ...env, ...(healthPort ? { FERRY_HEALTH_PORT: String(healthPort) } : {}) },
        cwd: repoRoot,
        timeoutMs: 30_000,
        ready: () =>
          httpOk(
            healthPort
              ? `http://127.0.0.1:${healthPort}/readyz`
              : `http://127.0.0.1:${port}/readyz`,
          ),
      }),
    );
  }
  return {
    url: env.FERRY_URL,
    env,
    services,
    async stop() {
      await Promise.allSettled(services.map((s) => s.stop()));
    },
  };
}

/** Runs the ferry CLI; resolves with its exit code and output. */
function cli(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], {
      env: { ...process.env, ...env },
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

async function api(ferry: Ferry, method: string, path: string, body?: unknown) {
  const r = await fetch(ferry.url + path, {
    method,
    headers: {
      authorization: `Bearer ${TOKEN}`,
      ...(body ? { 'content-type': 'application/json' } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : undefined };
}

async function waitFinal(ferry: Ferry, id: string, timeoutMs = 180_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await api(ferry, 'GET', `/v1/pushes/${id}`);
    if (['succeeded', 'failed', 'cancelled'].includes(r.body?.status)) return r.body;
    if (Date.now() > deadline) throw new Error(`push ${id} not final: ${JSON.stringify(r.body)}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

/** Reads an SSE stream to its end: [{id, data}] in order. */
async function readEvents(
  ferry: Ferry,
  id: string,
  lastEventId?: string,
): Promise<{ id: string; data: { type: string; status?: string } }[]> {
  const r = await fetch(`${ferry.url}/v1/pushes/${id}/events`, {
    headers: {
      authorization: `Bearer ${TOKEN}`,
      accept: 'text/event-stream',
      ...(lastEventId ? { 'last-event-id': lastEventId } : {}),
    },
  });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') ?? '', /text\/event-stream/);
  const text = await r.text();
  return parseSse(text)
    .filter((e) => e.id !== undefined && e.data !== '')
    .map((e) => ({ id: e.id as string, data: JSON.parse(e.data) }));
}

describe('ferry serve processes, REST, SSE and the CLI', function () {
  this.timeout(300_000);
  let redis: RedisHandle;
  let registryA: RegistryHandle;
  let registryB: RegistryHandle;
  let root: string;

  before(async () => {
    [redis, registryA, registryB] = await Promise.all([
      startRedis(),
      startRegistry(),
      startRegistry(),
    ]);
    root = tmpDir('processes');
    copyHello(root);
  });
  after(async () => {
    await Promise.allSettled([redis?.stop(), registryA?.stop(), registryB?.stop()]);
  });

  it('each role as its own process (two upload workers) gives the same result as one `ferry serve`', async () => {
    const base = {
      FERRY_REDIS_URL: redis.url,
      FERRY_SOURCE_ROOT: root,
      FERRY_REGISTRY_ALLOW: `${registryA.host},${registryB.host}`,
    };
    const split = await startFerry(base, ['api', 'lookup', 'upload', 'upload', 'coordinator']);
    const whole = await startFerry(base, ['all']);
    try {
      const source = `dir:${join(root, 'hello')}`;
      const a = await cli(
        ['push', source, `${registryA.host}/team/hello:1.0`, '--tag', 'stable'],
        split.env,
      );
      assert.equal(a.code, 0, a.stderr);
      const b = await cli(
        ['push', source, `${registryB.host}/team/hello:1.0`, '--tag', 'stable'],
        whole.env,
      );
      assert.equal(b.code, 0, b.stderr);
      const digestA = a.stdout.trim().split('\n').at(-1)!;
      const digestB = b.stdout.trim().split('\n').at(-1)!;
      assert.match(digestA, /^sha256:[0-9a-f]{64}$/);
      assert.equal(digestA, digestB);
      assert.match(a.stderr, /Pushed/);
      const infoA = await skopeoInspect(`docker://${registryA.host}/team/hello:stable`);
      const infoB = await skopeoInspect(`docker://${registryB.host}/team/hello:stable`);
      assert.equal(infoA.Digest, digestA);
      assert.deepEqual(infoA.Layers, infoB.Layers);

      // Again through the split stack: every layer exists, nothing sent.
      const again = await cli(['push', source, `${registryA.host}/team/hello:1.0`], split.env);
      assert.equal(again.code, 0, again.stderr);
      assert.equal(again.stdout.trim().split('\n').at(-1), digestA);
      assert.equal((again.stderr.match(/Layer already exists/g) ?? []).length, 2, again.stderr);
    } finally {
      await Promise.allSettled([split.stop(), whole.stop()]);
    }
  });

  it('REST: POST, SSE in order with Last-Event-ID resume, GET shows the final state', async () => {
    const ferry = await startFerry(
      {
        FERRY_REDIS_URL: redis.url,
        FERRY_SOURCE_ROOT: root,
        FERRY_REGISTRY_ALLOW: registryA.host,
      },
      ['all'],
    );
    try {
      const created = await api(ferry, 'POST', '/v1/pushes', {
        source: `dir:${join(root, 'hello')}`,
        target: `${registryA.host}/rest/hello:1`,
        tags: ['two'],
      });
      assert.equal(created.status, 202, JSON.stringify(created.body));
      const id = created.body.id as string;
      const events = await readEvents(ferry, id);
      const types = events.map((e) => e.data.type);
      assert.equal(events[0].data.status, 'queued');
      assert.equal(events.at(-1)!.data.type, 'status');
      assert.equal(events.at(-1)!.data.status, 'succeeded');
      // Layers before the manifest, the manifest before any tag, tags before the final status.
      const lastLayer = types.lastIndexOf('layer');
      const firstManifest = types.indexOf('manifest');
      const firstTag = types.indexOf('tag');
      assert.ok(lastLayer >= 0 && lastLayer < firstManifest, types.join(','));
      assert.ok(firstManifest < firstTag && firstTag < types.length - 1, types.join(','));
      // Ids strictly increase, and resuming after the third gives exactly the rest.
      const tail = await readEvents(ferry, id, events[2].id);
      assert.deepEqual(
        tail.map((e) => e.id),
        events.slice(3).map((e) => e.id),
      );
      const state = await waitFinal(ferry, id);
      assert.equal(state.status, 'succeeded');
      assert.deepEqual(state.tags, ['two']);
      assert.deepEqual(
        state.layers.map((l: { state: string }) => l.state),
        ['uploaded', 'uploaded'],
      );
      const info = await skopeoInspect(`docker://${registryA.host}/rest/hello:two`);
      assert.equal(info.Digest, state.manifest.digest);
    } finally {
      await ferry.stop();
    }
  });

  it('an upload worker killed mid-upload: another takes the job over and the push ends with the same digest', async () => {
    // A 300 MB incompressible layer, gzip -1, sent in 16 MB chunks: long enough to kill the worker mid-way.
    const img = join(root, 'big');
    mkdirSync(join(img, 'layers', '01-data'), { recursive: true });
    writeRandomFile(join(img, 'layers', '01-data', 'blob.bin'), 300);
    const opened = await openSource(`dir:${img}`, { root, gzipLevel: 1 });
    const reference = await opened.images[0].layers[0].open();
    reference.stream.resume();
    const expected = await reference.done;

    const base = {
      FERRY_REDIS_URL: redis.url,
      FERRY_SOURCE_ROOT: root,
      FERRY_REGISTRY_ALLOW: registryB.host,
      FERRY_GZIP_LEVEL: '1',
      FERRY_UPLOAD_CHUNK_SIZE: String(16 * 1024 * 1024),
      FERRY_JOB_LOCK_TIMEOUT: '2',
    };
    const ferry = await startFerry(base, ['api', 'lookup', 'coordinator', 'upload']);
    let second: Ferry | undefined;
    try {
      const created = await api(ferry, 'POST', '/v1/pushes', {
        source: `dir:${img}`,
        target: `${registryB.host}/big/data:1`,
      });
      assert.equal(created.status, 202, JSON.stringify(created.body));
      const id = created.body.id as string;
      // Wait until the upload is under way, then kill its worker outright.
      const deadline = Date.now() + 60_000;
      for (;;) {
        const s = await api(ferry, 'GET', `/v1/pushes/${id}`);
        const l = s.body.layers[0];
        if (l.state === 'uploading' && l.bytesSent > 0) break;
        assert.notEqual(
          s.body.status,
          'succeeded',
          'the upload finished before it could be killed',
        );
        if (Date.now() > deadline) throw new Error('upload never started');
        await new Promise((r) => setTimeout(r, 20));
      }
      const victim = ferry.services.at(-1)!;
      process.kill(victim.pid, 'SIGKILL');
      // Another upload worker process picks the stalled job up once its lock lapses.
      second = await startFerry({ ...base, FERRY_QUEUE_PREFIX: ferry.env.FERRY_QUEUE_PREFIX }, [
        'upload',
      ]);
      const state = await waitFinal(ferry, id);
      assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
      assert.equal(state.layers[0].digest, expected.digest);
      assert.equal(state.layers[0].size, expected.size);
      const info = await skopeoInspect(`docker://${registryB.host}/big/data:1`);
      assert.deepEqual(info.Layers, [expected.digest]);
    } finally {
      await Promise.allSettled([ferry.stop(), second?.stop()]);
    }
  });

  it('SIGTERM stops an upload worker within FERRY_SHUTDOWN_TIMEOUT; its job is finished elsewhere', async () => {
    const img = join(root, 'big2');
    mkdirSync(join(img, 'layers', '01-data'), { recursive: true });
    writeRandomFile(join(img, 'layers', '01-data', 'blob.bin'), 300);
    const base = {
      FERRY_REDIS_URL: redis.url,
      FERRY_SOURCE_ROOT: root,
      FERRY_REGISTRY_ALLOW: registryA.host,
      FERRY_GZIP_LEVEL: '1',
      FERRY_UPLOAD_CHUNK_SIZE: String(16 * 1024 * 1024),
      FERRY_JOB_LOCK_TIMEOUT: '2',
      FERRY_SHUTDOWN_TIMEOUT: '1',
    };
    const ferry = await startFerry(base, ['api', 'lookup', 'coordinator', 'upload']);
    let second: Ferry | undefined;
    try {
      const created = await api(ferry, 'POST', '/v1/pushes', {
        source: `dir:${img}`,
        target: `${registryA.host}/term/data:1`,
      });
      assert.equal(created.status, 202, JSON.stringify(created.body));
      const id = created.body.id as string;
      for (;;) {
        const s = await api(ferry, 'GET', `/v1/pushes/${id}`);
        if (s.body.layers[0].state === 'uploading' && s.body.layers[0].bytesSent > 0) break;
        assert.notEqual(s.body.status, 'succeeded', 'the upload finished before SIGTERM');
        await new Promise((r) => setTimeout(r, 20));
      }
      const worker = ferry.services.at(-1)!;
      const t0 = Date.now();
      process.kill(worker.pid, 'SIGTERM');
      while (!worker.exited && Date.now() - t0 < 15_000) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(worker.exited, 'the worker did not stop after SIGTERM');
      // It stopped by its own shutdown path, not by the harness's SIGKILL: exit status 1
      // says the deadline (FERRY_SHUTDOWN_TIMEOUT 1 s) abandoned the running upload
      // (0 had it finished in time); no signal ended it.
      assert.equal(worker.exitStatus?.signal, null);
      assert.ok([0, 1].includes(worker.exitStatus?.code ?? -1), JSON.stringify(worker.exitStatus));
      second = await startFerry({ ...base, FERRY_QUEUE_PREFIX: ferry.env.FERRY_QUEUE_PREFIX }, [
        'upload',
      ]);
      const state = await waitFinal(ferry, id);
      assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
      const info = await skopeoInspect(`docker://${registryA.host}/term/data:1`);
      assert.deepEqual(info.Layers, [state.layers[0].digest]);
    } finally {
      await Promise.allSettled([ferry.stop(), second?.stop()]);
    }
  });
});
