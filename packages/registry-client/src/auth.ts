/**
 * Registry credentials and auth challenges.
 *
 * Credentials come from a docker config.json, exactly as docker finds them:
 * `credHelpers[host]`, else `credsStore` (both run `docker-credential-NAME get`
 * with the server on stdin), else `auths[host]` (base64 `auth`, or
 * username/password, or identitytoken). Each is looked up by the registry host
 * it belongs to and is only ever sent to that host (or to the token realm its
 * challenge names, which must itself be allowed).
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ErrorCodes, RegistryError } from './errors';

export interface Credentials {
  username?: string;
  password?: string;
  /** An OAuth2 refresh token (docker's identitytoken). */
  identityToken?: string;
}

export interface Challenge {
  scheme: string; // lower-case: 'basic' | 'bearer' | ...
  params: Record<string, string>;
}

/**
 * Parses WWW-Authenticate: one or more challenges, `Scheme k=v, k="v", ...`.
 * Several header lines may be given.
 */
export function parseChallenges(header: string | string[] | undefined): Challenge[] {
  if (!header) return [];
  const lines = Array.isArray(header) ? header : [header];
  const out: Challenge[] = [];
  for (const line of lines) {
    let i = 0;
    const s = line;
    let current: Challenge | undefined;
    const skipWs = (): void => {
      while (i < s.length && (s[i] === ' ' || s[i] === '\t')) i++;
    };
    const token = (): string => {
      const start = i;
      while (i < s.length && /[!#$%&'*+\-.^_`|~0-9A-Za-z]/.test(s[i]!)) i++;
      return s.slice(start, i);
    };
    while (i < s.length) {
      skipWs();
      if (s[i] === ',') {
        i++;
        continue;
      }
      const tok = token();
      if (!tok) {
        i++;
        continue;
      }
      skipWs();
      if (s[i] === '=' && current) {
        i++;
        skipWs();
        let value = '';
        if (s[i] === '"') {
          i++;
          while (i < s.length && s[i] !== '"') {
            if (s[i] === '\\' && i + 1 < s.length) i++;
            value += s[i];
            i++;
          }
          i++;
        } else {
          const start = i;
          while (i < s.length && s[i] !== ',' && s[i] !== ' ') i++;
          value = s.slice(start, i);
        }
        current.params[tok.toLowerCase()] = value;
      } else {
        // token68 after a scheme, or a new scheme
        if (current && s[i] === '=') continue;
        current = { scheme: tok.toLowerCase(), params: {} };
        out.push(current);
      }
    }
  }
  return out;
}

interface DockerConfigFile {
  auths?: Record<
    string,
    { auth?: string; username?: string; password?: string; identitytoken?: string }
  >;
  credsStore?: string;
  credHelpers?: Record<string, string>;
}

/** The keys a config.json may use for a registry host (docker.io has its legacy URL). */
export function configKeysFor(host: string): string[] {
  if (host === 'docker.io' || host === 'index.docker.io' || host === 'registry-1.docker.io') {
    return ['https://index.docker.io/v1/', 'index.docker.io', 'docker.io', 'registry-1.docker.io'];
  }
  return [host];
}

/** Strips scheme and path from a config.json key: "https://host:5000/v1/" → "host:5000". */
function keyHost(key: string): string {
  return key
    .replace(/^[a-z][a-z0-9+.-]*:\/\//i, '')
    .replace(/\/.*$/, '')
    .toLowerCase();
}

/** Default location: $DOCKER_CONFIG/config.json or ~/.docker/config.json. */
export function defaultDockerConfigPath(): string {
  const dir = process.env.DOCKER_CONFIG || join(homedir(), '.docker');
  return join(dir, 'config.json');
}

/** Runs `docker-credential-NAME get` with the server URL on stdin. undefined: not found. */
export function runCredentialHelper(
  name: string,
  server: string,
  timeoutMs = 10_000,
): Promise<Credentials | undefined> {
  if (!/^[A-Za-z0-9_.-]+$/.test(name)) {
    return Promise.reject(
      new RegistryError(ErrorCodes.CREDENTIALS, `credential helper name "${name}" is not valid`),
    );
  }
  const bin = `docker-credential-${name}`;
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['get'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new RegistryError(
          ErrorCodes.CREDENTIALS,
          `${bin} get did not answer within ${timeoutMs} ms`,
        ),
      );
    }, timeoutMs);
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        new RegistryError(
          ErrorCodes.CREDENTIALS,
          e.code === 'ENOENT'
            ? `credential helper ${bin} is not on PATH`
            : `credential helper ${bin} failed to start: ${e.message}`,
        ),
      );
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8').trim();
      if (code !== 0) {
        // The helper protocol prints the reason on stdout; never include a secret (there is none on failure).
        const reason = (stdout || Buffer.concat(err).toString('utf8')).trim().slice(0, 200);
        if (/credentials not found/i.test(reason)) return resolve(undefined);
        return reject(
          new RegistryError(ErrorCodes.CREDENTIALS, `${bin} get exited with ${code}: ${reason}`),
        );
      }
      try {
        const parsed = JSON.parse(stdout) as { Username?: string; Secret?: string };
        if (!parsed.Secret) return resolve(undefined);
        if (parsed.Username === '<token>') return resolve({ identityToken: parsed.Secret });
        resolve({ username: parsed.Username ?? '', password: parsed.Secret });
      } catch {
        reject(
          new RegistryError(
            ErrorCodes.CREDENTIALS,
            `${bin} get printed something that is not JSON`,
          ),
        );
      }
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(server);
  });
}

/** Reads credentials per registry host from a docker config.json; caches them briefly. */
export class CredentialStore {
  private cache = new Map<string, { at: number; value: Promise<Credentials | undefined> }>();

  constructor(
    private readonly configPath: string,
    private readonly ttlMs = 60_000,
  ) {}

  get(host: string): Promise<Credentials | undefined> {
    const hit = this.cache.get(host);
    if (hit && Date.now() - hit.at < this.ttlMs) return hit.value;
    const value = this.load(host);
    this.cache.set(host, { at: Date.now(), value });
    value.catch(() => this.cache.delete(host));
    return value;
  }

  private async readConfig(): Promise<DockerConfigFile | undefined> {
    let text: string;
    try {
      text = await readFile(this.configPath, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new RegistryError(
        ErrorCodes.CREDENTIALS,
        `cannot read docker config ${this.configPath}: ${(e as Error).message}`,
      );
    }
    try {
      return JSON.parse(text) as DockerConfigFile;
    } catch (e) {
      throw new RegistryError(
        ErrorCodes.CREDENTIALS,
        `docker config ${this.configPath} is not valid JSON: ${(e as Error).message}`,
      );
    }
  }

  private async load(host: string): Promise<Credentials | undefined> {
    const cfg = await this.readConfig();
    if (!cfg) return undefined;
    const keys = configKeysFor(host);
    const helper = keys.map((k) => cfg.credHelpers?.[k]).find((h) => h) ?? cfg.credsStore;
    if (helper) {
      const fromHelper = await runCredentialHelper(helper, keys[0]!);
      if (fromHelper) return fromHelper;
    }
    const auths = cfg.auths ?? {};
    const wanted = new Set(keys.map((k) => keyHost(k)));
    for (const [key, entry] of Object.entries(auths)) {
      if (!wanted.has(keyHost(key)) || !entry) continue;
      if (entry.identitytoken) return { identityToken: entry.identitytoken };
      if (entry.auth) {
        const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
        const i = decoded.indexOf(':');
        if (i < 0) {
          throw new RegistryError(
            ErrorCodes.CREDENTIALS,
            `docker config ${this.configPath}: "auth" for ${key} is not base64 of user:password`,
          );
        }
        return { username: decoded.slice(0, i), password: decoded.slice(i + 1) };
      }
      if (entry.username !== undefined && entry.password !== undefined) {
        return { username: entry.username, password: entry.password };
      }
    }
    return undefined;
  }
}
