import { connect } from 'node:net';
import { freePort } from './ports';
import { spawnService } from './processes';
import { chooseBackend } from './runtime';
import { tmpDir, removeTmpDir } from './tmp';

export interface RedisHandle {
  /** redis://127.0.0.1:PORT */
  url: string;
  host: string;
  port: number;
  /** Present when started from the local binary. */
  pid?: number;
  stop(): Promise<void>;
}

/** Sends PING over a raw socket; true on "+PONG". */
export async function redisPing(host: string, port: number, timeoutMs = 1_000): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const socket = connect({ host, port });
    let reply = '';
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (d) => {
      reply += d.toString('latin1');
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'));
    });
    socket.once('error', () => done(false));
    socket.once('close', () => done(false));
  });
}

/**
 * A private redis-server: loopback only, a free port, its own temp dir, no
 * persistence, `maxmemory-policy noeviction` (BullMQ requires it).
 */
export async function startRedis(opts: { port?: number } = {}): Promise<RedisHandle> {
  const backend = await chooseBackend('redis-server');
  if (backend.kind === 'container') {
    if (opts.port !== undefined)
      throw new Error('startRedis({ port }) needs the local redis-server');
    return startRedisContainer();
  }

  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    // A caller that names the port (a service configured before Redis starts) gets that one.
    const port = opts.port ?? (await freePort());
    const dir = tmpDir('redis');
    try {
      const service = await spawnService({
        name: 'redis-server',
        cmd: backend.path,
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
          'no',
          '--maxmemory-policy',
          'noeviction',
          '--protected-mode',
          'yes',
          '--daemonize',
          'no',
          '--logfile',
          '',
        ],
        cwd: dir,
        ready: () => redisPing('127.0.0.1', port),
      });
      return {
        url: `redis://127.0.0.1:${port}`,
        host: '127.0.0.1',
        port,
        pid: service.pid,
        async stop() {
          await service.stop();
          removeTmpDir(dir);
        },
      };
    } catch (err) {
      removeTmpDir(dir);
      lastError = err as Error;
      // Someone took the port between freePort() and bind: try another one.
      if (!/Address already in use/i.test(lastError.message)) throw lastError;
    }
  }
  throw lastError as Error;
}

async function startRedisContainer(): Promise<RedisHandle> {
  const { GenericContainer, Wait } = await import('testcontainers');
  const container = await new GenericContainer('redis:7')
    .withCommand([
      'redis-server',
      '--save',
      '',
      '--appendonly',
      'no',
      '--maxmemory-policy',
      'noeviction',
    ])
    .withExposedPorts(6379)
    .withWaitStrategy(Wait.forLogMessage(/Ready to accept connections/))
    .start();
  const port = container.getMappedPort(6379);
  return {
    url: `redis://127.0.0.1:${port}`,
    host: '127.0.0.1',
    port,
    async stop() {
      await container.stop();
    },
  };
}
