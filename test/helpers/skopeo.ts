import { spawn } from 'node:child_process';
import { findBinary, INSTALL_HINT } from './runtime';

export interface SkopeoOptions {
  /** Kill skopeo after this long; default 120 000 ms. */
  timeoutMs?: number;
  /** Added to the environment (e.g. GNUPGHOME for standalone-verify). */
  env?: Record<string, string>;
}

/**
 * Runs skopeo with exactly these arguments (nothing implicit: callers pass
 * --tls-verify=false, --authfile, ...). Resolves with its output on exit 0,
 * rejects with the command line and stderr otherwise.
 */
export async function skopeo(
  args: string[],
  opts: SkopeoOptions = {},
): Promise<{ stdout: string; stderr: string }> {
  const bin = findBinary('skopeo');
  if (!bin) throw new Error(`skopeo not found — ${INSTALL_HINT}`);
  const timeoutMs = opts.timeoutMs ?? 120_000;
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(opts.env ? { env: { ...process.env, ...opts.env } } : {}),
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    const timer = setTimeout(() => {
      stderr += `\n(killed after ${timeoutMs} ms)`;
      if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`skopeo ${args.join(' ')}: ${err.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve({ stdout, stderr });
      else {
        const how = signal ? `signal ${signal}` : `exit ${code}`;
        const err = new Error(
          `skopeo ${args.join(' ')} failed (${how}): ${stderr.trim()}`,
        ) as Error & {
          stderr: string;
          stdout: string;
          exitCode: number | null;
        };
        err.stderr = stderr;
        err.stdout = stdout;
        err.exitCode = code;
        reject(err);
      }
    });
  });
}

/**
 * `skopeo inspect --tls-verify=false [extra...] REF`, parsed. Pass `--raw` in extra
 * to get the manifest itself, `--config` for the image config.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function skopeoInspect(ref: string, extra: string[] = []): Promise<any> {
  const { stdout } = await skopeo(['inspect', '--tls-verify=false', ...extra, ref]);
  try {
    return JSON.parse(stdout);
  } catch {
    throw new Error(`skopeo inspect ${ref}: output is not JSON: ${stdout.slice(0, 200)}`);
  }
}
