import { freePort } from './ports';
import { spawnService, waitForPidExit, type ServiceHandle } from './processes';
import { redisPing } from './redis';
import { findBinary, INSTALL_HINT } from './runtime';
import { tmpDir, removeTmpDir } from './tmp';

export interface DurableRedisHandle {
  url: string;
  host: string;
  port: number;
  dir: string;
  /** pid of the current redis-server (changes after restart). */
  readonly pid: number;
  /** SIGKILL by pid (no shutdown, no final fsync); resolves once it has exited. */
  kill(): Promise<void>;
  /** Starts redis-server again on the same port and directory (the AOF is replayed). */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * A redis-server whose data survives SIGKILL: AOF with `appendfsync always`,
 * loopback, a free port and its own temp dir, `maxmemory-policy noeviction`.
 * kill() and restart() keep the port and the directory.
 */
export async function startDurableRedis(
  opts: { maxclients?: number } = {},
): Promise<DurableRedisHandle> {
  const bin = findBinary('redis-server');
  if (!bin) throw new Error(`redis-server not found — ${INSTALL_HINT}`);
  const dir = tmpDir('redis-aof');
  const port = await freePort();
  const launch = () =>
    spawnService({
      name: 'redis-server (aof)',
      cmd: bin,
      args: [
        '--port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--dir',
        dir,
        '--save',
        '',
        '--appendonly',
        'yes',
        '--appendfsync',
        'always',
        '--maxmemory-policy',
        'noeviction',
        '--maxclients',
        String(opts.maxclients ?? 10_000),
        '--protected-mode',
        'yes',
        '--daemonize',
        'no',
        '--logfile',
        '',
      ],
      cwd: dir,
      timeoutMs: 30_000,
      ready: () => redisPing('127.0.0.1', port),
    });
  let service: ServiceHandle = await launch();
  let stopped: Promise<void> | undefined;
  return {
    url: `redis://127.0.0.1:${port}`,
    host: '127.0.0.1',
    port,
    dir,
    get pid() {
      return service.pid;
    },
    async kill() {
      try {
        process.kill(service.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      await waitForPidExit(service.pid, 10_000);
      await service.stop();
    },
    async restart() {
      if (!service.exited) await service.stop();
      // The port may linger a moment after a SIGKILL; spawnService fails fast then, so retry a few times.
      let last: Error | undefined;
      for (let i = 0; i < 20; i++) {
        try {
          service = await launch();
          return;
        } catch (err) {
          last = err as Error;
          await new Promise((r) => setTimeout(r, 250));
        }
      }
      throw last as Error;
    },
    stop() {
      stopped ??= (async () => {
        await service.stop();
        removeTmpDir(dir);
      })();
      return stopped;
    },
  };
}
