import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { makeServerTls } from './certs';
import { freePort } from './ports';
import { spawnService, type ServiceHandle } from './processes';
import { chooseBackend, findBinary, INSTALL_HINT } from './runtime';
import { tmpDir, removeTmpDir } from './tmp';
import { startTokenServer, type TokenServer } from './token-server';

export interface RegistryOptions {
  auth?: 'none' | 'basic' | 'token';
  tls?: boolean;
  /** Accept (and verify) Docker schema1 signed manifests. */
  schema1?: boolean;
  /** The host name in `host`/`url`; the registry listens on 127.0.0.1 either way. Default 127.0.0.1. */
  hostname?: 'localhost' | '127.0.0.1';
  /** Accounts for basic/token auth; the first is the default user. Default: one random account. */
  users?: { username: string; password: string }[];
  /** Initial token lifetime in seconds (token auth); default 300. */
  tokenTtlSeconds?: number;
  /** Token auth: repositories whose tokens grant `pull` only (pushes there are refused). */
  readOnlyRepositories?: RegExp;
}

export interface RegistryTokenServer extends TokenServer {
  /**
   * Makes every token issued so far invalid at the registry: the token server
   * switches to a new signing key and the registry is restarted (same port, same
   * storage) trusting only the new certificate. In-flight requests are cut.
   */
  revokeAll(): Promise<void>;
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
  users: { username: string; password: string }[];
  /** A docker config.json with `auths` for host (base64 user:pass); empty `auths` without auth. */
  dockerConfigPath: string;
  /** The registry's configuration file (JSON, which is YAML). */
  configPath: string;
  /** For tls: the CA that signed the registry's certificate (file and PEM). */
  caFile?: string;
  caPem?: string;
  /** For token auth: the token server (realm) the registry trusts. */
  tokenServer?: RegistryTokenServer;
  /** pid of the docker-registry process (binary backend; changes after revokeAll). */
  readonly pid?: number;
  /** The registry's own log so far. */
  logs(): string;
  stop(): Promise<void>;
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

/** Writes a docker config.json; `auths` holds host only when both username and password are given. */
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

/** bcrypt htpasswd lines (docker-registry accepts only bcrypt) made by apache2-utils' htpasswd. */
function htpasswdLines(users: { username: string; password: string }[]): string {
  const bin = findBinary('htpasswd');
  if (!bin) throw new Error(`htpasswd (apache2-utils) not found for basic auth — ${INSTALL_HINT}`);
  return users
    .map(({ username, password }) => {
      // -i: password on stdin, not in the process list; -B bcrypt; -C 5: cheap cost for tests.
      const r = spawnSync(bin, ['-niB', '-C', '5', username], {
        input: password,
        encoding: 'utf8',
      });
      if (r.status !== 0)
        throw new Error(`htpasswd failed for user ${JSON.stringify(username)}: ${r.stderr.trim()}`);
      return r.stdout.trim();
    })
    .join('\n');
}

function checkOptions(opts: RegistryOptions): void {
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
  for (const u of opts.users ?? []) {
    if (
      !u.username ||
      u.username.includes(':') ||
      typeof u.password !== 'string' ||
      u.password.length === 0
    ) {
      throw new Error(
        'startRegistry: each user needs a username without ":" and a non-empty password',
      );
    }
  }
  if (opts.users && opts.users.length === 0)
    throw new Error('startRegistry: users, when given, must not be empty');
}

/**
 * A private docker-registry (distribution 2.8) on a free loopback port with
 * filesystem storage in a temp dir and deletes enabled; optionally basic or
 * token auth, TLS with a test CA, schema1 support.
 */
export async function startRegistry(opts: RegistryOptions = {}): Promise<RegistryHandle> {
  checkOptions(opts);
  const auth = opts.auth ?? 'none';
  const hostname = opts.hostname ?? '127.0.0.1';
  const plain = auth === 'none' && !opts.tls && !opts.schema1;
  const backend = await chooseBackend('docker-registry');
  if (backend.kind === 'container') {
    if (!plain)
      throw new Error(
        `docker-registry binary needed for auth/tls/schema1 variants — ${INSTALL_HINT}`,
      );
    return startRegistryContainer(hostname);
  }

  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const dir = tmpDir('registry');
    let tokenServer: TokenServer | undefined;
    try {
      const port = await freePort();
      const host = `${hostname}:${port}`;
      const scheme = opts.tls ? 'https' : 'http';
      const url = `${scheme}://${host}`;
      const storageDir = join(dir, 'storage');
      const users =
        auth === 'none'
          ? []
          : (opts.users ?? [{ username: 'ferry', password: randomBytes(12).toString('hex') }]);

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
      const http = config.http as Record<string, unknown>;

      let caFile: string | undefined;
      let caPem: string | undefined;
      if (opts.tls) {
        const { ca, server } = makeServerTls();
        caFile = join(dir, 'ca.pem');
        caPem = ca.certPem;
        writeFileSync(caFile, ca.certPem);
        writeFileSync(join(dir, 'server.pem'), server.certPem);
        writeFileSync(join(dir, 'server-key.pem'), server.keyPem, { mode: 0o600 });
        http.tls = { certificate: join(dir, 'server.pem'), key: join(dir, 'server-key.pem') };
      }

      const rootBundle = join(dir, 'token-root.pem');
      if (auth === 'basic') {
        const htpasswd = join(dir, 'htpasswd');
        writeFileSync(htpasswd, htpasswdLines(users) + '\n', { mode: 0o600 });
        config.auth = { htpasswd: { realm: 'ferry-test-registry', path: htpasswd } };
      } else if (auth === 'token') {
        const service = `ferry-test-registry-${port}`;
        tokenServer = await startTokenServer({
          service,
          issuer: 'ferry-test-token-server',
          users,
          ttlSeconds: opts.tokenTtlSeconds,
          readOnlyRepositories: opts.readOnlyRepositories,
        });
        writeFileSync(rootBundle, tokenServer.rootCertPem);
        config.auth = {
          token: {
            realm: tokenServer.url,
            service,
            issuer: 'ferry-test-token-server',
            rootcertbundle: rootBundle,
          },
        };
      }
      if (opts.schema1) config.compatibility = { schema1: { enabled: true } };

      const configPath = join(dir, 'config.yml');
      writeFileSync(configPath, JSON.stringify(config, null, 2) + '\n');
      const dockerConfigPath = join(dir, 'docker-config.json');
      writeDockerConfig(dockerConfigPath, host, users[0]?.username, users[0]?.password);

      const launch = () =>
        spawnService({
          name: 'docker-registry',
          cmd: backend.path,
          args: ['serve', configPath],
          cwd: dir,
          ready: async () => (await probe(`${scheme}://127.0.0.1:${port}/v2/`, caPem)) > 0,
        });
      let service: ServiceHandle = await launch();

      let registryTokenServer: RegistryTokenServer | undefined;
      if (tokenServer) {
        const ts = tokenServer;
        registryTokenServer = {
          url: ts.url,
          host: ts.host,
          port: ts.port,
          requests: ts.requests,
          get issued() {
            return ts.issued;
          },
          get rootCertPem() {
            return ts.rootCertPem;
          },
          get keyId() {
            return ts.keyId;
          },
          setTokenTtl: (seconds) => ts.setTokenTtl(seconds),
          issue: (account, scopes, keyIn) => ts.issue(account, scopes, keyIn),
          rotateKey: () => ts.rotateKey(),
          stop: () => ts.stop(),
          async revokeAll() {
            ts.rotateKey();
            await service.stop();
            writeFileSync(rootBundle, ts.rootCertPem);
            service = await launch();
          },
        };
      }

      let stopped: Promise<void> | undefined;
      return {
        host,
        url,
        port,
        storageDir,
        username: users[0]?.username,
        password: users[0]?.password,
        users,
        dockerConfigPath,
        configPath,
        caFile,
        caPem,
        tokenServer: registryTokenServer,
        get pid() {
          return service.pid;
        },
        logs: () => service.logs(),
        stop() {
          stopped ??= (async () => {
            await service.stop();
            await tokenServer?.stop();
            removeTmpDir(dir);
          })();
          return stopped;
        },
      };
    } catch (err) {
      await tokenServer?.stop();
      removeTmpDir(dir);
      lastError = err as Error;
      // Someone took the port between freePort() and bind: try another one.
      if (!/address already in use/i.test(lastError.message)) throw lastError;
    }
  }
  throw lastError as Error;
}

async function startRegistryContainer(hostname: string): Promise<RegistryHandle> {
  const { GenericContainer, Wait } = await import('testcontainers');
  const container = await new GenericContainer('registry:2')
    .withEnvironment({ REGISTRY_STORAGE_DELETE_ENABLED: 'true' })
    .withExposedPorts(5000)
    .withWaitStrategy(Wait.forHttp('/v2/', 5000))
    .start();
  const port = container.getMappedPort(5000);
  const host = `${hostname}:${port}`;
  const dir = tmpDir('registry');
  const dockerConfigPath = join(dir, 'docker-config.json');
  writeDockerConfig(dockerConfigPath, host);
  return {
    host,
    url: `http://${host}`,
    port,
    storageDir: '/var/lib/registry (inside the container)',
    users: [],
    dockerConfigPath,
    configPath: '/etc/docker/registry/config.yml (inside the container)',
    logs: () => '(container logs: docker logs ' + container.getId() + ')',
    async stop() {
      await container.stop();
      removeTmpDir(dir);
    },
  };
}
