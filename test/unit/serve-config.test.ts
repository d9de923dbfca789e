import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from '../helpers/ports';
import { tmpDir } from '../helpers/tmp';

/*
 * `ferry serve` refuses to start on a bad value, with one line naming the
 * variable — before it connects to anything (Redis is not running here: a role
 * that did not refuse would come up and wait for it, and the test would time out).
 */

const repoRoot = join(__dirname, '..', '..');
const bin = join(repoRoot, 'bin', 'ferry.js');

function ferry(
  args: string[],
  env: Record<string, string>,
  timeoutMs = 60_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--conditions=ferry-source', '--require', 'tsx/cjs', bin, ...args],
      {
        env: {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          HOME: process.env.HOME ?? '/tmp',
          ...env,
        },
        cwd: repoRoot,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`ferry ${args.join(' ')} did not exit in ${timeoutMs} ms: ${stderr}`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('ferry serve: a bad value stops the process at start, naming the variable', function () {
  let base: Record<string, string>;
  let root: string;

  before(async () => {
    root = tmpDir('serve-config');
    const redisPort = await freePort(); // nothing listens there
    base = {
      FERRY_REDIS_URL: `redis://127.0.0.1:${redisPort}`,
      FERRY_PORT: String(await freePort()),
      FERRY_SOURCE_ROOT: root,
      FERRY_LOG_LEVEL: 'error',
      FERRY_SHUTDOWN_TIMEOUT: '2',
      FERRY_DOCKER_CONFIG: '/nonexistent/ferry-serve-config/config.json',
    };
  });

  function assertRefused(
    r: { code: number | null; stdout: string; stderr: string },
    variable: string,
    detail: RegExp,
  ): void {
    assert.notEqual(r.code, 0, r.stderr);
    const line = r.stderr
      .split('\n')
      .find((l) => l.startsWith('ferry: FERRY_CONFIG_INVALID: invalid configuration: '));
    assert.ok(line, `one line names the problem; stderr was:\n${r.stderr}`);
    assert.match(line, new RegExp(`\\b${variable}: `));
    assert.match(line, detail);
  }

  for (const role of ['api', 'lookup', 'upload', 'coordinator']) {
    it(`--role ${role}: FERRY_SOURCE_ROOT that does not exist`, async () => {
      const missing = join(root, 'no-such-dir');
      const r = await ferry(['serve', '--role', role], { ...base, FERRY_SOURCE_ROOT: missing });
      assertRefused(r, 'FERRY_SOURCE_ROOT', /does not exist/);
    });
  }

  it('--role api: FERRY_SOURCE_ROOT that is a file', async () => {
    const file = join(root, 'a-file');
    writeFileSync(file, 'not a directory\n');
    const r = await ferry(['serve', '--role', 'api'], { ...base, FERRY_SOURCE_ROOT: file });
    assertRefused(r, 'FERRY_SOURCE_ROOT', /is not a directory/);
  });

  it('FERRY_INSECURE_REGISTRIES=300.1.1.1/99', async () => {
    const r = await ferry(['serve', '--role', 'upload'], {
      ...base,
      FERRY_INSECURE_REGISTRIES: 'localhost,300.1.1.1/99',
    });
    assertRefused(r, 'FERRY_INSECURE_REGISTRIES', /300\.1\.1\.1\/99/);
  });

  it('FERRY_REGISTRY_ALLOW with a malformed entry', async () => {
    const r = await ferry(['serve'], {
      ...base,
      FERRY_REGISTRY_ALLOW: 'registry.example.com,https://registry.example.com/team',
    });
    assertRefused(r, 'FERRY_REGISTRY_ALLOW', /https:\/\/registry\.example\.com\/team/);
  });

  it('client commands do not need the source root: `ferry status` with a missing FERRY_SOURCE_ROOT', async () => {
    const r = await ferry(['status', 'abc'], {
      ...base,
      FERRY_SOURCE_ROOT: join(root, 'no-such-dir'),
      FERRY_URL: `http://127.0.0.1:${base.FERRY_PORT}`,
    });
    assert.notEqual(r.code, 0); // nothing listens at FERRY_URL
    assert.doesNotMatch(r.stderr, /FERRY_SOURCE_ROOT|FERRY_CONFIG_INVALID/);
  });
});
