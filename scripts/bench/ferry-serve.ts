/**
 * What the push benchmarks share: a compiled `ferry serve` (all roles, plain
 * node on dist/ as production runs it — the bench's own tsx / ferry-source
 * NODE_OPTIONS are not passed on), optionally with the CPU-profile and
 * event-loop-delay preload; the REST calls; the CLI; skopeo; CPU time of a
 * process from /proc; Redis INFO commandstats; median/min/max.
 *
 * Env: BENCH_PROFILE_DIR — write the serve process's CPU profiles there, one
 * per window between two eld() calls (TAG-serve-N.cpuprofile, N = 0 from
 * the first call to the second; the benches call eld() around each ferry
 * measurement, so the even N are the ferry windows), and the event-loop
 * delay of each window (TAG-eld.jsonl); BENCH_PROF_INTERVAL_US — a finer
 * sampling interval for those profiles; BENCH_FERRY_ENV — extra FERRY_*
 * settings for the serve process, `K=V,K=V`; BENCH_FERRY_ENV_B — where a
 * bench supports it, a second serve process with these settings measured
 * beside the first in the same runs; BENCH_LOG_LEVEL (default info).
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RedisHandle, ServiceHandle } from '../../test/helpers';

// Loaded lazily (the harness is TypeScript run through tsx, like the bench itself).
type Helpers = typeof import('../../test/helpers');
export const helpers = (): Helpers => require('../../test/helpers') as Helpers;

export const repoRoot = join(__dirname, '..', '..');
const bin = join(repoRoot, 'bin', 'ferry.js');

/** process.env without the bench's own NODE_OPTIONS (tsx, ferry-source): children run dist/. */
export function plainEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const { NODE_OPTIONS: _n, ...env } = process.env;
  return { ...env, ...extra };
}

/** `npm run build` (incremental): the benchmarks measure the compiled code. */
export function build(): void {
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: repoRoot, stdio: 'inherit' });
}

/** `K=V,K=V` from BENCH_FERRY_ENV (or another variable) as an object. */
export function extraFerryEnv(variable = 'BENCH_FERRY_ENV'): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of (process.env[variable] ?? '').split(',')) {
    const i = kv.indexOf('=');
    if (i > 0) out[kv.slice(0, i).trim()] = kv.slice(i + 1).trim();
  }
  return out;
}

/** Where a stack keeps its push-status indexes: the harness counts finished pushes there. */
export interface StatusIndex {
  redisUrl: string;
  prefix: string;
}

/** One window of the serve's event loop (eld-preload.js): delay beyond the tick, GC on the main thread. */
export interface EldWindow {
  mean: number;
  p50: number;
  p99: number;
  max: number;
  gcMinor: number;
  gcMinorMs: number;
  gcMajor: number;
  gcMajorMs: number;
}

export interface Serve {
  url: string;
  token: string;
  index: StatusIndex;
  env: Record<string, string>;
  pid: number;
  service: ServiceHandle;
  /** Event-loop delay since the last call (needs BENCH_PROFILE_DIR), in ms. */
  eld(): Promise<EldWindow | undefined>;
  stop(): Promise<void>;
}

/** The settings every bench serve process gets (BENCH_FERRY_ENV last). */
function serveEnv(
  redis: RedisHandle,
  root: string,
  port: number,
  token: string,
  prefix = `{b${randomBytes(3).toString('hex')}}`,
  extra = extraFerryEnv(),
): Record<string, string> {
  return {
    FERRY_REDIS_URL: redis.url,
    FERRY_QUEUE_PREFIX: prefix,
    FERRY_PORT: String(port),
    FERRY_URL: `http://127.0.0.1:${port}`,
    FERRY_API_TOKENS: token,
    FERRY_TOKEN: token,
    FERRY_SOURCE_ROOT: root,
    FERRY_REGISTRY_ALLOW: '127.0.0.1:*',
    FERRY_LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'info',
    FERRY_DOCKER_CONFIG: '/nonexistent/ferry-bench/config.json',
    NODE_ENV: 'production',
    ...extra,
  };
}

/**
 * Starts `node bin/ferry.js serve` (all roles) on redis, reading sources under root, with
 * BENCH_FERRY_ENV's settings or `extra`'s.
 */
export async function startServe(
  redis: RedisHandle,
  root: string,
  tag: string,
  extra?: Record<string, string>,
): Promise<Serve> {
  const { freePort, spawnService } = helpers();
  const port = await freePort();
  const token = 'bench-' + randomBytes(8).toString('hex');
  const profileDir = process.env.BENCH_PROFILE_DIR;
  const eldOut = profileDir ? join(profileDir, `${tag}-eld.jsonl`) : undefined;
  if (profileDir) mkdirSync(profileDir, { recursive: true });
  const env = serveEnv(redis, root, port, token, undefined, extra);
  // Profiles come from the preload (inspector), one per window between eld() calls.
  const service = await spawnService({
    name: 'ferry-serve',
    cmd: process.execPath,
    args: [bin, 'serve'],
    env: {
      ...env,
      // NODE_OPTIONS from BENCH_FERRY_ENV (e.g. the image's --max-semi-space-size), plus the preload.
      NODE_OPTIONS: [
        env.NODE_OPTIONS,
        eldOut ? `--require=${join(__dirname, 'eld-preload.js')}` : '',
      ]
        .filter(Boolean)
        .join(' '),
      ...(eldOut
        ? {
            BENCH_ELD_OUT: eldOut,
            BENCH_PROF_PREFIX: join(profileDir!, `${tag}-serve`),
            BENCH_PROF_INTERVAL_US: process.env.BENCH_PROF_INTERVAL_US ?? '',
          }
        : {}),
    },
    cwd: repoRoot,
    timeoutMs: 30_000,
    graceMs: 20_000,
    ready: async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).ok,
  });
  let eldLines = 0;
  return {
    url: env.FERRY_URL!,
    token,
    index: { redisUrl: redis.url, prefix: env.FERRY_QUEUE_PREFIX! },
    env,
    pid: service.pid,
    service,
    async eld() {
      if (!eldOut) return undefined;
      process.kill(service.pid, 'SIGUSR2');
      for (let i = 0; i < 50; i++) {
        await new Promise((r) => setTimeout(r, 20));
        if (!existsSync(eldOut)) continue;
        const lines = readFileSync(eldOut, 'utf8').trim().split('\n');
        if (lines.length > eldLines) {
          eldLines = lines.length;
          return JSON.parse(lines[lines.length - 1]!) as EldWindow;
        }
      }
      return undefined;
    },
    stop: () => service.stop(),
  };
}

/** The roles in processes of their own, as deployed: one api, lookup, coordinator; N upload. */
export interface Split {
  url: string;
  token: string;
  index: StatusIndex;
  /** pid of each process by role (upload: one per process). */
  pids: { api: number; lookup: number; coordinator: number; upload: number[] };
  /** Every process's pid. */
  all(): number[];
  stop(): Promise<void>;
}

/**
 * Starts each role in its own `node bin/ferry.js serve --role R` (compiled, plain node), with
 * `uploads` upload-worker processes (each FERRY_UPLOAD_CONCURRENCY uploads at once), sharing
 * one queue prefix on redis; ready when every process's /readyz answers.
 */
export async function startSplit(
  redis: RedisHandle,
  root: string,
  uploads: number,
): Promise<Split> {
  const { freePort, spawnService } = helpers();
  const port = await freePort();
  const token = 'bench-' + randomBytes(8).toString('hex');
  const prefix = `{s${randomBytes(3).toString('hex')}}`;
  const roles = [
    'api',
    'lookup',
    'coordinator',
    ...Array.from({ length: uploads }, () => 'upload'),
  ];
  const started: ServiceHandle[] = [];
  try {
    for (const [i, role] of roles.entries()) {
      const env = serveEnv(redis, root, port, token, prefix);
      const health = role === 'api' ? port : await freePort();
      if (role !== 'api') env.FERRY_HEALTH_PORT = String(health);
      started.push(
        await spawnService({
          name: `ferry-${role}-${i}`,
          cmd: process.execPath,
          args: [bin, 'serve', '--role', role],
          env: { ...env, NODE_OPTIONS: '' },
          cwd: repoRoot,
          timeoutMs: 30_000,
          graceMs: 20_000,
          ready: async () => (await fetch(`http://127.0.0.1:${health}/readyz`)).ok,
        }),
      );
    }
  } catch (e) {
    for (const s of started.reverse()) await s.stop();
    throw e;
  }
  const [api, lookup, coordinator, ...up] = started;
  return {
    url: `http://127.0.0.1:${port}`,
    token,
    index: { redisUrl: redis.url, prefix },
    pids: {
      api: api!.pid,
      lookup: lookup!.pid,
      coordinator: coordinator!.pid,
      upload: up.map((u) => u.pid),
    },
    all: () => started.map((s) => s.pid),
    async stop() {
      // The API first (no new pushes), then the workers.
      for (const s of started) await s.stop();
    },
  };
}

/** What the REST helpers need of a running Ferry. */
export type Endpoint = Pick<Serve, 'url' | 'token'>;

export interface PushView {
  id: string;
  status: string;
  finishedAt?: string;
  createdAt?: string;
  layers?: { state: string; bytesSent?: number }[];
  error?: { code: string; message: string };
}

export async function api<T = unknown>(
  serve: Endpoint,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: T }> {
  const r = await fetch(serve.url + path, {
    method,
    headers: {
      authorization: `Bearer ${serve.token}`,
      ...(body ? { 'content-type': 'application/json' } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: (text ? JSON.parse(text) : undefined) as T };
}

export async function submit(serve: Endpoint, source: string, target: string): Promise<string> {
  const r = await api<{ id?: string }>(serve, 'POST', '/v1/pushes', { source, target });
  if (r.status !== 202 || !r.body.id)
    throw new Error(`submit: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.id;
}

/** Polls GET /v1/pushes/{id} until final; throws unless succeeded. */
export async function waitSucceeded(serve: Endpoint, id: string, pollMs = 25): Promise<PushView> {
  const deadline = Date.now() + 600_000;
  for (;;) {
    const r = await api<PushView>(serve, 'GET', `/v1/pushes/${id}`);
    const s = r.body?.status;
    if (s === 'succeeded') return r.body;
    if (s === 'failed' || s === 'cancelled')
      throw new Error(`push ${id} ${s}: ${JSON.stringify(r.body.error)}`);
    if (Date.now() > deadline) throw new Error(`push ${id} not final`);
    await new Promise((res) => setTimeout(res, pollMs));
  }
}

/**
 * REST submit → succeeded, in seconds: from just before the POST to the
 * push's own finishedAt (so the poll interval does not count).
 */
export async function restPush(
  serve: Endpoint,
  source: string,
  target: string,
): Promise<{ s: number; view: PushView }> {
  const t0 = Date.now();
  const id = await submit(serve, source, target);
  const view = await waitSucceeded(serve, id);
  const end = view.finishedAt ? Date.parse(view.finishedAt) : Date.now();
  return { s: (end - t0) / 1000, view };
}

/** Runs a command; resolves with wall seconds; rejects on a non-zero exit. */
export function timedRun(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = plainEnv(),
): Promise<{ s: number; stdout: string }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { env, cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => {
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      if (code === 0) resolve({ s, stdout });
      else reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${stderr.slice(-800)}`));
    });
  });
}

/** `ferry push SOURCE TARGET` end to end (node bin/ferry.js, compiled). */
export function cliPush(
  serve: Serve,
  source: string,
  target: string,
): Promise<{ s: number; stdout: string }> {
  return timedRun(
    process.execPath,
    [bin, 'push', source, target],
    plainEnv({
      FERRY_URL: serve.url,
      FERRY_TOKEN: serve.token,
    }),
  );
}

export function skopeoCopy(source: string, target: string): Promise<{ s: number; stdout: string }> {
  return timedRun('skopeo', [
    'copy',
    '--quiet',
    '--insecure-policy',
    '--dest-tls-verify=false',
    source,
    `docker://${target}`,
  ]);
}

/** utime + stime of a process (all its threads), seconds. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields after ")" start at index 3 (state): utime is field 14, stime 15 → [11], [12].
  return (Number(f[11]) + Number(f[12])) / 100;
}

/** CPU seconds of a process's main thread (tid = pid) and of all its other threads (libuv pool, V8 helpers). */
export function threadCpu(pid: number): { main: number; other: number } {
  const total = cpuSeconds(pid);
  let main: number;
  try {
    const stat = readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    main = (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    main = total;
  }
  return { main, other: total - main };
}

/** INFO commandstats as { cmd: calls }. */
export function commandStats(redis: RedisHandle): Record<string, number> {
  const out = execFileSync('redis-cli', ['-p', String(redis.port), 'INFO', 'commandstats'], {
    encoding: 'utf8',
  });
  const r: Record<string, number> = {};
  for (const m of out.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) r[m[1]!] = Number(m[2]);
  return r;
}

export function diffStats(
  a: Record<string, number>,
  b: Record<string, number>,
): Record<string, number> {
  const r: Record<string, number> = {};
  for (const [k, v] of Object.entries(b)) if (v - (a[k] ?? 0) > 0) r[k] = v - (a[k] ?? 0);
  return r;
}

export function stats(xs: number[]): { median: number; min: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  return { median, min: s[0]!, max: s[s.length - 1]! };
}

export function fmt(xs: number[], digits = 3): string {
  const { median, min, max } = stats(xs);
  return `${median.toFixed(digits)} (${min.toFixed(digits)}–${max.toFixed(digits)})`;
}
