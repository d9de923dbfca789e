import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { PassThrough } from 'node:stream';
import { Worker } from 'bullmq';
import {
  addUploadChild,
  createConnection,
  type AssembleJob,
  type LookupJob,
  type StoredEvent,
  type UploadJob,
} from '@ferry/queue';
import { FerryClient, TtyRenderer, main } from '@ferry/cli';
import { loadRole } from '../src/serve';
import { startRedis, type RedisHandle } from '../../../test/helpers/redis';
import { freePort } from '../../../test/helpers/ports';
import { tmpDir } from '../../../test/helpers/tmp';
import { sourceNodeOptions } from '../../../test/helpers/source-env';
import { makeApi, type TestApi } from '../../../services/api/test/helpers';

const REPO = resolve(__dirname, '../../..');
const BIN = join(REPO, 'bin', 'ferry.js');
const TOKEN = 'secret-token-1';
const DIGEST = (c: string) => 'sha256:' + c.repeat(64);
const MANIFEST = DIGEST('9');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runCli(
  args: string[],
  opts: { cwd?: string; env?: Record<string, string> } = {},
): Promise<Run> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: opts.cwd ?? REPO,
      env: {
        PATH: process.env.PATH ?? '',
        NODE_OPTIONS: sourceNodeOptions(),
        HOME: process.env.HOME ?? '/tmp',
        ...opts.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolveRun({ code, stdout, stderr });
    });
  });
}

interface Recorded {
  method: string;
  url: string;
  body: string;
}

/** A proxy in front of the API that records every request (method, path, body) it forwards. */
async function recordingProxy(
  upstreamUrl: string,
): Promise<{ url: string; requests: Recorded[]; close(): Promise<void> }> {
  const upstream = new URL(upstreamUrl);
  const requests: Recorded[] = [];
  const proxy = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      requests.push({ method: req.method ?? '', url: req.url ?? '', body: body.toString() });
      const up = httpRequest(
        {
          host: upstream.hostname,
          port: upstream.port,
          path: req.url,
          method: req.method,
          headers: req.headers,
        },
        (ur) => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          ur.pipe(res);
        },
      );
      up.on('error', () => res.destroy());
      up.end(body);
    });
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`,
    requests,
    async close() {
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
    },
  };
}

/**
 * A fake pipeline made of real BullMQ workers on the API's queues: lookups
 * report layer 0 "exists", layer 1 "mounted from team/base" and add an upload
 * child for layer 2 (which reports bytes, then "uploaded"); the assemble job
 * writes manifest and tag events and finishes — or fails when the target
 * repository is team/fail, or waits while it is team/hold.
 */
function fakePipeline(api: TestApi, redisUrl: string): Worker[] {
  const opts = () => ({
    connection: createConnection(redisUrl, { role: 'worker' }),
    prefix: api.queues.prefix,
  });
  const { store } = api;
  const lookup = new Worker<LookupJob>(
    'lookup',
    async (job) => {
      const { pushId, imageIndex, layerIndex: index } = job.data;
      await store.setStatus(pushId, 'running');
      const key = { imageIndex, index };
      if (index === 0)
        await store.updateLayer(pushId, key, { digest: DIGEST('a'), size: 1000, state: 'exists' });
      else if (index === 1) {
        await store.updateLayer(pushId, key, {
          digest: DIGEST('b'),
          size: 2000,
          state: 'mounted',
          mountedFrom: 'team/base',
        });
      } else await addUploadChild(api.queues, job, { ...job.data });
    },
    opts(),
  );
  const upload = new Worker<UploadJob>(
    'upload',
    async (job) => {
      const { pushId, imageIndex, layerIndex: index } = job.data;
      const key = { imageIndex, index };
      await store.updateLayer(pushId, key, { state: 'uploading', bytesSent: 0 });
      await store.updateLayer(pushId, key, { bytesSent: 1500 });
      await store.updateLayer(pushId, key, {
        state: 'uploaded',
        bytesSent: 3000,
        digest: DIGEST('c'),
        size: 3000,
      });
    },
    opts(),
  );
  const assemble = new Worker<AssembleJob>(
    'assemble',
    async (job) => {
      const { pushId, request } = job.data;
      if (request.target.includes('/team/hold:')) {
        while (!(await store.isCancelled(pushId))) await new Promise((r) => setTimeout(r, 50));
        return;
      }
      if (request.target.includes('/team/fail:')) {
        await store.finish(pushId, {
          error: {
            code: 'FERRY_MANIFEST_INVALID',
            message: 'the registry refused the manifest: MANIFEST_BLOB_UNKNOWN',
          },
        });
        return;
      }
      const manifest = {
        digest: MANIFEST,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        size: 777,
      };
      await store.appendEvent(pushId, { type: 'manifest', ...manifest });
      for (const tag of [request.target.split(':').pop() as string, ...request.tags]) {
        await store.appendEvent(pushId, { type: 'tag', tag, digest: MANIFEST });
      }
      const targets = request.targets?.map((target) => ({
        target,
        status: 'succeeded' as const,
        manifest,
      }));
      await store.finish(pushId, { manifest, ...(targets ? { targets } : {}) });
    },
    opts(),
  );
  const workers = [lookup, upload, assemble];
  for (const w of workers) w.on('error', () => undefined);
  return workers;
}

describe('ferry CLI against the API and a fake pipeline', function () {
  let redis: RedisHandle;
  let api: TestApi;
  let workers: Worker[];
  let server: string;
  let root: string;

  before(async () => {
    redis = await startRedis();
    root = tmpDir('cli-src');
    for (const l of ['01', '02', '03']) {
      mkdirSync(join(root, 'images', 'app', 'layers', l), { recursive: true });
      writeFileSync(join(root, 'images', 'app', 'layers', l, `f${l}`), l);
    }
    api = await makeApi(redis.url, root, {}, { sseKeepAliveMs: 300 });
    await api.app.listen({ host: '127.0.0.1', port: 0 });
    server = `http://127.0.0.1:${(api.app.server.address() as AddressInfo).port}`;
    workers = fakePipeline(api, redis.url);
  });
  after(async () => {
    await Promise.all((workers ?? []).map((w) => w.close(true)));
    await api?.close();
    await redis?.stop();
  });

  const env = () => ({ FERRY_URL: server, FERRY_TOKEN: TOKEN });

  it('push: plain progress lines on stderr, the manifest digest last on stdout, exit 0; a relative PATH is sent absolute', async () => {
    const r = await runCli(
      ['push', 'dir:images/app', '127.0.0.1:59999/team/app:1.0', '--tag', 'latest', '-t', 'v1'],
      { cwd: root, env: env() },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `${MANIFEST}\n`, 'stdout holds only the digest');
    const lines = r.stderr.trim().split('\n');
    assert.match(
      lines[0],
      new RegExp(
        `^Pushing dir:${root}/images/app to 127.0.0.1:59999/team/app:1.0 \\(push [0-9a-f-]+\\)$`,
      ),
    );
    assert.ok(lines.includes('aaaaaaaaaaaa: Layer already exists (1.00kB)'), r.stderr);
    assert.ok(lines.includes('bbbbbbbbbbbb: Mounted from team/base'), r.stderr);
    assert.ok(lines.includes('layer 2: Pushing'), r.stderr);
    assert.ok(lines.includes('cccccccccccc: Pushed (3.00kB)'), r.stderr);
    assert.ok(lines.includes(`latest: digest: ${MANIFEST}`), r.stderr);
    assert.ok(lines.includes(`v1: digest: ${MANIFEST}`), r.stderr);
    assert.equal(lines[lines.length - 1], `digest: ${MANIFEST} size: 777`);
    assert.ok(lines.indexOf('layer 2: Pushing') < lines.indexOf('cccccccccccc: Pushed (3.00kB)'));
    assert.equal(
      lines.filter((l) => l.includes('Pushing') && l.startsWith('layer 2')).length,
      1,
      'no line per progress tick',
    );
  });

  it('push --json: one JSON object per event on stdout, the last the final status', async () => {
    const r = await runCli(
      ['push', `dir:${root}/images/app`, '127.0.0.1:59999/team/app:2.0', '--json'],
      { env: env() },
    );
    assert.equal(r.code, 0, r.stderr);
    const objs = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(objs[0].type, 'accepted');
    const events = objs.slice(1);
    assert.ok(events.every((e) => typeof e.id === 'string' && /^\d+-\d+$/.test(e.id as string)));
    const last = events[events.length - 1];
    assert.equal(last.type, 'status');
    assert.equal(last.status, 'succeeded');
    assert.equal((last.manifest as { digest: string }).digest, MANIFEST);
    const uploaded = events.find((e) => e.type === 'layer' && e.state === 'uploaded');
    assert.equal(uploaded?.bytesSent, 3000);
    // the ids are the push's stream ids, in order
    const stored = await api.store.readEvents(String(objs[0].id));
    assert.deepEqual(
      events.map((e) => e.id),
      stored.map((e) => e.id),
    );
  });

  it('a failed push: exit 1 and a one-line error naming the code', async () => {
    const r = await runCli(['push', `dir:${root}/images/app`, '127.0.0.1:59999/team/fail:1'], {
      env: env(),
    });
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    const last = r.stderr.trim().split('\n').pop();
    assert.equal(
      last,
      'ferry: FERRY_MANIFEST_INVALID: the registry refused the manifest: MANIFEST_BLOB_UNKNOWN',
    );
  });

  it('requests the server refuses: exit 1 with the server’s code and message on one line', async () => {
    const notAllowed = await runCli(
      ['push', `dir:${root}/images/app`, 'evil.example.com/team/app:1'],
      { env: env() },
    );
    assert.equal(notAllowed.code, 1);
    assert.equal(notAllowed.stderr.trim().split('\n').length, 1);
    assert.match(
      notAllowed.stderr,
      /^ferry: FERRY_REGISTRY_NOT_ALLOWED: registry evil\.example\.com is not in FERRY_REGISTRY_ALLOW/,
    );

    const outside = await runCli(['push', 'dir:/etc', '127.0.0.1:59999/team/app:1'], {
      env: env(),
    });
    assert.equal(outside.code, 1);
    assert.match(outside.stderr, /^ferry: FERRY_SOURCE_OUTSIDE_ROOT: /);

    const badToken = await runCli(
      ['push', `dir:${root}/images/app`, '127.0.0.1:59999/team/app:1'],
      {
        env: { ...env(), FERRY_TOKEN: 'wrong' },
      },
    );
    assert.equal(badToken.code, 1);
    assert.match(badToken.stderr, /^ferry: FERRY_UNAUTHORIZED: /);

    const tokenFlag = await runCli(['status', 'nope', '--server', server, '--token', TOKEN]);
    assert.equal(tokenFlag.code, 1);
    assert.match(tokenFlag.stderr, /^ferry: FERRY_PUSH_NOT_FOUND: no push nope/);
    assert.ok(!tokenFlag.stderr.includes(TOKEN), 'the token is never printed');

    const down = await runCli(['status', 'x', '--server', `http://127.0.0.1:${await freePort()}`]);
    assert.equal(down.code, 1);
    assert.match(
      down.stderr,
      /^ferry: FERRY_SERVER_UNREACHABLE: cannot reach http:\/\/127\.0\.0\.1:\d+/,
    );
  });

  it('push --owners/--mtime: sent as dirOptions (SECONDS a number), only when given', async () => {
    const proxy = await recordingProxy(server);
    try {
      const cases: [string[], unknown][] = [
        [['--owners', 'keep', '--mtime', '1700000000'], { owners: 'keep', mtime: 1700000000 }],
        [['--mtime', 'keep'], { mtime: 'keep' }],
        [['--owners', 'root', '--mtime', 'epoch'], { owners: 'root', mtime: 'epoch' }],
        [['--mtime', '0'], { mtime: 0 }],
        [[], undefined],
      ];
      for (const [flags, expected] of cases) {
        const r = await runCli(
          [
            'push',
            `dir:${root}/images/app`,
            '127.0.0.1:59999/team/app:opts',
            '--no-wait',
            ...flags,
          ],
          { env: { ...env(), FERRY_URL: proxy.url } },
        );
        assert.equal(r.code, 0, r.stderr);
        const posts = proxy.requests.filter((q) => q.method === 'POST');
        const sent = JSON.parse(posts[posts.length - 1].body) as Record<string, unknown>;
        assert.deepEqual(sent.dirOptions, expected, flags.join(' '));
        // the API accepted them and recorded them, defaults filled in
        const state = await api.store.get(r.stdout.trim());
        assert.deepEqual(state?.request.dirOptions, {
          owners: 'root',
          mtime: 'epoch',
          ...(expected as object | undefined),
        });
      }
      assert.equal(proxy.requests.filter((q) => q.method === 'POST').length, cases.length);
    } finally {
      await proxy.close();
    }
  });

  it('push SRC DST DST: one push to every target (REST target + targets); --all-tags / --no-signatures sent only when given', async () => {
    const proxy = await recordingProxy(server);
    try {
      const r = await runCli(
        [
          'push',
          `dir:${root}/images/app`,
          '127.0.0.1:59999/team/app:fan',
          'localhost:59998/team/app:fan',
          '--no-wait',
        ],
        { env: { ...env(), FERRY_URL: proxy.url } },
      );
      assert.equal(r.code, 0, r.stderr);
      const sent = JSON.parse(proxy.requests.filter((q) => q.method === 'POST')[0].body);
      assert.equal(sent.target, '127.0.0.1:59999/team/app:fan');
      assert.deepEqual(sent.targets, ['localhost:59998/team/app:fan']);
      assert.equal(sent.allTags, undefined);
      assert.equal(sent.copySignatures, undefined);
      const state = await api.store.get(r.stdout.trim());
      assert.deepEqual(state?.request.targets, [
        '127.0.0.1:59999/team/app:fan',
        'localhost:59998/team/app:fan',
      ]);
      // `ferry status` shows how each target ended.
      for (let i = 0; i < 200; i++) {
        if ((await api.store.get(r.stdout.trim()))?.status === 'succeeded') break;
        await new Promise((res) => setTimeout(res, 50));
      }
      const st = await runCli(['status', r.stdout.trim()], { env: env() });
      assert.match(st.stdout, /target localhost:59998\/team\/app:fan: succeeded sha256:/);
      // A copy's flags go as REST fields (the server refuses them for other sources).
      const copy = await runCli(
        [
          'push',
          'docker://127.0.0.1:59997/src/app',
          '127.0.0.1:59999/team/app',
          '--all-tags',
          '--no-signatures',
          '--no-wait',
        ],
        { env: { ...env(), FERRY_URL: proxy.url } },
      );
      assert.equal(copy.code, 0, copy.stderr);
      const posts = proxy.requests.filter((q) => q.method === 'POST');
      const body = JSON.parse(posts[posts.length - 1].body);
      assert.equal(body.source, 'docker://127.0.0.1:59997/src/app');
      assert.equal(body.allTags, true);
      assert.equal(body.copySignatures, false);
    } finally {
      await proxy.close();
    }
  });

  it('push with a bad --owners/--mtime: one line naming the flag, exit 2, nothing sent', async () => {
    const proxy = await recordingProxy(server);
    try {
      const bad: [string, string][] = [
        ['--owners', 'nobody'],
        ['--owners', ''],
        ['--mtime', 'now'],
        ['--mtime', '-1'],
        ['--mtime', '1.5'],
        ['--mtime', '1e9'],
        ['--mtime', '8589934592'],
      ];
      for (const [flag, value] of bad) {
        const r = await runCli(
          ['push', `dir:${root}/images/app`, '127.0.0.1:59999/team/app:bad', flag, value],
          { env: { ...env(), FERRY_URL: proxy.url } },
        );
        assert.equal(r.code, 2, `${flag} ${value}: ${r.stderr}`);
        assert.equal(r.stdout, '');
        assert.equal(r.stderr.split('\n').filter(Boolean).length, 1, r.stderr);
        assert.match(r.stderr, /^ferry: FERRY_USAGE: /);
        assert.ok(r.stderr.includes(`'${flag} <`), `names ${flag}: ${r.stderr}`);
        assert.ok(r.stderr.includes(`'${value}'`), `quotes the value: ${r.stderr}`);
      }
      assert.deepEqual(proxy.requests, [], 'no request reached the server');
    } finally {
      await proxy.close();
    }
  });

  it('--owners/--mtime with a source that is not dir: the server’s 400 on one line, exit 1', async () => {
    for (const flags of [
      ['--owners', 'keep'],
      ['--mtime', '5'],
    ]) {
      const r = await runCli(
        ['push', `oci:${root}/images/app`, '127.0.0.1:59999/team/app:1', ...flags],
        { env: env() },
      );
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stdout, '');
      assert.equal(
        r.stderr,
        'ferry: FERRY_VALIDATION: dirOptions apply to dir: sources only (--owners, --mtime)\n',
      );
    }
  });

  it('bad arguments: exit 2 with a usage line', async () => {
    const missing = await runCli(['push', 'dir:x'], { env: env() });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /^ferry: FERRY_USAGE: missing required argument 'target'/);
    const format = await runCli(['push', 'dir:x', 'h/r', '--format', 'zip'], { env: env() });
    assert.equal(format.code, 2);
    assert.match(format.stderr, /FERRY_USAGE: .*zip.*oci, docker/);
    const unknown = await runCli(['frobnicate'], { env: env() });
    assert.equal(unknown.code, 2);
    const role = await runCli(['serve', '--role', 'chef'], { env: env() });
    assert.equal(role.code, 2);
    assert.match(role.stderr, /FERRY_USAGE/);
    // keygen / verify: their required options (signing-cli.test.ts runs them for real)
    const keygen = await runCli(['keygen']);
    assert.equal(keygen.code, 2);
    assert.match(keygen.stderr, /^ferry: FERRY_USAGE: .*'--out <dir>' not specified/);
    const verify = await runCli(['verify', 'h/r:1']);
    assert.equal(verify.code, 2);
    assert.match(verify.stderr, /^ferry: FERRY_USAGE: .*'--key <pub>' not specified/);
  });

  it('push --no-wait prints the id; status shows it; cancel cancels it', async () => {
    const r = await runCli(
      ['push', `dir:${root}/images/app`, '127.0.0.1:59999/team/hold:1', '--no-wait'],
      { env: env() },
    );
    assert.equal(r.code, 0, r.stderr);
    const id = r.stdout.trim();
    assert.match(id, /^[0-9a-f-]{36}$/);
    const s1 = await runCli(['status', id], { env: env() });
    assert.equal(s1.code, 0, s1.stderr);
    assert.match(s1.stdout, new RegExp(`^id: +${id}$`, 'm'));
    assert.match(s1.stdout, /^status: +(queued|running)$/m);
    const c = await runCli(['cancel', id], { env: env() });
    assert.equal(c.code, 0, c.stderr);
    assert.equal(c.stdout, `${id}: cancelled\n`);
    const s2 = await runCli(['status', id, '--json'], { env: env() });
    const state = JSON.parse(s2.stdout);
    assert.equal(state.status, 'cancelled');
    assert.equal(state.error.code, 'FERRY_CANCELLED');
  });

  it('reconnects with Last-Event-ID when the event stream drops (and past a 502), and misses nothing', async () => {
    // A proxy that cuts the first event stream after two events.
    const upstream = new URL(server);
    let cuts = 0;
    const lastIds: (string | undefined)[] = [];
    const proxy: Server = createServer((req, res) => {
      const isEvents = /\/events$/.test(req.url ?? '');
      if (isEvents) lastIds.push(req.headers['last-event-id'] as string | undefined);
      if (isEvents && lastIds.length === 2) {
        // the reconnect meets a gateway error once: the client tries again
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end('bad gateway');
        return;
      }
      const up = httpRequest(
        {
          host: upstream.hostname,
          port: upstream.port,
          path: req.url,
          method: req.method,
          headers: req.headers,
        },
        (ur) => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          let seen = 0;
          const cut = isEvents && cuts === 0;
          if (cut) cuts++;
          ur.on('data', (d: Buffer) => {
            seen += (d.toString().match(/\ndata: /g) ?? []).length;
            if (cut && seen >= 2) {
              // deliver what came, then reset the connection mid-stream
              ur.destroy();
              res.write(d, () => res.socket?.destroy());
            } else res.write(d);
          });
          ur.on('end', () => res.end());
        },
      );
      req.pipe(up);
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
    try {
      const client = new FerryClient({
        server: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`,
        token: TOKEN,
      });
      const { id } = await client.createPush({
        source: `dir:${root}/images/app`,
        target: '127.0.0.1:59999/team/app:3.0',
      });
      const got: StoredEvent[] = [];
      let reconnects = 0;
      const final = await client.followEvents(id, (e) => got.push(e), {
        retryDelayMs: 50,
        onReconnect: () => reconnects++,
      });
      assert.equal(final.status, 'succeeded');
      assert.ok(reconnects >= 2, 'the stream was reopened after the reset and after the 502');
      assert.equal(lastIds[0], undefined);
      assert.ok(
        lastIds[1] && /^\d+-\d+$/.test(lastIds[1]),
        `the second request resumed after ${lastIds[1]}`,
      );
      assert.equal(lastIds[2], lastIds[1], 'the third request resumed after the same event');
      const stored = await api.store.readEvents(id);
      assert.deepEqual(
        got.map((e) => e.id),
        stored.map((e) => e.id),
        'every event exactly once, in order',
      );
    } finally {
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
    }
  });

  it('on a terminal (a real pty via script(1)) progress is redrawn in place', async function () {
    if (!existsSync('/usr/bin/script')) {
      // script(1) is util-linux (bsdutils): under CI a missing one is a broken install, not a skip.
      if (process.env.CI === 'true') throw new Error('/usr/bin/script (bsdutils) is missing');
      this.skip();
    }
    const cmd = [
      process.execPath,
      BIN,
      'push',
      `dir:${root}/images/app`,
      '127.0.0.1:59999/team/app:tty',
    ]
      .map((a) => `'${a}'`)
      .join(' ');
    const r = await new Promise<Run>((done, reject) => {
      const child = spawn('/usr/bin/script', ['-qefc', cmd, '/dev/null'], {
        env: {
          PATH: process.env.PATH ?? '',
          NODE_OPTIONS: sourceNodeOptions(),
          HOME: process.env.HOME ?? '/tmp',
          TERM: 'xterm',
          ...env(),
        },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let stdout = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.on('error', reject);
      child.on('close', (code) => done({ code, stdout, stderr: '' }));
    });
    assert.equal(r.code, 0, r.stdout);
    assert.ok(r.stdout.includes('\u001b[2K'), 'lines are cleared and redrawn');
    assert.ok(
      r.stdout.split('\u001b[').some((part) => /^\d+F/.test(part)),
      'the cursor moves back up over the layer lines',
    );
    assert.match(r.stdout, /cccccccccccc: Pushed/);
    assert.match(r.stdout, /bbbbbbbbbbbb: Mounted from team\/base/);
    const lines = r.stdout.trim().split(/\r?\n/);
    assert.equal(lines[lines.length - 1], MANIFEST, 'the digest is still the last line');
  });

  it('the TTY renderer draws a bar per layer and redraws in place', () => {
    const out = Object.assign(new PassThrough(), { isTTY: true });
    let text = '';
    out.on('data', (d) => (text += d));
    const r = new TtyRenderer(out);
    const layer = (index: number, extra: object) => ({
      id: `1-${index}`,
      event: {
        type: 'layer' as const,
        imageIndex: 0,
        index,
        state: 'pending' as const,
        bytesSent: 0,
        ...extra,
      },
    });
    r.event(layer(0, { state: 'exists', digest: DIGEST('a'), size: 10 }));
    r.event(layer(1, { state: 'uploading', bytesSent: 500, size: 1000 }));
    r.event(layer(1, { state: 'uploaded', bytesSent: 1000, size: 1000, digest: DIGEST('c') }));
    assert.match(text, /aaaaaaaaaaaa: Layer already exists/);
    assert.match(text, /layer 1: Pushing \[={19}> {20}\] 500B\/1\.00kB/);
    assert.match(text, /cccccccccccc: Pushed/);
    assert.ok(text.includes('\u001b[2F'), 'moves up over the two layer lines to redraw');
  });

  it('main() works in-process too (status --json through injected streams)', async () => {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let out = '';
    stdout.on('data', (d) => (out += d));
    const code = await main(['status', 'nope', '--json'], {
      stdout,
      stderr,
      env: env(),
      cwd: root,
    });
    assert.equal(code, 1);
    assert.equal(out, '');
  });
});

describe('ferry serve', function () {
  it('explains a role whose package has no entry point', () => {
    assert.throws(
      () =>
        loadRole('upload', () => {
          const e = new Error("Cannot find module '@ferry/upload-worker'") as NodeJS.ErrnoException;
          e.code = 'MODULE_NOT_FOUND';
          throw e;
        }),
      /role upload is not available: @ferry\/upload-worker has no entry point yet/,
    );
    assert.throws(() => loadRole('coordinator', () => ({})), /exports no start\(config, logger\)/);
  });

  it('--role api serves, and stops cleanly on SIGTERM', async () => {
    const redis = await startRedis();
    const port = await freePort();
    const child = spawn(process.execPath, [BIN, 'serve', '--role', 'api'], {
      cwd: REPO,
      env: {
        PATH: process.env.PATH ?? '',
        NODE_OPTIONS: sourceNodeOptions(),
        HOME: process.env.HOME ?? '/tmp',
        FERRY_REDIS_URL: redis.url,
        FERRY_PORT: String(port),
        FERRY_HOST: '127.0.0.1',
        FERRY_API_TOKENS: TOKEN,
        FERRY_SHUTDOWN_TIMEOUT: '5',
        FERRY_LOG_LEVEL: 'warn',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      let ready = false;
      for (let i = 0; i < 200 && !ready; i++) {
        ready = await fetch(`http://127.0.0.1:${port}/readyz`).then(
          (r) => r.status === 200,
          () => false,
        );
        if (!ready) await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(ready, `the API answered /readyz; stderr: ${stderr}`);
      const list = await fetch(`http://127.0.0.1:${port}/v1/pushes`, {
        headers: { authorization: `Bearer ${TOKEN}` },
      });
      assert.equal(list.status, 200);
      child.kill('SIGTERM');
      assert.equal(await exited, 0, stderr);
      const after = await fetch(`http://127.0.0.1:${port}/healthz`).then(
        () => 'answered',
        () => 'closed',
      );
      assert.equal(after, 'closed');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await redis.stop();
    }
  });
});
