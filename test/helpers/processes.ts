import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface ServiceSpec {
  /** A short name for messages ("redis", "registry"). */
  name: string;
  /** The executable (absolute path or a name on PATH). */
  cmd: string;
  args: string[];
  /** Added to (not replacing) process.env. */
  env?: Record<string, string>;
  cwd?: string;
  /** Answers true once the service serves; polled until then. A throw counts as "not yet". */
  ready: () => Promise<boolean>;
  /** How long to wait for ready(); default 20 000 ms. */
  timeoutMs?: number;
  /** Delay between ready() polls; default 50 ms. */
  pollMs?: number;
  /** SIGTERM → SIGKILL grace on stop(); default 5 000 ms. */
  graceMs?: number;
}

export interface ServiceHandle {
  readonly name: string;
  readonly pid: number;
  /** SIGTERM by pid, SIGKILL after the grace period; resolves once the process has exited. Idempotent. */
  stop(): Promise<void>;
  /** Everything the service wrote to stdout and stderr so far (the last 256 KiB). */
  logs(): string;
  /** True once the process has exited. */
  readonly exited: boolean;
  /** The exit code or signal once exited. */
  readonly exitStatus: { code: number | null; signal: NodeJS.Signals | null } | undefined;
}

const LOG_LIMIT = 256 * 1024;
const live = new Map<number, ServiceHandle & { killNow(): void }>();
let exitHooked = false;

function hookProcessExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  // 'exit' handlers must be synchronous: SIGKILL every service we started, by pid.
  process.on('exit', () => {
    for (const service of live.values()) service.killNow();
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      for (const service of live.values()) service.killNow();
      // Only we listen: behave like the default action (exit with 128 + signal number).
      if (process.listenerCount(signal) === 1) {
        process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1));
      }
    });
  }
}

/** Services started by spawnService that have not exited yet. */
export function liveServices(): ServiceHandle[] {
  return [...live.values()];
}

/** Stops every live service (used by the mocha root hook and by tests). */
export async function stopAllServices(): Promise<void> {
  await Promise.all([...live.values()].map((s) => s.stop()));
}

/** True when a process with this pid exists and is not a zombie (signal 0 probe + /proc state). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    // "pid (comm) S ..." — a zombie (Z) or dead (X) process has exited, it only waits to be reaped.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return true; // no /proc here: trust the signal probe
  }
}

/** Polls until pid is gone (true) or timeoutMs passes (false). */
export async function waitForPidExit(pid: number, timeoutMs = 5_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (pidAlive(pid)) {
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 25));
  }
  return true;
}

function tail(text: string, lines = 30): string {
  const all = text.trimEnd().split('\n');
  return all.slice(-lines).join('\n');
}

/**
 * Starts a process, waits until spec.ready() answers true, and tracks it so it is
 * stopped at exit. Rejects — with the service's last log lines — when the process
 * cannot be started, exits before it is ready, or is not ready within timeoutMs
 * (it is killed then).
 */
export async function spawnService(spec: ServiceSpec): Promise<ServiceHandle> {
  hookProcessExit();
  const timeoutMs = spec.timeoutMs ?? 20_000;
  const pollMs = spec.pollMs ?? 50;
  const graceMs = spec.graceMs ?? 5_000;

  let child: ChildProcess;
  try {
    child = spawn(spec.cmd, spec.args, {
      cwd: spec.cwd,
      env: { ...process.env, ...(spec.env ?? {}) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (err) {
    throw new Error(`${spec.name}: cannot start ${spec.cmd}: ${(err as Error).message}`, {
      cause: err,
    });
  }

  let output = '';
  const append = (chunk: Buffer) => {
    output += chunk.toString('utf8');
    if (output.length > LOG_LIMIT) output = output.slice(output.length - LOG_LIMIT);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);

  let exitStatus: ServiceHandle['exitStatus'];
  let spawnError: Error | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exitStatus = { code, signal };
      resolve();
    });
    child.once('error', (err) => {
      spawnError = err;
      if (child.pid === undefined) {
        exitStatus = { code: null, signal: null };
        resolve();
      }
    });
  });

  // 'spawn' or 'error' tells whether the executable started at all.
  await new Promise<void>((resolve) => {
    child.once('spawn', resolve);
    child.once('error', () => resolve());
  });
  if (spawnError && child.pid === undefined) {
    const hint = (spawnError as NodeJS.ErrnoException).code === 'ENOENT' ? ' (not installed?)' : '';
    throw new Error(`${spec.name}: cannot start ${spec.cmd}${hint}: ${spawnError.message}`);
  }
  const pid = child.pid as number;

  let stopping: Promise<void> | undefined;
  const handle: ServiceHandle & { killNow(): void } = {
    name: spec.name,
    pid,
    logs: () => output,
    get exited() {
      return exitStatus !== undefined;
    },
    get exitStatus() {
      return exitStatus;
    },
    killNow() {
      if (exitStatus !== undefined) return;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    },
    stop() {
      if (stopping) return stopping;
      stopping = (async () => {
        if (exitStatus === undefined) {
          try {
            process.kill(pid, 'SIGTERM');
          } catch {
            // already gone
          }
          let timer: NodeJS.Timeout | undefined;
          const graceOver = new Promise<boolean>((resolve) => {
            timer = setTimeout(() => resolve(true), graceMs);
          });
          const timedOut = await Promise.race([exited.then(() => false), graceOver]);
          clearTimeout(timer);
          if (timedOut) {
            try {
              process.kill(pid, 'SIGKILL');
            } catch {
              // already gone
            }
            await exited;
          }
        }
        live.delete(pid);
      })();
      return stopping;
    },
  };
  live.set(pid, handle);
  void exited.then(() => live.delete(pid));

  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exitStatus !== undefined) {
      live.delete(pid);
      const how = exitStatus.signal ? `signal ${exitStatus.signal}` : `code ${exitStatus.code}`;
      throw new Error(
        `${spec.name} (${spec.cmd}) exited with ${how} before it was ready; last output:\n${tail(output)}`,
      );
    }
    let ok: boolean;
    try {
      ok = await spec.ready();
    } catch {
      ok = false; // not answering yet
    }
    if (ok) return handle;
    if (Date.now() >= deadline) {
      await handle.stop();
      throw new Error(
        `${spec.name} (${spec.cmd}) was not ready within ${timeoutMs} ms; last output:\n${tail(output)}`,
      );
    }
    await Promise.race([new Promise((r) => setTimeout(r, pollMs)), exited]);
  }
}
