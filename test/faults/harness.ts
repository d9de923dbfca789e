/**
 * Shared parts of the fault suite: the seed and its PRNG, CI vs full sizes,
 * the printed figures, Ferry's roles as separate `ferry serve --role` processes
 * (each restartable and killable by pid), the REST calls and seeded images.
 */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, spawnService, waitForPidExit, type ServiceHandle } from '../helpers';

export const repoRoot = join(__dirname, '..', '..');
export const ferryBin = join(repoRoot, 'bin', 'ferry.js');
export const MiB = 1024 * 1024;

// ---- seed -------------------------------------------------------------------

function pickSeed(): number {
  const env = process.env.FERRY_FAULTS_SEED;
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isSafeInteger(n) || n < 0)
      throw new Error(`FERRY_FAULTS_SEED must be a non-negative integer, got ${env}`);
    return n;
  }
  return randomBytes(4).readUInt32BE(0);
}
export const SEED = pickSeed();
export const FULL = process.env.FERRY_FAULTS_FULL === '1';

/** mulberry32: a small seeded PRNG; each scenario derives its own stream from SEED and its name. */
export function rngFor(name: string): () => number {
  let a = (SEED ^ createHash('sha256').update(name).digest().readUInt32BE(0)) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---- figures ----------------------------------------------------------------

export const figures: { scenario: string; name: string; value: string | number }[] = [];
export function figure(scenario: string, name: string, value: string | number): void {
  figures.push({ scenario, name, value });
  console.log(`      [faults] ${scenario}: ${name} = ${value}`);
}
export function printFigures(): void {
  const lines = [
    `\n  Fault suite figures (FERRY_FAULTS_SEED=${SEED}${FULL ? ', FERRY_FAULTS_FULL=1' : ', CI sizes'}):`,
  ];
  let last = '';
  for (const f of figures) {
    if (f.scenario !== last) lines.push(`    ${f.scenario}`);
    last = f.scenario;
    lines.push(`      ${f.name}: ${f.value}`);
  }
  console.log(lines.join('\n'));
}

// ---- images -----------------------------------------------------------------

/** `mb` MiB of incompressible bytes, reproducible from (SEED, name): AES-CTR over zeros. */
export function writeSeededFile(path: string, bytes: number, name: string): void {
  const key = createHash('sha256').update(`${SEED}:${name}`).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const zero = Buffer.alloc(MiB);
  const fd = openSync(path, 'w');
  try {
    let left = bytes;
    while (left > 0) {
      const n = Math.min(left, MiB);
      writeSync(fd, cipher.update(zero.subarray(0, n)));
      left -= n;
    }
  } finally {
    closeSync(fd);
  }
}

/** A `dir:` image under root/name whose layers hold one seeded file each (sizes in bytes). */
export function writeImage(root: string, name: string, layerBytes: number[]): string {
  const img = join(root, name);
  layerBytes.forEach((bytes, i) => {
    const dir = join(img, 'layers', `${String(i).padStart(2, '0')}-data`);
    mkdirSync(dir, { recursive: true });
    writeSeededFile(join(dir, 'blob.bin'), bytes, `${name}/${i}`);
  });
  return img;
}

// ---- Ferry processes -----------------------------------------------------------

export type Role = 'api' | 'lookup' | 'upload' | 'coordinator';

export interface RoleProcess {
  role: Role;
  service: ServiceHandle;
  healthPort?: number;
}

export interface FerryProcs {
  url: string;
  env: Record<string, string>;
  procs: RoleProcess[];
  /** Logs of every role process so far, the killed ones included. */
  logs(): string;
  api(): RoleProcess;
  /** SIGKILL by pid; resolves once it has exited. */
  kill(p: RoleProcess): Promise<void>;
  /** Starts another process of that role (same env) and waits for its /readyz. */
  add(role: Role): Promise<RoleProcess>;
  /** kill(p), then add(p.role) in its place. */
  restart(p: RoleProcess): Promise<RoleProcess>;
  stop(): Promise<void>;
}

async function httpOk(url: string): Promise<boolean> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(2_000) });
    await r.arrayBuffer();
    return r.ok;
  } catch {
    return false;
  }
}

/** Starts each role as its own `node bin/ferry.js serve --role X` process on free loopback ports. */
export async function startFerryProcs(
  base: Record<string, string>,
  roles: Role[],
): Promise<FerryProcs> {
  const port = await freePort();
  const env: Record<string, string> = {
    FERRY_QUEUE_PREFIX: `{f${randomBytes(3).toString('hex')}}`,
    FERRY_LOG_LEVEL: 'info',
    FERRY_DOCKER_CONFIG: '/nonexistent/ferry-faults/config.json',
    FERRY_HOST: '127.0.0.1',
    NODE_ENV: 'production',
    ...base,
    FERRY_PORT: String(port),
  };
  const procs: RoleProcess[] = [];
  const dead: string[] = [];
  const start = async (role: Role): Promise<RoleProcess> => {
    const healthPort = role === 'api' ? undefined : await freePort();
    const service = await spawnService({
      name: `ferry-${role}`,
      cmd: process.execPath,
      args: [ferryBin, 'serve', '--role', role],
      env: { ...env, ...(healthPort ? { FERRY_HEALTH_PORT: String(healthPort) } : {}) },
      cwd: repoRoot,
      timeoutMs: 60_000,
      pollMs: 100,
      ready: () => httpOk(`http://127.0.0.1:${healthPort ?? port}/readyz`),
    });
    const p = { role, service, healthPort };
    procs.push(p);
    return p;
  };
  const self: FerryProcs = {
    url: `http://127.0.0.1:${port}`,
    env,
    procs,
    logs: () => [...dead, ...procs.map((p) => p.service.logs())].join('\n'),
    api: () => {
      const a = procs.find((p) => p.role === 'api');
      if (!a) throw new Error('no api process');
      return a;
    },
    async kill(p) {
      try {
        process.kill(p.service.pid, 'SIGKILL');
      } catch {
        // gone already
      }
      await waitForPidExit(p.service.pid, 10_000);
      await p.service.stop();
      const i = procs.indexOf(p);
      if (i >= 0) procs.splice(i, 1);
      dead.push(p.service.logs());
    },
    add: start,
    async restart(p) {
      await self.kill(p);
      return start(p.role);
    },
    async stop() {
      await Promise.allSettled(procs.map((p) => p.service.stop()));
    },
  };
  try {
    for (const role of roles) await start(role);
  } catch (err) {
    await self.stop();
    throw err;
  }
  return self;
}

// ---- REST ---------------------------------------------------------------------

export interface ApiAnswer {
  status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
  text: string;
}

export async function apiCall(
  url: string,
  token: string | undefined,
  method: string,
  path: string,
  body?: unknown,
): Promise<ApiAnswer> {
  const r = await fetch(url + path, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    body: body !== undefined ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(15_000),
  });
  const text = await r.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  return { status: r.status, body: parsed, text };
}

export const FINAL = ['succeeded', 'failed', 'cancelled'];

/** The parts of GET /v1/pushes/{id} the suite reads (DESIGN's REST contract). */
export interface PushView {
  id: string;
  status: string;
  requestedBy?: string;
  layers: { index: number; digest?: string; size?: number; state: string; bytesSent: number }[];
  manifest?: { digest: string; mediaType: string; size: number };
  error?: { code: string; message: string };
}

/**
 * Polls GET /v1/pushes/{id} until final; errors (the API or Redis down a while) count as "not yet".
 * Bounded by timeoutMs.
 */
export async function waitFinal(
  url: string,
  token: string,
  id: string,
  timeoutMs: number,
): Promise<PushView> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const r = await apiCall(url, token, 'GET', `/v1/pushes/${id}`);
      if (r.status === 200) last = r.body;
      if (FINAL.includes(r.body?.status)) return r.body;
    } catch {
      // not answering right now
    }
    if (Date.now() > deadline)
      throw new Error(
        `push ${id} not final after ${timeoutMs} ms: ${JSON.stringify(last)?.slice(0, 2000)}`,
      );
    await sleep(250);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Bytes re-sent by a push: what Ferry sent (bytesSent counts every attempt) beyond the sizes
 * of the layers it uploaded.
 */
export function resentOf(state: PushView): number {
  const uploaded = (state?.layers ?? [])
    .filter((l) => l.state === 'uploaded')
    .reduce((n, l) => n + (Number(l.size) || 0), 0);
  return bytesSentOf(state) - uploaded;
}

/** Sum of layers' bytesSent in a push state. */
export function bytesSentOf(state: PushView): number {
  return (state?.layers ?? []).reduce((n, l) => n + (Number(l.bytesSent) || 0), 0);
}

// ---- /proc ----------------------------------------------------------------------

/** VmRSS and VmHWM of a process in MiB, from /proc/PID/status. */
export function memoryOf(pid: number): { rssMb: number; hwmMb: number } {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  return { rssMb: kb('VmRSS') / 1024, hwmMb: kb('VmHWM') / 1024 };
}

/** Established TCP connections of process pid to 127.0.0.1:port (its sockets matched in /proc/net/tcp). */
export function tcpConnectionsTo(pid: number, port: number): number {
  const { readdirSync, readlinkSync } = require('node:fs') as typeof import('node:fs');
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]);
    } catch {
      // closed meanwhile
    }
  }
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  let n = 0;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const [, remPort] = f[2].split(':');
    if (remPort === hexPort && f[3] === '01' && inodes.has(f[9])) n++;
  }
  return n;
}

// Printed once, after every scenario of the run (a root-level hook: this module loads once).
after(() => printFigures());
console.log(
  `  [faults] FERRY_FAULTS_SEED=${SEED} (set it to replay this run), ${FULL ? 'full sizes (FERRY_FAULTS_FULL=1)' : 'CI sizes'}`,
);
