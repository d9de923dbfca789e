import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const script = join(__dirname, '..', '..', 'scripts', 'check-deps.js');

function tree(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-deps-'));
  for (const [p, text] of Object.entries(files)) {
    mkdirSync(join(dir, p, '..'), { recursive: true });
    writeFileSync(join(dir, p), text);
  }
  return dir;
}

function run(dir: string) {
  return spawnSync(process.execPath, [script, dir], { encoding: 'utf8' });
}

describe('dependency direction check', () => {
  const dirs: string[] = [];
  after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

  it('passes on the real tree', () => {
    const r = run(join(__dirname, '..', '..'));
    assert.equal(r.status, 0, r.stderr);
  });

  it('fails on a package importing a service, a library importing a queue, and a cycle', () => {
    const dir = tree({
      'packages/manifest/package.json': '{}',
      'packages/manifest/src/index.ts': "import { Queue } from 'bullmq';\nimport '@ferry/api';\n",
      'packages/queue/package.json': '{}',
      'packages/queue/src/index.ts': "import { x } from '@ferry/log';\n",
      'packages/log/package.json': '{}',
      'packages/log/src/index.ts': "import { y } from '@ferry/queue';\n",
      'services/api/package.json': '{}',
      'services/api/src/index.ts': "import '@ferry/queue';\n",
    });
    dirs.push(dir);
    const r = run(dir);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /package manifest imports service api/);
    assert.match(r.stderr, /may not import bullmq/);
    assert.match(r.stderr, /cycle: (queue -> log -> queue|log -> queue -> log)/);
  });
});
