/**
 * Environment → typed, validated, frozen configuration.
 *
 * Every variable Ferry reads is listed in VARIABLES (and in the README). A bad
 * value fails at start with a ConfigError that names every bad variable at once.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { normalizePatternHost, parseTokens, type TokenEntry } from './tokens';

export {
  normalizePattern,
  normalizePatternHost,
  parseTokenEntries,
  parseTokens,
  type TokenEntry,
  type TokenScope,
} from './tokens';

/** The largest FERRY_UPLOAD_CHUNK_SIZE: each upload keeps one chunk in memory. */
export const MAX_UPLOAD_CHUNK_SIZE = 512 * 1024 * 1024;

export interface RedisNode {
  readonly host: string;
  readonly port: number;
}

/**
 * Where Redis is — exactly one of FERRY_REDIS_URL (one node; the default),
 * FERRY_REDIS_CLUSTER (a Redis Cluster's seed nodes) or FERRY_REDIS_SENTINELS
 * with FERRY_REDIS_SENTINEL_NAME (a master found through Sentinel).
 */
export type RedisTarget =
  | { readonly mode: 'standalone'; readonly url: string }
  | { readonly mode: 'cluster'; readonly nodes: readonly RedisNode[] }
  | {
      readonly mode: 'sentinel';
      readonly sentinels: readonly RedisNode[];
      readonly name: string;
    };

export interface FerryConfig {
  /** Every connection is made from this (@ferry/queue's createConnection). */
  readonly redis: RedisTarget;
  /**
   * FERRY_REDIS_URL or its default; only meaningful when `redis.mode` is
   * 'standalone' (kept for callers that pass the URL on to a child process).
   */
  readonly redisUrl: string;
  readonly host: string;
  readonly port: number;
  readonly sourceRoot: string;
  readonly registryAllow: readonly string[];
  readonly insecureRegistries: readonly string[];
  readonly caFile: string | undefined;
  readonly apiTokens: readonly string[];
  /** FERRY_ADMIN_TOKENS: tokens that may also pause, clean and retry in Bull Board. */
  readonly adminTokens: readonly string[];
  /**
   * Both lists parsed: `TOKEN` or `NAME=TOKEN@PATTERN[;PATTERN…]`, each with its
   * name, scope (push | admin) and target patterns. Empty: the API is open.
   */
  readonly tokens: readonly TokenEntry[];
  readonly dockerConfig: string;
  readonly signingKey: string | undefined;
  readonly signingCert: string | undefined;
  readonly pgpKey: string | undefined;
  readonly keyPassphraseFile: string | undefined;
  readonly lookupConcurrency: number;
  readonly uploadConcurrency: number;
  /** Bytes per PATCH (0: one streamed PATCH); at most MAX_UPLOAD_CHUNK_SIZE. */
  readonly uploadChunkSize: number;
  readonly gzipLevel: number;
  readonly queuePrefix: string;
  readonly stateTtl: number;
  readonly shutdownTimeout: number;
  readonly jobLockTimeout: number;
  /** FERRY_RETRY_BUDGET: seconds a push may go without progress (bytes accepted, a job finished) before it fails. */
  readonly retryBudget: number;
  readonly healthPort: number | undefined;
  readonly logLevel: string;
  readonly url: string;
  readonly token: string | undefined;
}

export class ConfigError extends Error {
  readonly code = 'FERRY_CONFIG_INVALID';
  constructor(readonly problems: readonly { variable: string; message: string }[]) {
    super(
      'invalid configuration: ' + problems.map((p) => `${p.variable}: ${p.message}`).join('; '),
    );
    this.name = 'ConfigError';
  }
}

export const VARIABLES = [
  'FERRY_REDIS_URL',
  'FERRY_REDIS_CLUSTER',
  'FERRY_REDIS_SENTINELS',
  'FERRY_REDIS_SENTINEL_NAME',
  'FERRY_HOST',
  'FERRY_PORT',
  'FERRY_SOURCE_ROOT',
  'FERRY_REGISTRY_ALLOW',
  'FERRY_INSECURE_REGISTRIES',
  'FERRY_CA_FILE',
  'FERRY_API_TOKENS',
  'FERRY_ADMIN_TOKENS',
  'FERRY_DOCKER_CONFIG',
  'FERRY_SIGNING_KEY',
  'FERRY_SIGNING_CERT',
  'FERRY_PGP_KEY',
  'FERRY_KEY_PASSPHRASE_FILE',
  'FERRY_LOOKUP_CONCURRENCY',
  'FERRY_UPLOAD_CONCURRENCY',
  'FERRY_UPLOAD_CHUNK_SIZE',
  'FERRY_GZIP_LEVEL',
  'FERRY_QUEUE_PREFIX',
  'FERRY_STATE_TTL',
  'FERRY_SHUTDOWN_TIMEOUT',
  'FERRY_JOB_LOCK_TIMEOUT',
  'FERRY_RETRY_BUDGET',
  'FERRY_HEALTH_PORT',
  'FERRY_LOG_LEVEL',
  'FERRY_URL',
  'FERRY_TOKEN',
] as const;

const LOG_LEVELS = ['error', 'warn', 'info', 'http', 'verbose', 'debug', 'silly'];

type Env = Record<string, string | undefined>;

class Reader {
  readonly problems: { variable: string; message: string }[] = [];
  constructor(private readonly env: Env) {}

  raw(name: string): string | undefined {
    const v = this.env[name];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  }

  string(name: string, def: string): string {
    return this.raw(name) ?? def;
  }

  optional(name: string): string | undefined {
    return this.raw(name);
  }

  list(name: string, def: readonly string[]): string[] {
    const v = this.env[name];
    if (v === undefined) return [...def];
    return v
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s.length > 0);
  }

  int(name: string, def: number, min: number, max: number): number {
    const v = this.raw(name);
    if (v === undefined) return def;
    if (!/^-?\d+$/.test(v)) {
      this.problems.push({
        variable: name,
        message: `expected an integer, got ${JSON.stringify(v)}`,
      });
      return def;
    }
    const n = Number(v);
    if (n < min || n > max) {
      this.problems.push({
        variable: name,
        message: `must be between ${min} and ${max}, got ${n}`,
      });
      return def;
    }
    return n;
  }

  url(name: string, def: string, protocols: string[]): string {
    const v = this.string(name, def);
    try {
      const u = new URL(v);
      if (!protocols.includes(u.protocol)) {
        this.problems.push({
          variable: name,
          message: `expected a ${protocols.join(' or ')} URL, got ${u.protocol}`,
        });
      }
    } catch {
      this.problems.push({ variable: name, message: 'not a valid URL' });
    }
    return v;
  }
}

/**
 * Why one FERRY_REGISTRY_ALLOW / FERRY_INSECURE_REGISTRIES host entry is not
 * `host[:port]` (`*` wildcards, IPv6 in brackets or bare), or undefined when it is.
 */
export function hostEntryProblem(entry: string): string | undefined {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(entry))
    return 'write the host[:port] alone, without a scheme';
  if (/[/\s@?#\\]/.test(entry)) return 'a host[:port] holds no "/", "@", "?", "#" or spaces';
  if (isIP(entry) === 6) return undefined; // a bare IPv6 literal
  if (normalizePatternHost(entry) === undefined) {
    return 'not a host name, IP address or host:port (port 1-65535; `*` wildcards)';
  }
  return undefined;
}

/** Why one FERRY_INSECURE_REGISTRIES CIDR entry (`10.0.0.0/8`, `fd00::/8`) is invalid, or undefined. */
export function cidrProblem(entry: string): string | undefined {
  const slash = entry.indexOf('/');
  const base = entry.slice(0, slash).replace(/^\[(.*)\]$/, '$1');
  const bits = entry.slice(slash + 1);
  const family = isIP(base);
  if (family === 0) return `${JSON.stringify(base)} is not an IPv4 or IPv6 address`;
  const max = family === 4 ? 32 : 128;
  if (!/^[0-9]{1,3}$/.test(bits) || Number(bits) > max)
    return `the prefix length must be 0-${max}, got ${JSON.stringify(bits)}`;
  return undefined;
}

function checkEntries(
  r: Reader,
  variable: string,
  entries: readonly string[],
  cidrs: boolean,
): void {
  for (const entry of entries) {
    const problem =
      cidrs && entry.includes('/') && !/^[a-z][a-z0-9+.-]*:\/\//i.test(entry)
        ? cidrProblem(entry)
        : hostEntryProblem(entry);
    if (problem) r.problems.push({ variable, message: `${JSON.stringify(entry)}: ${problem}` });
  }
}

/**
 * The hash tag of a key or prefix: the text between the first `{` and the next
 * `}` when not empty (Redis Cluster hashes only that), else undefined.
 */
export function hashTagOf(s: string): string | undefined {
  const open = s.indexOf('{');
  const close = open < 0 ? -1 : s.indexOf('}', open + 1);
  return close > open + 1 ? s.slice(open + 1, close) : undefined;
}

/**
 * Parses a `host:port,…` list (IPv6 as `[addr]:port`; a missing port is
 * defaultPort). Problems are added under `variable`.
 */
export function parseRedisNodes(
  variable: string,
  value: string,
  defaultPort: number,
  problems: { variable: string; message: string }[],
): RedisNode[] {
  const nodes: RedisNode[] = [];
  const entries = value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  if (entries.length === 0) problems.push({ variable, message: 'lists no host:port' });
  for (const entry of entries) {
    const m = /^(?:\[([^\]]+)\]|([^:[\]]+))(?::([^:]*))?$/.exec(entry);
    const host = m?.[1] ?? m?.[2];
    const portText = m?.[3];
    let problem: string | undefined;
    if (entry.includes('://')) problem = 'write host:port without a scheme';
    else if (!m || host === undefined) problem = 'expected host:port (IPv6 as [addr]:port)';
    else if (m[1] !== undefined && isIP(host) !== 6) problem = `${host} is not an IPv6 address`;
    else if (
      m[2] !== undefined &&
      isIP(host) === 0 &&
      !/^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$/.test(host)
    )
      problem = `${JSON.stringify(host)} is not a host name or IP address`;
    else if (portText !== undefined && !/^\d{1,5}$/.test(portText))
      problem = `the port must be a number, got ${JSON.stringify(portText)}`;
    const port = portText === undefined ? defaultPort : Number(portText);
    if (!problem && (port < 1 || port > 65535)) problem = `port ${port} is not 1-65535`;
    if (problem) problems.push({ variable, message: `${JSON.stringify(entry)}: ${problem}` });
    else nodes.push({ host: host as string, port });
  }
  return nodes;
}

/** FERRY_REDIS_URL, FERRY_REDIS_CLUSTER or FERRY_REDIS_SENTINELS (+ NAME): exactly one. */
function readRedisTarget(r: Reader, queuePrefix: string): RedisTarget {
  const url = r.raw('FERRY_REDIS_URL');
  const cluster = r.raw('FERRY_REDIS_CLUSTER');
  const sentinels = r.raw('FERRY_REDIS_SENTINELS');
  const sentinelName = r.raw('FERRY_REDIS_SENTINEL_NAME');
  const chosen = [
    url !== undefined && 'FERRY_REDIS_URL',
    cluster !== undefined && 'FERRY_REDIS_CLUSTER',
    sentinels !== undefined && 'FERRY_REDIS_SENTINELS',
  ].filter((v): v is string => v !== false);
  if (chosen.length > 1) {
    for (const variable of chosen) {
      r.problems.push({
        variable,
        message: `set only one of ${chosen.join(', ')} (one node, a Cluster, or Sentinels)`,
      });
    }
  }
  if (sentinelName !== undefined && sentinels === undefined) {
    r.problems.push({
      variable: 'FERRY_REDIS_SENTINEL_NAME',
      message: 'needs FERRY_REDIS_SENTINELS (the Sentinels that know this master)',
    });
  }
  if (cluster !== undefined) {
    if (hashTagOf(queuePrefix) === undefined) {
      r.problems.push({
        variable: 'FERRY_QUEUE_PREFIX',
        message: `${JSON.stringify(queuePrefix)} has no {hash tag}; with FERRY_REDIS_CLUSTER every key must share one slot (e.g. {ferry})`,
      });
    }
    return {
      mode: 'cluster',
      nodes: parseRedisNodes('FERRY_REDIS_CLUSTER', cluster, 6379, r.problems),
    };
  }
  if (sentinels !== undefined) {
    const nodes = parseRedisNodes('FERRY_REDIS_SENTINELS', sentinels, 26379, r.problems);
    if (sentinelName === undefined) {
      r.problems.push({
        variable: 'FERRY_REDIS_SENTINEL_NAME',
        message: 'required with FERRY_REDIS_SENTINELS: the master name the Sentinels monitor',
      });
    } else if (/[\s,]/.test(sentinelName)) {
      r.problems.push({
        variable: 'FERRY_REDIS_SENTINEL_NAME',
        message: `${JSON.stringify(sentinelName)}: a master name holds no spaces or commas`,
      });
    }
    return { mode: 'sentinel', sentinels: nodes, name: sentinelName ?? '' };
  }
  return {
    mode: 'standalone',
    url: r.url('FERRY_REDIS_URL', 'redis://127.0.0.1:6379', ['redis:', 'rediss:']),
  };
}

/**
 * FERRY_SOURCE_ROOT must be a readable directory. Checked at start by the
 * roles that read sources (api, lookup, upload, coordinator) — not by
 * loadConfig, so client commands (`ferry status`) do not need it.
 */
export function checkSourceRoot(config: Pick<FerryConfig, 'sourceRoot'>): void {
  const root = config.sourceRoot;
  let message: string | undefined;
  try {
    if (!statSync(root).isDirectory()) message = `${root} is not a directory`;
    else accessSync(root, constants.R_OK | constants.X_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    message =
      code === 'ENOENT' || code === 'ENOTDIR'
        ? `${root} does not exist`
        : `${root} cannot be read (${code ?? (err as Error).message})`;
  }
  if (message) throw new ConfigError([{ variable: 'FERRY_SOURCE_ROOT', message }]);
}

/** Reads and validates the environment; throws ConfigError naming every bad variable. */
export function loadConfig(env: Env = process.env, cwd: string = process.cwd()): FerryConfig {
  const r = new Reader(env);
  const logLevel = r.string('FERRY_LOG_LEVEL', 'info');
  if (!LOG_LEVELS.includes(logLevel)) {
    r.problems.push({
      variable: 'FERRY_LOG_LEVEL',
      message: `expected one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(logLevel)}`,
    });
  }
  const healthPortRaw = r.raw('FERRY_HEALTH_PORT');
  const queuePrefix = r.string('FERRY_QUEUE_PREFIX', '{ferry}');
  if (queuePrefix.includes(':')) {
    r.problems.push({ variable: 'FERRY_QUEUE_PREFIX', message: 'may not contain ":"' });
  }
  // One chunk is held in memory per upload (to re-send it after a failed PATCH): capped at 512 MiB.
  const chunk = r.int('FERRY_UPLOAD_CHUNK_SIZE', 8388608, 0, MAX_UPLOAD_CHUNK_SIZE);
  if (chunk !== 0 && chunk < 1024) {
    r.problems.push({
      variable: 'FERRY_UPLOAD_CHUNK_SIZE',
      message: 'must be 0 (one streamed PATCH) or at least 1024 bytes',
    });
  }
  const apiTokens = r.list('FERRY_API_TOKENS', []);
  const adminTokens = r.list('FERRY_ADMIN_TOKENS', []);
  const tokens = parseTokens(apiTokens, adminTokens, r.problems);
  const registryAllow = r.list('FERRY_REGISTRY_ALLOW', ['localhost', '127.0.0.1']);
  checkEntries(r, 'FERRY_REGISTRY_ALLOW', registryAllow, false);
  const insecureRegistries = r.list('FERRY_INSECURE_REGISTRIES', ['localhost', '127.0.0.0/8']);
  checkEntries(r, 'FERRY_INSECURE_REGISTRIES', insecureRegistries, true);
  const redis = readRedisTarget(r, queuePrefix);
  const config: FerryConfig = {
    redis,
    redisUrl:
      redis.mode === 'standalone'
        ? redis.url
        : (r.raw('FERRY_REDIS_URL') ?? 'redis://127.0.0.1:6379'),
    host: r.string('FERRY_HOST', '127.0.0.1'),
    port: r.int('FERRY_PORT', 8080, 0, 65535),
    sourceRoot: resolve(cwd, r.string('FERRY_SOURCE_ROOT', cwd)),
    registryAllow,
    insecureRegistries,
    caFile: r.optional('FERRY_CA_FILE'),
    apiTokens,
    adminTokens,
    tokens,
    dockerConfig: r.string('FERRY_DOCKER_CONFIG', join(homedir(), '.docker', 'config.json')),
    signingKey: r.optional('FERRY_SIGNING_KEY'),
    signingCert: r.optional('FERRY_SIGNING_CERT'),
    pgpKey: r.optional('FERRY_PGP_KEY'),
    keyPassphraseFile: r.optional('FERRY_KEY_PASSPHRASE_FILE'),
    lookupConcurrency: r.int('FERRY_LOOKUP_CONCURRENCY', 5, 1, 1000),
    uploadConcurrency: r.int('FERRY_UPLOAD_CONCURRENCY', 6, 1, 1000),
    uploadChunkSize: chunk,
    gzipLevel: r.int('FERRY_GZIP_LEVEL', 6, 1, 9),
    queuePrefix,
    stateTtl: r.int('FERRY_STATE_TTL', 604800, 60, 10 * 365 * 86400),
    shutdownTimeout: r.int('FERRY_SHUTDOWN_TIMEOUT', 30, 1, 3600),
    jobLockTimeout: r.int('FERRY_JOB_LOCK_TIMEOUT', 30, 1, 3600),
    retryBudget: r.int('FERRY_RETRY_BUDGET', 900, 1, 7 * 24 * 3600),
    healthPort: healthPortRaw === undefined ? undefined : r.int('FERRY_HEALTH_PORT', 0, 0, 65535),
    logLevel,
    url: r.url('FERRY_URL', 'http://127.0.0.1:8080', ['http:', 'https:']),
    token: r.optional('FERRY_TOKEN'),
  };
  if (r.problems.length > 0) throw new ConfigError(r.problems);
  return Object.freeze(config);
}
