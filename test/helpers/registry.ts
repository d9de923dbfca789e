import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { freePort } from './ports';
import { spawnService } from './processes';
import { chooseBackend } from './runtime';
import { tmpDir, removeTmpDir } from './tmp';

export interface RegistryOptions {
  auth?: 'none' | 'basic' | 'token';
  tls?: boolean;
  schema1?: boolean;
  /** The host name in `host`/`url`; the registry listens on 127.0.0.1 either way. Default 127.0.0.1. */
  hostname?: 'localhost' | '127.0.0.1';
  /** Accounts for basic/token auth; the first is the default user. Default: one random account. */
  users?: { username: string; password: string }[];
}

export interface RegistryHandle {
  /** "127.0.0.1:PORT" (or "localhost:PORT") — the host part of image references. */
  host: string;
  /** http(s)://host */
  url: string;
  port: number;
  storageDir: string;
  /** Default account for basic/token auth. */
  username?: string;
  password?: string;
  /** A docker config.json with `auths` for host (base64 user:pass); empty `auths` without auth. */
  dockerConfigPath: string;
  /** The registry's configuration file (JSON, which is YAML). */
  configPath: string;
  /** pid of the docker-registry process (binary backend). */
  pid?: number;
  stop(): Promise<void>;
  /** The registry's own log so far. */
  logs(): string;
}

/** GET url; resolves with the status code, or rejects on a connection error. */
function probe(url: string, ca?: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const isHttps = url.startsWith('https:');
    const req = (isHttps ? httpsRequest : httpRequest)(
      url,
      { method: 'GET', timeout: 1_000, ...(isHttps ? { ca } : {}) },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

export function writeDockerConfig(
  path: string,
  host: string,
  username?: string,
  password?: string,
): void {
  const auths: Record<string, { auth: string }> = {};
  if (username !== undefined && password !== undefined) {
    auths[host] = { auth: Buffer.from(`${username}:${password}`).toString('base64') };
  }
  writeFileSync(path, JSON.stringify({ auths }, null, 2) + '\n', { mode: 0o600 });
}

/**
 * A private docker-registry (distribution 2.8) on a free loopback port with
 * filesystem storage in a temp dir and deletes enabled.
 */
export async function startRegistry(opts: RegistryOptions = {}): Promise<RegistryHandle> {
  const auth = opts.auth ?? 'none';
  if (!['none', 'basic', 'token'].includes(auth)) {
    throw new Error(
      `startRegistry: auth must be 'none', 'basic' or 'token', got ${JSON.stringify(auth)}`,
    );
  }
  const hostname = opts.hostname ?? '127.0.0.1';
  if (hostname !== '127.0.0.1' && hostname !== 'localhost') {
    throw new Error(
      `startRegistry: hostname must be '127.0.0.1' or 'localhost', got ${JSON.stringify(hostname)}`,
    );
  }
  if (auth !== 'none' || opts.tls || opts.schema1) {
    throw new Error('startRegistry: auth, tls and schema1 variants are not available yet');
  }
  const backend = await chooseBackend('docker-registry');
  if (backend.kind === 'container')
    throw new Error('startRegistry: container backend not wired yet');

  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const dir = tmpDir('registry');
    const storageDir = join(dir, 'storage');
    const port = await freePort();
    const host = `${hostname}:${port}`;
    const scheme = 'http';
    const url = `${scheme}://${host}`;
    const config: Record<string, unknown> = {
      version: '0.1',
      log: { level: 'info', formatter: 'text', fields: { service: 'registry' } },
      storage: {
        filesystem: { rootdirectory: storageDir },
        delete: { enabled: true },
        maintenance: { uploadpurging: { enabled: false } },
      },
      http: {
        addr: `127.0.0.1:${port}`,
        secret: randomBytes(24).toString('hex'),
        headers: { 'X-Content-Type-Options': ['nosniff'] },
      },
    };
    const configPath = join(dir, 'config.yml');
    writeFileSync(configPath, JSON.stringify(config, null, 2) + '\n');
    const dockerConfigPath = join(dir, 'docker-config.json');
    writeDockerConfig(dockerConfigPath, host);
    try {
      const service = await spawnService({
        name: 'docker-registry',
        cmd: backend.path,
        args: ['serve', configPath],
        cwd: dir,
        ready: async () => (await probe(`${scheme}://127.0.0.1:${port}/v2/`)) > 0,
      });
      return {
        host,
        url,
        port,
        storageDir,
        dockerConfigPath,
        configPath,
        pid: service.pid,
        logs: () => service.logs(),
        async stop() {
          await service.stop();
          removeTmpDir(dir);
        },
      };
    } catch (err) {
      removeTmpDir(dir);
      lastError = err as Error;
      if (!/address already in use/i.test(lastError.message)) throw lastError;
    }
  }
  throw lastError as Error;
}
