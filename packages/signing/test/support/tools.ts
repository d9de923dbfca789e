import { spawn } from 'node:child_process';
import { findBinary } from '../../../../test/helpers';

/**
 * The path of a tool a test needs. Missing: the test fails under CI=true
 * (the tools are part of the test machine) and is skipped elsewhere.
 */
export function requireTool(ctx: Mocha.Context, name: string, pkg = name): string {
  const bin = findBinary(name);
  if (bin) return bin;
  if (process.env.CI === 'true') throw new Error(`${name} is missing (apt-get install ${pkg})`);
  ctx.skip();
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (never through a shell); resolves with its exit code and output. */
export function run(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; input?: string | Buffer; cwd?: string } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
    if (child.stdin) {
      child.stdin.on('error', () => undefined); // a child that exits without reading: its code tells
      child.stdin.end(opts.input);
    }
  });
}

/** run() that rejects with the command and its stderr unless it exits 0. */
export async function runOk(
  cmd: string,
  args: string[],
  opts: Parameters<typeof run>[2] = {},
): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0)
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return r;
}
