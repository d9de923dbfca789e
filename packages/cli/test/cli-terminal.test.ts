/**
 * `ferry push` as a user meets it (issue 12): a bar with a total for dir:
 * layers on a real terminal (tmux), Ctrl-C with and without
 * --cancel-on-interrupt, a target registry that is down (the waiting line,
 * then one error line), and --json when the API refuses the request.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { join, resolve } from 'node:path';
import { Worker } from 'bullmq';
import { openSource } from '@ferry/image-source';
import {
  createConnection,
  type LookupJob,
  type PushEvent,
  type PushState,
  type StoredEvent,
  type WaitingEvent,
} from '@ferry/queue';
import { PlainRenderer, TtyRenderer, formatSeconds, waitingText } from '@ferry/cli';
import { startRedis, type RedisHandle } from '../../../test/helpers/redis';
import { freePort } from '../../../test/helpers/ports';
import { startRegistry, type RegistryHandle } from '../../../test/helpers/registry';
import { tmpDir } from '../../../test/helpers/tmp';
import { sourceNodeOptions } from '../../../test/helpers/source-env';
import { makeApi, type TestApi } from '../../../services/api/test/helpers';

const REPO = resolve(__dirname, '../../..');
const BIN = join(REPO, 'bin', 'ferry.js');
const TOKEN = 'secret-token-1';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs bin/ferry.js without blocking this process (the API under test lives in it). */
function runCli(
  args: string[],
  env: Record<string, string>,
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((done, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 150_000);
    child.on('error', reject);
    child.on('close', (status) => {
      clearTimeout(timer);
      done({ status, stdout, stderr });
    });
  });
}

async function until<T>(f: () => Promise<T | undefined> | T | undefined, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error('timed out');
    await sleep(100);
  }
}

/** tmux is required (scripts/install-system-deps.sh installs it): missing, the test fails. */
function tmuxPath(): string {
  const r = spawnSync('sh', ['-c', 'command -v tmux'], { encoding: 'utf8' });
  const path = r.stdout.trim();
  if (!path)
    throw new Error(
      'tmux is not installed: run scripts/install-system-deps.sh (needed by this test)',
    );
  return path;
}

/** A detached tmux session of a fixed size on its own server socket, running one command. */
class Tmux {
  private readonly socket: string;
  constructor(
    private readonly tmux: string,
    readonly name: string,
  ) {
    this.socket = `ferry-test-${process.pid}-${name}`;
  }
  private run(args: string[]): string {
    return execFileSync(this.tmux, ['-L', this.socket, ...args], { encoding: 'utf8' });
  }
  start(command: string, env: Record<string, string>): void {
    const exports = Object.entries(env)
      .map(([k, v]) => `export ${k}='${v}';`)
      .join(' ');
    // The exit status is printed after the command, and the shell stays for capture-pane.
    this.run([
      'new-session',
      '-d',
      '-s',
      this.name,
      '-x',
      '160',
      '-y',
      '40',
      `${exports} ${command}; echo "EXIT=$?"; sleep 600`,
    ]);
  }
  keys(...keys: string[]): void {
    this.run(['send-keys', '-t', this.name, ...keys]);
  }
  pane(): string {
    return this.run(['capture-pane', '-p', '-J', '-t', this.name, '-S', '-200']);
  }
  waitFor(re: RegExp, ms = 30_000): Promise<RegExpMatchArray> {
    return until(() => this.pane().match(re) ?? undefined, ms).catch(() => {
      throw new Error(`the pane never showed ${re}:\n${this.pane()}`);
    });
  }
  kill(): void {
    try {
      this.run(['kill-server']);
    } catch {
      // already gone
    }
  }
}

/**
 * A fake pipeline on the API's queues: every push runs; for target team/bar
 * layer 0 reports a dir:-style upload (no compressed size yet; bytes read of
 * the uncompressed tar, and its total); then every push waits until cancelled.
 */
function holdingPipeline(api: TestApi, redisUrl: string): Worker[] {
  const lookup = new Worker<LookupJob>(
    'lookup',
    async (job) => {
      const { pushId, imageIndex, layerIndex: index, target } = job.data;
      await api.store.setStatus(pushId, 'running');
      if (index === 0 && target.includes('/team/bar:')) {
        await api.store.updateLayer(
          pushId,
          { imageIndex, index },
          { state: 'uploading', bytesSent: 4_000_000, total: 201_300_000, bytesRead: 12_300_000 },
        );
      }
      while (!(await api.store.isCancelled(pushId))) await sleep(100);
    },
    {
      connection: createConnection(redisUrl, { role: 'worker' }),
      prefix: api.queues.prefix,
      concurrency: 20,
    },
  );
  lookup.on('error', () => undefined);
  return [lookup];
}

describe('ferry push on a terminal (tmux), Ctrl-C, --json refusals', function () {
  let redis: RedisHandle;
  let api: TestApi;
  let workers: Worker[];
  let server: string;
  let root: string;
  let tmux: string;
  const sessions: Tmux[] = [];

  before(async () => {
    tmux = tmuxPath();
    redis = await startRedis();
    root = tmpDir('cli-term');
    mkdirSync(join(root, 'img', 'layers', '01'), { recursive: true });
    writeFileSync(join(root, 'img', 'layers', '01', 'f'), 'x');
    api = await makeApi(
      redis.url,
      root,
      { FERRY_API_TOKENS: `${TOKEN},ci=ci-token@127.0.0.1:59999/ci/*` },
      { sseKeepAliveMs: 300 },
    );
    await api.app.listen({ host: '127.0.0.1', port: 0 });
    server = `http://127.0.0.1:${(api.app.server.address() as AddressInfo).port}`;
    workers = holdingPipeline(api, redis.url);
  });
  after(async () => {
    for (const s of sessions) s.kill();
    await Promise.all((workers ?? []).map((w) => w.close(true)));
    await api?.close();
    await redis?.stop();
  });

  const termEnv = () => ({
    PATH: process.env.PATH ?? '',
    NODE_OPTIONS: sourceNodeOptions(),
    HOME: process.env.HOME ?? '/tmp',
    TERM: 'xterm',
    FERRY_URL: server,
    FERRY_TOKEN: TOKEN,
  });
  const session = (name: string, args: string[]) => {
    const s = new Tmux(tmux, name);
    sessions.push(s);
    s.start([process.execPath, BIN, ...args].map((a) => `'${a}'`).join(' '), termEnv());
    return s;
  };
  const get = async (id: string): Promise<PushState> =>
    (await (
      await fetch(`${server}/v1/pushes/${id}`, { headers: { authorization: `Bearer ${TOKEN}` } })
    ).json()) as PushState;

  it('a dir: layer shows a docker-style bar over the bytes read, with the total', async () => {
    const s = session('bar', ['push', `dir:${root}/img`, '127.0.0.1:59999/team/bar:1']);
    const [line] = await s.waitFor(/layer 0: Pushing \[[=> ]{40}\] 12\.3MB\/201\.3MB/);
    // 12.3 of 201.3 MB: 2 of 40 cells
    assert.ok(line.includes('[=>' + ' '.repeat(38) + ']'), line);
    const id = (await s.waitFor(/\(push ([0-9a-f-]{36})\)/))[1]!;
    const st = await runCli(['status', id], termEnv());
    assert.match(st.stdout, /^ {2}layer 0: Pushing \(12\.3MB\/201\.3MB read, 4\.00MB sent\)$/m);
    await fetch(`${server}/v1/pushes/${id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    await s.waitFor(/EXIT=1/);
    const pane = s.pane();
    assert.equal(
      pane.split('\n').filter((l) => l.startsWith('ferry: ')).length,
      1,
      `one error line:\n${pane}`,
    );
    assert.match(pane, /^ferry: FERRY_CANCELLED: /m);
  });

  it('Ctrl-C: says the push continues and how to follow or stop it, exits 130; the push runs on', async () => {
    const s = session('int', ['push', `dir:${root}/img`, '127.0.0.1:59999/team/hold:1']);
    const id = (await s.waitFor(/\(push ([0-9a-f-]{36})\)/))[1]!;
    await s.waitFor(/Preparing/);
    s.keys('C-c');
    await s.waitFor(/EXIT=130/);
    const pane = s.pane();
    // The pane may wrap the line where the terminal is narrower than it: compare with
    // white space folded.
    assert.match(
      pane.replace(/\s+/g, ' '),
      new RegExp(
        `interrupted: push ${id} continues on the server; follow it with \`ferry status ${id}\`, stop it with \`ferry cancel ${id}\``,
      ),
    );
    await sleep(1_000);
    assert.equal((await get(id)).status, 'running', 'the push goes on');
    await fetch(`${server}/v1/pushes/${id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
  });

  it('Ctrl-C with --cancel-on-interrupt cancels the push and says so', async () => {
    const s = session('cancel', [
      'push',
      `dir:${root}/img`,
      '127.0.0.1:59999/team/hold:2',
      '--cancel-on-interrupt',
    ]);
    const id = (await s.waitFor(/\(push ([0-9a-f-]{36})\)/))[1]!;
    await s.waitFor(/Preparing/);
    s.keys('C-c');
    await s.waitFor(/EXIT=130/);
    const pane = s.pane();
    assert.match(
      pane,
      new RegExp(`interrupted: cancelling push ${id} \\(--cancel-on-interrupt\\)`),
    );
    assert.match(pane, new RegExp(`^push ${id} cancelled$`, 'm'));
    const state = await get(id);
    assert.equal(state.status, 'cancelled');
    assert.equal(state.error?.code, 'FERRY_CANCELLED');
  });

  it('--json: a request the API refuses is the final JSON object on stdout, exit 1', async () => {
    const r = await runCli(
      ['push', `dir:${root}/img`, 'evil.example.com/team/app:1', '--json'],
      termEnv(),
    );
    assert.equal(r.status, 1, r.stderr);
    const lines = r.stdout.trim().split('\n');
    const last = JSON.parse(lines[lines.length - 1]!) as {
      type: string;
      error: { code: string; message: string };
    };
    assert.equal(last.type, 'error');
    assert.equal(last.error.code, 'FERRY_REGISTRY_NOT_ALLOWED', r.stderr);
    assert.match(last.error.message, /evil\.example\.com/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);

    const bad = await runCli(['push', `dir:${root}/img`, '127.0.0.1:59999/team/app:1', '--json'], {
      ...termEnv(),
      FERRY_TOKEN: 'wrong',
    });
    assert.equal(bad.status, 1);
    const lastBad = JSON.parse(bad.stdout.trim().split('\n').pop()!) as { error: { code: string } };
    assert.equal(lastBad.error.code, 'FERRY_UNAUTHORIZED');
  });

  it('403 FERRY_FORBIDDEN and 429: one clear line each', async () => {
    const forbidden = await runCli(['push', `dir:${root}/img`, '127.0.0.1:59999/team/app:1'], {
      ...termEnv(),
      FERRY_TOKEN: 'ci-token',
    });
    assert.equal(forbidden.status, 1);
    assert.equal(forbidden.stdout, '');
    assert.match(
      forbidden.stderr,
      /^ferry: FERRY_FORBIDDEN: this token may not push there: token ci may not push to 127\.0\.0\.1:59999\/team\/app:1; it may push to 127\.0\.0\.1:59999\/ci\/\*\n$/,
    );

    // A server (or a proxy in front of it) that rate-limits.
    const limiter = createServer((req, res) => {
      req.resume();
      res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '30' });
      res.end(JSON.stringify({ error: { code: 'FERRY_TOO_MANY_REQUESTS', message: 'slow down' } }));
    });
    await new Promise<void>((r) => limiter.listen(0, '127.0.0.1', () => r()));
    try {
      const url = `http://127.0.0.1:${(limiter.address() as AddressInfo).port}`;
      const limited = await runCli(['push', `dir:${root}/img`, '127.0.0.1:59999/team/app:1'], {
        ...termEnv(),
        FERRY_URL: url,
      });
      assert.equal(limited.status, 1);
      assert.equal(
        limited.stderr,
        'ferry: FERRY_TOO_MANY_REQUESTS: too many requests (429): slow down; try again in 30 s\n',
      );
    } finally {
      limiter.closeAllConnections();
      await new Promise((r) => limiter.close(r));
    }
  });

  it('a dir: layer stream knows its uncompressed total and counts the bytes read', async () => {
    mkdirSync(join(root, 'big', 'layers', '01', 'sub'), { recursive: true });
    writeFileSync(join(root, 'big', 'layers', '01', 'a'), Buffer.alloc(300_001, 7));
    writeFileSync(join(root, 'big', 'layers', '01', 'sub', 'b'.repeat(120)), 'long name: PAX');
    const src = await openSource(`dir:${root}/big`, { root });
    const layer = src.images[0]!.layers[0]!;
    const s = await layer.open();
    s.stream.resume();
    const done = await s.done;
    assert.equal(s.uncompressedTotal, done.uncompressedSize);
    assert.equal(s.uncompressedRead?.(), done.uncompressedSize);
    assert.equal((await layer.diffIdOnly()).uncompressedSize, done.uncompressedSize);
  });
});

describe('ferry push through `ferry serve` and a real registry (FERRY_RETRY_BUDGET=20)', function () {
  this.timeout(180_000);
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let serve: ChildProcess;
  let serveLog = '';
  let root: string;
  let home: string;
  let port: number;

  before(async () => {
    redis = await startRedis();
    registry = await startRegistry();
    root = tmpDir('cli-real');
    home = tmpDir('cli-real-home');
    port = await freePort();
    serve = spawn(process.execPath, [BIN, 'serve'], {
      cwd: root,
      env: {
        PATH: process.env.PATH ?? '',
        NODE_OPTIONS: sourceNodeOptions(),
        HOME: home,
        FERRY_REDIS_URL: redis.url,
        FERRY_PORT: String(port),
        FERRY_HOST: '127.0.0.1',
        FERRY_SOURCE_ROOT: root,
        FERRY_API_TOKENS: TOKEN,
        FERRY_RETRY_BUDGET: '20',
        FERRY_UPLOAD_CHUNK_SIZE: String(1024 * 1024),
        FERRY_GZIP_LEVEL: '9',
        FERRY_SHUTDOWN_TIMEOUT: '5',
        FERRY_LOG_LEVEL: 'warn',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    serve.stdout!.on('data', (d) => (serveLog += d));
    serve.stderr!.on('data', (d) => (serveLog += d));
    await until(
      () =>
        fetch(`http://127.0.0.1:${port}/readyz`).then(
          (r) => (r.status === 200 ? true : undefined),
          () => undefined,
        ),
      60_000,
    ).catch(() => {
      throw new Error(`ferry serve did not start:\n${serveLog}`);
    });
  });
  after(async () => {
    if (serve && serve.exitCode === null) {
      serve.kill('SIGTERM');
      await new Promise((res) => serve.on('exit', res));
    }
    await registry?.stop();
    await redis?.stop();
  });

  const cliEnv = () => ({
    PATH: process.env.PATH ?? '',
    NODE_OPTIONS: sourceNodeOptions(),
    HOME: home,
    FERRY_URL: `http://127.0.0.1:${port}`,
    FERRY_TOKEN: TOKEN,
  });

  it('a dir: upload reports the uncompressed total and the bytes read as it goes', async () => {
    mkdirSync(join(root, 'big', 'layers', '01'), { recursive: true });
    writeFileSync(join(root, 'big', 'layers', '01', 'random'), randomBytes(24 * 1024 * 1024));
    const src = await openSource(`dir:${root}/big`, { root });
    const total = (await src.images[0]!.layers[0]!.diffIdOnly()).uncompressedSize;
    const r = await runCli(
      ['push', `dir:${root}/big`, `${registry.host}/team/big:1`, '--json'],
      cliEnv(),
    );
    assert.equal(r.status, 0, `${r.stderr}\n${serveLog}`);
    const events = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const uploading = events.filter((e) => e.type === 'layer' && e.state === 'uploading');
    assert.ok(
      uploading.some((e) => e.total === total),
      `the total (${total}) in an uploading event: ${JSON.stringify(uploading)}`,
    );
    const reads = uploading
      .map((e) => e.bytesRead)
      .filter((n): n is number => typeof n === 'number');
    assert.ok(reads.length >= 1, 'bytesRead reported while uploading');
    assert.ok(
      reads.every((n) => n > 0 && n <= total),
      `bytesRead within the total: ${reads.join(', ')}`,
    );
    const done = events.find((e) => e.type === 'layer' && e.state === 'uploaded');
    assert.ok(typeof done?.digest === 'string' && done.total === total, JSON.stringify(done));
  });

  it('registry down: the waiting line, then exactly one error line', async () => {
    mkdirSync(join(root, 'img', 'layers', '01'), { recursive: true });
    writeFileSync(join(root, 'img', 'layers', '01', 'f'), 'x');
    const target = `${registry.host}/team/down:1`;
    await registry.stop();
    const started = Date.now();
    const r = await runCli(['push', `dir:${root}/img`, target], cliEnv());
    if (process.env.FERRY_TEST_SHOW) process.stderr.write(r.stderr);
    assert.equal(r.status, 1, `${r.stderr}\n${serveLog}`);
    assert.equal(r.stdout, '');
    const lines = r.stderr.trim().split('\n');
    const waiting = new RegExp(
      `^registry ${registry.host.replace(/\./g, '\\.')} unreachable, next try in \\d+ s, gives up in \\d+ s$`,
    );
    const w = lines.findIndex((l) => waiting.test(l));
    assert.ok(w > 0, `a waiting line:\n${r.stderr}`);
    const gives = Number(/gives up in (\d+) s/.exec(lines[w]!)![1]);
    assert.ok(gives <= 20, lines[w]);
    const errors = lines.filter((l) => /^ferry: |failed/.test(l));
    assert.equal(errors.length, 1, `exactly one error line:\n${r.stderr}`);
    assert.equal(lines[lines.length - 1], errors[0], 'the error line is the last');
    assert.match(errors[0]!, /^ferry: FERRY_RETRY_BUDGET_SPENT: /);
    assert.ok(lines.indexOf(errors[0]!) > w);
    assert.ok(Date.now() - started < 120_000);
  });
});

describe('the renderers: waiting lines and dir: bars', function () {
  const ev = (event: PushEvent, id = '1-0'): StoredEvent => ({ id, event });
  const waiting = (nextInMs: number, budget: number): PushEvent => ({
    type: 'waiting',
    registry: '127.0.0.1:5001',
    attempt: 1,
    nextTryAt: new Date(Date.now() + nextInMs).toISOString(),
    budgetLeftSeconds: budget,
    cause: { code: 'FERRY_REGISTRY_UNAVAILABLE', message: 'connect ECONNREFUSED 127.0.0.1:5001' },
  });

  it('words a waiting event: next try and budget left, in s / min / h', () => {
    const now = Date.now();
    const e = waiting(7_600, 14 * 60 + 10) as WaitingEvent;
    assert.equal(
      waitingText({ ...e, nextTryAt: new Date(now + 7_600).toISOString() }, now),
      'registry 127.0.0.1:5001 unreachable, next try in 8 s, gives up in 14 min',
    );
    assert.equal(formatSeconds(20), '20 s');
    assert.equal(formatSeconds(7500), '2 h 5 min');
    const other = waitingText(
      { ...e, cause: { code: 'FERRY_RATE_LIMITED', message: 'the registry answered 429' } },
      now,
    );
    assert.match(
      other,
      /^registry 127\.0\.0\.1:5001 failed \(FERRY_RATE_LIMITED: the registry answered 429\), next try in \d+ s/,
    );
  });

  it('plain: a line per waiting event; a failed status leaves the error line to the command', () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (d) => (text += d));
    const r = new PlainRenderer(out);
    r.event(ev(waiting(8_000, 20)));
    r.event(
      ev({
        type: 'status',
        status: 'failed',
        error: { code: 'FERRY_RETRY_BUDGET_SPENT', message: 'gave up' },
      }),
    );
    assert.match(
      text,
      /^registry 127\.0\.0\.1:5001 unreachable, next try in \d s, gives up in 20 s\n$/,
    );
  });

  it('tty: a dir: layer bar over bytesRead/total, the waiting line under the layers until progress', () => {
    const out = Object.assign(new PassThrough(), { isTTY: true });
    let text = '';
    out.on('data', (d) => (text += d));
    const r = new TtyRenderer(out);
    const layer = (extra: object): PushEvent => ({
      type: 'layer',
      imageIndex: 0,
      index: 0,
      state: 'uploading',
      bytesSent: 1000,
      total: 201_300_000,
      bytesRead: 100_650_000,
      ...extra,
    });
    r.event(ev(layer({})));
    assert.match(text, /layer 0: Pushing \[={19}> {20}\] 100\.7MB\/201\.3MB\n/);
    r.event(ev(waiting(8_000, 840)));
    assert.match(
      text,
      /registry 127\.0\.0\.1:5001 unreachable, next try in \d s, gives up in 14 min\n$/,
    );
    text = '';
    r.event(ev(layer({ bytesRead: 150_000_000, bytesSent: 2000 })));
    assert.ok(!text.includes('unreachable'), 'the waiting line goes once bytes move');
    assert.ok(text.startsWith('\u001b[2F'), 'redrawn over the layer and the waiting line');
    assert.ok(text.endsWith('\u001b[2K\n'), 'the old waiting line is blanked');
    text = '';
    r.event(ev(layer({ state: 'uploaded', digest: 'sha256:' + 'd'.repeat(64), size: 90_000_000 })));
    assert.match(text, /dddddddddddd: Pushed\n/);
  });
});
