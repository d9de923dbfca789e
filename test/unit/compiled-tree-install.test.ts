import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { freePort } from '../helpers/ports';
import { spawnService, type ServiceHandle } from '../helpers/processes';
import { startRedis, type RedisHandle } from '../helpers/redis';
import { startRegistry, type RegistryHandle } from '../helpers/registry';
import { tmpDir } from '../helpers/tmp';

const repo = join(__dirname, '..', '..');

/** An env for the installed tree: no ferry-source condition, no tsx preloaded. */
function prodEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '/tmp',
    NODE_OPTIONS: '',
    NODE_ENV: 'production',
    ...extra,
  };
}

function run(cmd: string, args: string[], cwd: string, env = prodEnv()) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((done, fail) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', fail);
    child.on('exit', (code) => done({ code, stdout, stderr }));
  });
}

describe('the compiled tree, installed with npm ci --omit=dev (no tsx), serves and pushes', function () {
  let tree: string;
  let redis: RedisHandle | undefined;
  let registry: RegistryHandle | undefined;
  let ferry: ServiceHandle | undefined;

  before(async function () {
    const build = spawnSync('npm', ['run', '--silent', 'build'], { cwd: repo, encoding: 'utf8' });
    assert.equal(build.status, 0, build.stdout + build.stderr);
    tree = tmpDir('ferry-compiled-tree');
    const tracked = execFileSync('git', ['ls-files', '-z'], { cwd: repo, encoding: 'utf8' })
      .split('\0')
      .filter((f) => f && existsSync(join(repo, f)));
    for (const f of tracked) {
      mkdirSync(dirname(join(tree, f)), { recursive: true });
      cpSync(join(repo, f), join(tree, f));
    }
    for (const kind of ['packages', 'services']) {
      for (const name of execFileSync('ls', [join(repo, kind)], { encoding: 'utf8' }).split('\n')) {
        const dist = join(repo, kind, name, 'dist');
        if (name && existsSync(dist))
          cpSync(dist, join(tree, kind, name, 'dist'), { recursive: true });
      }
    }
    const install = await run(
      'npm',
      ['ci', '--omit=dev', '--prefer-offline', '--no-audit', '--no-fund'],
      tree,
      prodEnv({ npm_config_cache: join(process.env.HOME ?? '/tmp', '.npm') }),
    );
    assert.equal(install.code, 0, install.stdout + install.stderr);
  });

  after(async () => {
    await ferry?.stop();
    await registry?.stop();
    await redis?.stop();
  });

  it('has no tsx, and bin/ferry.js serve + push work', async () => {
    const tsx = await run(process.execPath, ['-e', "require.resolve('tsx')"], tree);
    assert.notEqual(tsx.code, 0, 'tsx is not installed in production');
    assert.match(tsx.stderr, /Cannot find module 'tsx'/);

    redis = await startRedis();
    registry = await startRegistry();
    const port = await freePort();
    const root = tmpDir('ferry-compiled-src');
    mkdirSync(join(root, 'img', 'layers', 'base', 'etc'), { recursive: true });
    writeFileSync(join(root, 'img', 'layers', 'base', 'etc', 'hello'), 'hello from dist\n');
    const env = prodEnv({
      FERRY_REDIS_URL: redis.url,
      FERRY_HOST: '127.0.0.1',
      FERRY_PORT: String(port),
      FERRY_SOURCE_ROOT: root,
      FERRY_URL: `http://127.0.0.1:${port}`,
      FERRY_QUEUE_PREFIX: '{compiled}',
      FERRY_LOG_LEVEL: 'warn',
      FERRY_DOCKER_CONFIG: join(root, 'no-docker-config.json'),
    });
    ferry = await spawnService({
      name: 'ferry-compiled',
      cmd: process.execPath,
      args: ['bin/ferry.js', 'serve'],
      cwd: tree,
      env,
      timeoutMs: 30_000,
      ready: async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).ok,
    });
    const push = await run(
      process.execPath,
      ['bin/ferry.js', 'push', `dir:${join(root, 'img')}`, `${registry.host}/x:1`],
      tree,
      env,
    );
    assert.equal(push.code, 0, push.stderr + ferry.logs());
    const last = push.stdout.trim().split('\n').pop() ?? '';
    assert.match(last, /^sha256:[0-9a-f]{64}$/);
  });
});
