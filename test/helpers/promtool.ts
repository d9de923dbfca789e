import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';

/** True when `promtool` (Debian package `prometheus`) is on PATH. */
export function hasPromtool(): boolean {
  return spawnSync('promtool', ['--version'], { stdio: 'ignore' }).status === 0;
}

/**
 * For a test that needs promtool: under CI=true a missing promtool fails the
 * test (the setup script installs it: scripts/install-system-deps.sh);
 * elsewhere the test is skipped with the reason.
 */
export function requirePromtool(ctx: Mocha.Context): void {
  if (hasPromtool()) return;
  if (process.env.CI === 'true')
    assert.fail('promtool is missing (apt-get install prometheus, or npm run setup)');
  ctx.skip();
}

/** Pipes an exposition into `promtool check metrics`; its exit status and what it printed. */
export function promtoolCheck(text: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output }));
    child.stdin.end(text);
  });
}

/** Asserts promtool finds no problem (lint included) in the exposition. */
export async function assertPromtoolClean(text: string, what: string): Promise<void> {
  const r = await promtoolCheck(text);
  assert.equal(r.code, 0, `promtool check metrics on ${what}:\n${r.output}`);
  assert.equal(r.output.trim(), '', `promtool check metrics on ${what} printed:\n${r.output}`);
}

/** Sample lines whose value is NaN or ±Inf outside a histogram's le="+Inf" label. */
export function badValues(text: string): string[] {
  return text
    .split('\n')
    .filter((l) => l && !l.startsWith('#'))
    .filter((l) => /\s(NaN|[+-]?Inf)(\s|$)/i.test(l));
}
