/**
 * Scenario 6: a corpus of hostile requests (≥ 200, every category of issue 9)
 * against the API process. Every answer is a 4xx — never a 5xx, never a 2xx —
 * and nothing is enqueued (BullMQ job counts and the push index unchanged).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { startRegistry, tmpDir, removeTmpDir, type RegistryHandle } from '../helpers';
import { startDurableRedis, type DurableRedisHandle } from '../helpers/durable-redis';
import {
  MiB,
  apiCall,
  figure,
  startFerryProcs,
  waitFinal,
  writeImage,
  type FerryProcs,
} from './harness';

const S = '6 hostile input';
const TOKEN = 'faults-push-' + randomBytes(8).toString('hex');
const ADMIN = 'faults-admin-' + randomBytes(8).toString('hex');

interface Case {
  category: string;
  method: string;
  path: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
}

/**
 * A raw HTTP/1.1 request over a TCP socket, so bodies, charsets and headers go
 * out exactly as written. Resolves with the status line's code as soon as it
 * arrives — also when the server answers (e.g. 413) and closes before it read
 * the whole body, which a writing client sees as EPIPE.
 */
function send(base: string, c: Case): Promise<number> {
  return new Promise((resolve, reject) => {
    const url = new URL(base);
    const body =
      c.body === undefined
        ? undefined
        : Buffer.isBuffer(c.body)
          ? c.body
          : Buffer.from(c.body, 'utf8');
    const headers: Record<string, string> = {
      host: url.host,
      connection: 'close',
      ...(body ? { 'content-length': String(body.length) } : {}),
      ...c.headers,
    };
    const head =
      `${c.method} ${c.path} HTTP/1.1\r\n` +
      Object.entries(headers)
        .map(([k, v]) => `${k}: ${v}\r\n`)
        .join('') +
      '\r\n';
    const socket = connect({ host: url.hostname, port: Number(url.port) });
    let got = '';
    const timer = setTimeout(() => finish(new Error('timeout')), 20_000);
    const finish = (err?: Error, status?: number) => {
      clearTimeout(timer);
      socket.destroy();
      if (status !== undefined) resolve(status);
      else reject(err ?? new Error('closed without a status line'));
    };
    socket.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(got);
      if (m) finish(undefined, Number(m[1]));
      else if (got.length > 64) finish(new Error(`not HTTP: ${got.slice(0, 64)}`));
    });
    // A write error (EPIPE, ECONNRESET) may come before or after the answer: wait for 'close'.
    socket.on('error', () => undefined);
    socket.on('close', () =>
      finish(new Error(`closed without a status line (${got.length} bytes)`)),
    );
    socket.write(Buffer.from(head, 'latin1'));
    // A body over 64 KiB goes out after a pause (as curl waits for 100-continue): a server that
    // refuses it by its Content-Length answers first, and that answer is read before the kernel
    // resets the connection over bytes the server never read (the RST would discard it).
    if (body && body.length > 64 * 1024)
      setTimeout(() => socket.writable && socket.write(body), 300);
    else if (body) socket.write(body);
  });
}

function describeCase(c: Case, status: number | string): string {
  const h = { ...(c.headers ?? {}) };
  if (h.authorization) h.authorization = h.authorization.slice(0, 12) + '…';
  return `${c.category}: ${c.method} ${c.path.slice(0, 100)} ${JSON.stringify(h).slice(0, 100)} ${String(c.body ?? '').slice(0, 160)} → ${status}`;
}

describe(`faults ${S}: the hostile-input corpus`, function () {
  this.timeout(300_000);
  let redis: DurableRedisHandle;
  let registry: RegistryHandle;
  let ferry: FerryProcs | undefined;
  let root: string;

  before(async () => {
    [redis, registry] = await Promise.all([startDurableRedis(), startRegistry()]);
    root = tmpDir('faults-hostile');
  });
  after(async () => {
    await ferry?.stop();
    await Promise.allSettled([redis?.stop(), registry?.stop()]);
    if (root) removeTmpDir(root);
  });

  it('≥ 200 hostile requests: all 4xx, no 5xx, nothing enqueued', async () => {
    const img = writeImage(root, 'ok', [MiB]);
    ferry = await startFerryProcs(
      {
        FERRY_REDIS_URL: redis.url,
        FERRY_SOURCE_ROOT: root,
        FERRY_REGISTRY_ALLOW: registry.host,
        FERRY_API_TOKENS: TOKEN,
        FERRY_ADMIN_TOKENS: ADMIN,
      },
      ['api', 'coordinator', 'lookup', 'upload'],
    );
    const f = ferry;
    // One real push first, so event streams have something to resume.
    const okPush = await apiCall(f.url, TOKEN, 'POST', '/v1/pushes', {
      source: `dir:${img}`,
      target: `${registry.host}/ok/app:1`,
    });
    assert.equal(okPush.status, 202, okPush.text);
    const id = okPush.body.id as string;
    assert.equal((await waitFinal(f.url, TOKEN, id, 120_000)).status, 'succeeded');

    const port = registry.port;
    const good = { source: `dir:${img}`, target: `${registry.host}/ok/app:2` };
    const auth = { authorization: `Bearer ${TOKEN}` };
    const json = { ...auth, 'content-type': 'application/json' };
    const cases: Case[] = [];
    const post = (category: string, body: unknown, headers: Record<string, string> = json) =>
      cases.push({
        category,
        method: 'POST',
        path: '/v1/pushes',
        headers,
        body: typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body),
      });

    // bad types
    const badValues: unknown[] = [
      1,
      -1,
      1.5,
      true,
      null,
      [],
      {},
      [1],
      '',
      ' ',
      '\u0000',
      'x'.repeat(5000),
    ];
    for (const field of [
      'source',
      'target',
      'targets',
      'tags',
      'sign',
      'schema1',
      'format',
      'platform',
      'allTags',
      'dirOptions',
    ]) {
      for (const v of badValues.slice(0, 6)) {
        if (field === 'schema1' || field === 'allTags') {
          if (typeof v === 'boolean') continue;
        }
        if (field === 'sign' && typeof v === 'boolean') continue;
        if (field === 'tags' && Array.isArray(v) && v.length === 0) continue; // no extra tags: valid
        if (field === 'dirOptions' && v !== null && typeof v === 'object' && !Array.isArray(v))
          continue;
        post('bad types', { ...good, [field]: v });
      }
    }
    for (const v of badValues) post('bad types', { ...good, source: v });
    post('bad types', { ...good, dirOptions: { owners: 'nobody' } });
    post('bad types', { ...good, dirOptions: { mtime: -5 } });
    post('bad types', { ...good, format: 'bmp' });
    post('bad types', { ...good, tags: ['bad tag!'] });
    post('bad types', { ...good, tags: Array.from({ length: 101 }, (_, i) => `t${i}`) });
    post('bad types', { ...good, platform: 'linux' });
    post('bad types', { ...good, sign: { cosign: 'yes' } });
    post('bad types', '[]');
    post('bad types', 'null');
    post('bad types', '"push"');
    post('bad types', '42');
    post('bad types', '{');
    post('bad types', '{"source":');
    post('bad types', 'not json at all');
    post('bad types', '['.repeat(10_000) + ']'.repeat(10_000));
    // unknown fields
    for (const k of [
      'foo',
      '__proto__',
      'constructor',
      'prototype',
      'id',
      'status',
      'requestedBy',
      'layers',
      'Target',
      'SOURCE',
    ]) {
      post(
        'unknown fields',
        `{"source":${JSON.stringify(good.source)},"target":${JSON.stringify(good.target)},${JSON.stringify(k)}:{"polluted":true}}`,
      );
    }
    post('unknown fields', { ...good, sign: { cosign: true, gpg: true } });
    post('unknown fields', { ...good, dirOptions: { owners: 'root', follow: true } });
    // huge bodies
    post('huge bodies', { ...good, target: `${registry.host}/${'a'.repeat(200_000)}:1` });
    post('huge bodies', { ...good, tags: Array.from({ length: 100_000 }, () => 'latest') });
    post('huge bodies', Buffer.alloc(8 * MiB, 0x20));
    post('huge bodies', JSON.stringify({ ...good, pad: 'x'.repeat(6 * MiB) }));
    post('huge bodies', { ...good, source: 'dir:' + '/a'.repeat(100_000) });
    // duplicate keys
    post(
      'duplicate JSON keys',
      `{"source":${JSON.stringify(good.source)},"target":"evil.example/x:1","target":${JSON.stringify(good.target)}}`,
    );
    post(
      'duplicate JSON keys',
      `{"source":${JSON.stringify(good.source)},"source":${JSON.stringify(good.source)},"target":${JSON.stringify(good.target)}}`,
    );
    post(
      'duplicate JSON keys',
      `{"source":${JSON.stringify(good.source)},"target":${JSON.stringify(good.target)},"sign":{"cosign":true,"cosign":false}}`,
    );
    post(
      'duplicate JSON keys',
      `{"source":${JSON.stringify(good.source)},"target":${JSON.stringify(good.target)},"tags":["a"],"tags":["b"]}`,
    );
    post(
      'duplicate JSON keys',
      `{"source":${JSON.stringify(good.source)},"target":${JSON.stringify(good.target)},"targ\\u0065t":"evil.example/x:1"}`,
    );
    // BOM and charsets
    post(
      'BOM',
      Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(good))]),
    );
    post(
      'BOM',
      Buffer.concat([
        Buffer.from([0xfe, 0xff]),
        Buffer.from(JSON.stringify(good), 'utf16le').swap16(),
      ]),
    );
    for (const cs of [
      'latin1',
      'iso-8859-1',
      'utf-16',
      'utf-16le',
      'windows-1252',
      'ascii',
      'utf-7',
      'ebcdic',
      'x-unknown',
    ]) {
      const enc: BufferEncoding = cs.startsWith('utf-16') ? 'utf16le' : 'latin1';
      post('non-UTF-8 charset', Buffer.from(JSON.stringify(good), enc), {
        ...auth,
        'content-type': `application/json; charset=${cs}`,
      });
    }
    post(
      'non-UTF-8 charset',
      Buffer.from(`{"source":"${good.source}","target":"${registry.host}/\xe9t\xe9:1"}`, 'latin1'),
    );
    post(
      'non-UTF-8 charset',
      Buffer.concat([
        Buffer.from('{"source":"'),
        Buffer.from([0xc3, 0x28, 0xff]),
        Buffer.from(`","target":"${good.target}"}`),
      ]),
    );
    for (const ct of [
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/xml',
      '',
    ]) {
      post('content type', JSON.stringify(good), { ...auth, 'content-type': ct });
    }
    // targets not allowed, or disguised
    const badTargets = [
      'evil.example/x:1',
      'docker.io/library/alpine:1',
      '10.0.0.1/x:1',
      '169.254.169.254/latest:1',
      `127.0.0.2:${port}/x:1`,
      `localhost:${port}/x:1`,
      `127.0.0.1:${port + 1}/x:1`,
      `127.0.0.1/x:1`,
      `0x7f.0.0.2:${port}/x:1`,
      `0x7f.1:${port + 1}/x:1`,
      `2130706434:${port}/x:1`,
      `017700000002:${port}/x:1`,
      `127.1:1/x:1`,
      `[::1]:${port}/x:1`,
      `[::ffff:127.0.0.2]:${port}/x:1`,
      `user:pass@${registry.host}/x:1`,
      `user@${registry.host}/x:1`,
      `${registry.host}@evil.example/x:1`,
      `http://${registry.host}/x:1`,
      `https://${registry.host}/x:1`,
      `docker://${registry.host}/x:1`,
      `//${registry.host}/x:1`,
      `${registry.host}#@evil.example/x:1`,
      `${registry.host}\\@evil.example/x:1`,
      `evil.example?${registry.host}/x:1`,
      `${registry.host}%2f..%2fevil/x:1`,
      `${registry.host}/../../x:1`,
      `${registry.host}/UPPER/x:1`,
      `${registry.host}/x:${'t'.repeat(200)}`,
      `${registry.host}/x y:1`,
      `${registry.host}/x\n:1`,
      `${registry.host}/x\u0000:1`,
      `127.0.0.1.:${port}/x:1`,
      ` ${registry.host}/x:1`,
      `${registry.host}:99999/x:1`,
      `${registry.host}/`,
      '',
      '/',
    ];
    for (const t of badTargets) post('targets not allowed / disguised', { ...good, target: t });
    for (const t of badTargets.slice(0, 12))
      post('targets not allowed / disguised', {
        source: good.source,
        target: good.target,
        targets: [good.target, t],
      });
    // sources outside the root
    const outside = [
      'dir:/etc',
      'dir:/',
      `dir:${root}/..`,
      `dir:${root}/../..`,
      `dir:${join(root, '..', 'x')}`,
      'dir:../ok',
      'dir:~/x',
      'oci:/etc',
      'oci:/proc/self',
      'docker-archive:/etc/passwd',
      'docker-archive:/dev/zero',
      `oci:${root}/../../etc:latest`,
      'file:///etc/passwd',
      `dir:${root}%2f..%2f..`,
      `dir:${root}/\u0000/x`,
      'tarball:/etc/passwd',
      'docker-daemon:alpine',
      'docker://evil.example/x:1',
      `docker://169.254.169.254/x:1`,
      'dir:',
      'oci:',
      ':',
      `dir:/proc/${process.pid}/root`,
    ];
    for (const s of outside) post('paths outside the root', { ...good, source: s });
    // bad tokens
    const badAuth: Record<string, string>[] = [
      {},
      { authorization: 'Bearer' },
      { authorization: 'Bearer ' },
      { authorization: `Bearer ${TOKEN}x` },
      { authorization: `Bearer x${TOKEN}` },
      { authorization: `Bearer ${TOKEN.slice(0, -1)}` },
      { authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` },
      { authorization: TOKEN },
      { authorization: `Bearer ${TOKEN} ${TOKEN}` },
      { authorization: `Bearer ${'a'.repeat(8000)}` },
      { authorization: 'Bearer \u00e9' },
      { authorization: `Token ${TOKEN}` },
      { cookie: `ferry_session=${TOKEN}` },
      { 'x-api-key': TOKEN },
    ];
    for (const h of badAuth) {
      cases.push({
        category: 'bad tokens',
        method: 'POST',
        path: '/v1/pushes',
        headers: { ...h, 'content-type': 'application/json' },
        body: JSON.stringify(good),
      });
      cases.push({ category: 'bad tokens', method: 'GET', path: '/v1/pushes', headers: h });
      cases.push({
        category: 'bad tokens',
        method: 'GET',
        path: `/v1/pushes/${id}/events`,
        headers: h,
      });
    }
    for (const p of [
      '/v1/pushes?access_token=' + TOKEN,
      '/admin/queues/api/queues',
      '/metrics',
      '/openapi.json?token=' + TOKEN,
    ]) {
      cases.push({ category: 'bad tokens', method: 'GET', path: p, headers: {} });
    }
    // admin routes with a push token
    for (const q of ['lookup', 'upload', 'assemble']) {
      cases.push({
        category: 'admin routes with a push token',
        method: 'PUT',
        path: `/admin/queues/api/queues/${q}/pause`,
        headers: auth,
      });
      cases.push({
        category: 'admin routes with a push token',
        method: 'PUT',
        path: `/admin/queues/api/queues/${q}/resume`,
        headers: auth,
      });
      cases.push({
        category: 'admin routes with a push token',
        method: 'PUT',
        path: `/admin/queues/api/queues/${q}/clean/completed`,
        headers: auth,
      });
      cases.push({
        category: 'admin routes with a push token',
        method: 'PUT',
        path: `/admin/queues/api/queues/${q}/retry/failed`,
        headers: auth,
      });
      cases.push({
        category: 'admin routes with a push token',
        method: 'PUT',
        path: `/admin/queues/api/queues/${q}/empty`,
        headers: auth,
      });
    }
    cases.push({
      category: 'admin routes with a push token',
      method: 'PUT',
      path: '/admin/queues/api/queues/pause',
      headers: auth,
    });
    cases.push({
      category: 'admin routes with a push token',
      method: 'PUT',
      path: '/admin/queues/api/queues/resume',
      headers: auth,
    });
    // Last-Event-IDs
    const badIds = [
      '18446744073709551616-0',
      '0-18446744073709551616',
      '99999999999999999999999',
      '18446744073709551616',
      '-1',
      '-1-0',
      '1-2-3',
      'abc',
      '1-',
      '-',
      '1.5-0',
      '0x10-0',
      ' 1-0',
      '1-0 ',
      '１-0',
      '1e3-0',
      '9'.repeat(200),
      '\u0000',
      '$',
      '+',
      '*',
    ];
    for (const v of badIds) {
      // A header can carry only visible latin1: the others go in the query parameter only.
      if (/^[\x21-\x7e]+$/.test(v))
        cases.push({
          category: 'bad Last-Event-IDs',
          method: 'GET',
          path: `/v1/pushes/${id}/events`,
          headers: { ...auth, 'last-event-id': v },
        });
      cases.push({
        category: 'bad Last-Event-IDs',
        method: 'GET',
        path: `/v1/pushes/${id}/events?lastEventId=${encodeURIComponent(v)}`,
        headers: auth,
      });
    }
    // limits and list queries
    for (const q of [
      'limit=5000',
      'limit=1001',
      'limit=0',
      'limit=-1',
      'limit=abc',
      'limit=1e9',
      'limit=1.5',
      'limit=',
      'status=bogus',
      'status=',
      'limit=10&limit=20',
      'foo=bar',
    ]) {
      cases.push({
        category: 'limit / list query',
        method: 'GET',
        path: `/v1/pushes?${q}`,
        headers: auth,
      });
    }
    // ids and paths
    for (const p of [
      '/v1/pushes/..%2F..%2Fetc%2Fpasswd',
      '/v1/pushes/%00',
      '/v1/pushes/' + 'a'.repeat(5000),
      '/v1/pushes/nope/events',
      '/v1/pushes/x:y',
      '/v1/pushes/*',
    ]) {
      cases.push({ category: 'ids and paths', method: 'GET', path: p, headers: auth });
      cases.push({ category: 'ids and paths', method: 'DELETE', path: p, headers: auth });
    }
    for (const m of ['PUT', 'PATCH'])
      cases.push({
        category: 'ids and paths',
        method: m,
        path: '/v1/pushes',
        headers: json,
        body: JSON.stringify(good),
      });
    cases.push({
      category: 'ids and paths',
      method: 'POST',
      path: '/v1/pushes',
      headers: { ...json, 'idempotency-key': 'k'.repeat(10_000) },
      body: JSON.stringify(good),
    });

    // The counts before, the corpus, the counts after.
    const prefix = f.env.FERRY_QUEUE_PREFIX;
    const connection = { host: '127.0.0.1', port: redis.port };
    const queues = ['lookup', 'upload', 'assemble'].map(
      (q) => new Queue(q, { connection, prefix }),
    );
    const r = new Redis(redis.url);
    const counts = async () => {
      const jobs = await Promise.all(queues.map((q) => q.getJobCounts()));
      const pushes = (await r.keys(`${prefix}:push:*`)).filter(
        (k) => !k.endsWith(':events'),
      ).length;
      return JSON.stringify({ jobs, pushes });
    };
    const before = await counts();
    const answers: { c: Case; status: number | string }[] = [];
    try {
      for (const c of cases) {
        try {
          answers.push({ c, status: await send(f.url, c) });
        } catch (err) {
          answers.push({
            c,
            status: `no answer (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
          });
        }
      }
      const after = await counts();
      const byCategory = new Map<string, { n: number; statuses: Map<string, number> }>();
      for (const a of answers) {
        const e = byCategory.get(a.c.category) ?? { n: 0, statuses: new Map() };
        e.n++;
        e.statuses.set(String(a.status), (e.statuses.get(String(a.status)) ?? 0) + 1);
        byCategory.set(a.c.category, e);
      }
      figure(S, 'requests', cases.length);
      for (const [cat, e] of byCategory)
        figure(S, `  ${cat}`, `${e.n}: ${[...e.statuses].map(([s, n]) => `${n}×${s}`).join(', ')}`);
      const five = answers.filter((a) => typeof a.status === 'number' && a.status >= 500);
      const not4xx = answers.filter(
        (a) => !(typeof a.status === 'number' && a.status >= 400 && a.status < 500),
      );
      figure(S, '5xx answers', five.length);
      figure(S, 'answers that are not 4xx', not4xx.length);
      for (const a of not4xx) figure(S, '  not 4xx', describeCase(a.c, a.status));
      figure(
        S,
        'queues and pushes unchanged',
        before === after ? 'yes' : `no: ${before} → ${after}`,
      );
      assert.ok(cases.length >= 200, `only ${cases.length} cases`);
      assert.deepEqual(
        not4xx.map((a) => describeCase(a.c, a.status)),
        [],
      );
      assert.equal(before, after, 'something was enqueued');
    } finally {
      await Promise.allSettled(queues.map((q) => q.close()));
      r.disconnect();
    }
  });
});
