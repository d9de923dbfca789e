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

function deps(...names: string[]): string {
  return JSON.stringify({ dependencies: Object.fromEntries(names.map((n) => [n, '*'])) });
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
      'packages/manifest/package.json': deps('bullmq', '@ferry/api'),
      'packages/manifest/src/index.ts': "import { Queue } from 'bullmq';\nimport '@ferry/api';\n",
      'packages/queue/package.json': deps('@ferry/log'),
      'packages/queue/src/index.ts': "import { x } from '@ferry/log';\n",
      'packages/log/package.json': deps('@ferry/queue'),
      'packages/log/src/index.ts': "import { y } from '@ferry/queue';\n",
      'services/api/package.json': deps('@ferry/queue'),
      'services/api/src/index.ts': "import '@ferry/queue';\n",
    });
    dirs.push(dir);
    const r = run(dir);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /package manifest imports service api/);
    assert.match(r.stderr, /may not import bullmq/);
    assert.match(r.stderr, /cycle: (queue -> log -> queue|log -> queue -> log)/);
    assert.doesNotMatch(r.stderr, /does not declare/);
  });

  it('fails on a package importing what its package.json does not declare', () => {
    const dir = tree({
      'packages/log/package.json': deps('winston'),
      'packages/log/src/index.ts':
        "import winston from 'winston';\nimport { createHash } from 'node:crypto';\nimport fs from 'fs';\n",
      'packages/queue/package.json': deps('bullmq'),
      'packages/queue/src/index.ts':
        "import { Queue } from 'bullmq';\nimport type { Redis } from 'ioredis';\nimport '@ferry/log/sub';\n",
      'services/api/package.json': '{}',
      'services/api/src/app.ts': "const f = require('fastify');\n",
    });
    dirs.push(dir);
    const r = run(dir);
    assert.equal(r.status, 1);
    const lines = r.stderr.split('\n').filter((l) => /does not declare/.test(l));
    assert.equal(lines.length, 3, r.stderr);
    assert.match(
      r.stderr,
      /queue\/src\/index\.ts: imports ioredis, which packages\/queue\/package\.json/,
    );
    assert.match(r.stderr, /queue\/src\/index\.ts: imports @ferry\/log, which/);
    assert.match(
      r.stderr,
      /api\/src\/app\.ts: imports fastify, which services\/api\/package\.json/,
    );
  });
});
