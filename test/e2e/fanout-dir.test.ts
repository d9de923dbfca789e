/**
 * A dir: image fanned out to two registries is tarred and gzipped once: the
 * upload worker (its own `ferry serve --role upload` process) reads the
 * layer's files once — counted from outside the code, in /proc/<pid>/io's
 * rchar — and streams the one compressed copy to both registries, which both
 * hold the image afterwards (skopeo).
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  freePort,
  skopeoInspect,
  spawnService,
  startRedis,
  startRegistry,
  tmpDir,
  type RedisHandle,
  type RegistryHandle,
  type ServiceHandle,
} from '../helpers';
import { pushAndWait, stackConfig, startWorkers, writeRandomFile, type WorkerStack } from './stack';

const MB = 1024 * 1024;
const repoRoot = join(__dirname, '..', '..');

/** Bytes the process has read through read() and friends so far (files and sockets). */
function rchar(pid: number): number {
  const m = /^rchar:\s*(\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'));
  if (!m) throw new Error(`no rchar in /proc/${pid}/io`);
  return Number(m[1]);
}

describe('e2e: a dir: fan-out reads the layer once', function () {
  this.timeout(300_000);
  let redis: RedisHandle;
  let x: RegistryHandle;
  let y: RegistryHandle;
  let stack: WorkerStack;
  let upload: ServiceHandle;
  let root: string;

  before(async () => {
    [redis, x, y] = await Promise.all([startRedis(), startRegistry(), startRegistry()]);
    root = tmpDir('fanout-dir');
    mkdirSync(join(root, 'img', 'layers', '01-data'), { recursive: true });
    writeRandomFile(join(root, 'img', 'layers', '01-data', 'random.bin'), 40);
    const env = {
      FERRY_REDIS_URL: redis.url,
      FERRY_REGISTRY_ALLOW: '127.0.0.1',
      FERRY_SOURCE_ROOT: root,
      FERRY_GZIP_LEVEL: '1',
    };
    const config = stackConfig(env);
    // Lookup, coordinator and API here; the only upload worker is a process of its own.
    stack = await startWorkers(config, { uploadWorkers: 0 });
    const healthPort = await freePort();
    upload = await spawnService({
      name: 'ferry-upload',
      cmd: process.execPath,
      args: [join(repoRoot, 'bin', 'ferry.js'), 'serve', '--role', 'upload'],
      env: {
        ...env,
        FERRY_QUEUE_PREFIX: config.queuePrefix,
        FERRY_DOCKER_CONFIG: '/nonexistent/ferry-test/config.json',
        FERRY_HEALTH_PORT: String(healthPort),
        FERRY_LOG_LEVEL: 'warn',
        NODE_ENV: 'production',
      },
      cwd: repoRoot,
      timeoutMs: 30_000,
      ready: async () => (await fetch(`http://127.0.0.1:${healthPort}/readyz`)).ok,
    });
  });
  after(async () => {
    await upload?.stop();
    await stack?.stop();
    await Promise.allSettled([redis, x, y].map((r) => r?.stop()));
  });

  it('one read of a 40 MB layer for two registries; both hold the image', async () => {
    const before = rchar(upload.pid);
    const targets = [`${x.host}/fan/app:1`, `${y.host}/fan/app:1`];
    const state = await pushAndWait(stack, {
      source: `dir:${join(root, 'img')}`,
      target: targets[0],
      targets: [targets[1]],
    });
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));
    const read = rchar(upload.pid) - before;
    assert.equal(state.layers[0].state, 'uploaded');
    for (const t of targets) {
      const raw = await skopeoInspect(`docker://${t}`, ['--raw']);
      assert.equal(raw.layers[0].digest, state.layers[0].digest, t);
    }
    // Two separate uploads would read the 40 MB file twice (≥ 80 MB).
    assert.ok(read >= 40 * MB, `the upload worker read ${read} bytes`);
    assert.ok(
      read < 60 * MB,
      `the upload worker read ${(read / MB).toFixed(1)} MB for a 40 MB layer`,
    );
  });
});
