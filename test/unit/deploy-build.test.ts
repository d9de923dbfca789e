import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';

const repo = join(__dirname, '..', '..');

/**
 * No Docker engine runs here, so deploy/Dockerfile's build stage is run as
 * plain commands in a clean copy (scripts/docker-build-check.sh): npm ci, npm
 * run build, npm prune --omit=dev and the copy to the final stage, then the
 * final stage's content is checked (ferry --help, no tsx, no sources).
 */
describe('deploy/Dockerfile build steps (scripts/docker-build-check.sh)', function () {
  this.timeout(600_000);

  it('run in a clean copy, and the final stage holds a working ferry without dev dependencies', async () => {
    const result = await new Promise<{ code: number | null; output: string }>((done, fail) => {
      const child = spawn('bash', [join(repo, 'scripts', 'docker-build-check.sh')], {
        cwd: repo,
        env: {
          PATH: process.env.PATH ?? '',
          HOME: process.env.HOME ?? '/tmp',
          ...(process.env.TMPDIR ? { TMPDIR: process.env.TMPDIR } : {}),
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let output = '';
      child.stdout.on('data', (d: Buffer) => (output += d.toString()));
      child.stderr.on('data', (d: Buffer) => (output += d.toString()));
      child.on('error', fail);
      child.on('exit', (code) => done({ code, output }));
    });
    assert.equal(result.code, 0, result.output.slice(-4000));
    assert.match(result.output, /\+ RUN npm ci /);
    assert.match(result.output, /npm prune --omit=dev/);
    assert.match(result.output, /docker-build-check: ok/);
  });
});
