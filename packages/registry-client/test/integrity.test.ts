/**
 * Integrity under contention (issue 7), against the node:http fake: a caller's
 * permit is never held through a sleep, one caller's abort never cancels a
 * token fetch another caller shares, a failed chunk is re-sent from the
 * upload's buffer, and a blob HEAD without a usable Content-Length is an
 * error. Assertions are on the order and count of events, never on timing.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import {
  bufferBlobSource,
  isTransient,
  MAX_CHUNK_SIZE,
  RegistryClient,
  RegistryError,
  skipAndHash,
  TRANSIENT_CODES,
  type BlobSource,
} from '@ferry/registry-client';
import { startFakeRegistry, type FakeRegistry } from './fake-registry';

function digestOf(b: Buffer): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex');
}

function recordingSource(buf: Buffer): BlobSource & { opens: number[] } {
  const inner = bufferBlobSource(buf);
  const opens: number[] = [];
  return {
    size: buf.length,
    opens,
    open(offset: number) {
      opens.push(offset);
      return inner.open(offset);
    },
  };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return e instanceof RegistryError ? e.code : `not a RegistryError: ${String(e)}`;
  }
  return 'resolved';
}

/** A token server whose answers wait until release() is called. */
async function startHeldTokenServer(): Promise<{
  port: number;
  received: number;
  waitForRequest(): Promise<void>;
  release(): void;
  stop(): Promise<void>;
}> {
  const held: ServerResponse[] = [];
  let received = 0;
  let released = false;
  const waiters: (() => void)[] = [];
  const answer = (res: ServerResponse): void => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token: `tok${received}`, expires_in: 300 }));
  };
  const server = createServer((req, res) => {
    req.resume();
    received++;
    waiters.splice(0).forEach((w) => w());
    if (released) answer(res);
    else held.push(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    get received() {
      return received;
    },
    waitForRequest: () =>
      received > 0 ? Promise.resolve() : new Promise<void>((r) => waiters.push(r)),
    release() {
      released = true;
      held.splice(0).forEach(answer);
    },
    stop: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

describe('registry client integrity (fake registry)', function () {
  let fake: FakeRegistry;
  let client: RegistryClient;
  const repo = (): { registry: string; repository: string } => ({
    registry: fake.host,
    repository: 'team/app',
  });

  beforeEach(async () => {
    fake = await startFakeRegistry();
    client = new RegistryClient({
      allow: ['127.0.0.1'],
      retry: { attempts: 4, baseDelayMs: 5, maxDelayMs: 20 },
      dockerConfigPath: '/nonexistent/config.json',
    });
  });
  afterEach(async () => {
    await client.close();
    await fake.stop();
  });

  it('releases the caller permit before a Retry-After wait and re-acquires it before the next request', async () => {
    const events: string[] = [];
    await fake.stop();
    fake = await startFakeRegistry({
      gate: (req) => {
        if (req.method === 'HEAD') events.push('request');
        return undefined;
      },
    });
    await client.close();
    client = new RegistryClient({
      allow: ['127.0.0.1'],
      retry: { attempts: 4, baseDelayMs: 5, maxDelayMs: 20 },
      dockerConfigPath: '/nonexistent/config.json',
      onRetry: () => events.push('sleep'),
    });
    fake.addFault({
      method: 'HEAD',
      path: /\/blobs\//,
      action: { status: 429, headers: { 'retry-after': '1' } },
    });
    const permit = {
      acquire: async () => void events.push('acquire'),
      release: async () => void events.push('release'),
    };
    await permit.acquire(); // the caller holds a permit when it calls
    const data = Buffer.from('present');
    fake.blobs.set(digestOf(data), data);
    const got = await client.blobExists(repo(), digestOf(data), { permit });
    assert.deepEqual(got, { size: data.length });
    assert.deepEqual(events, ['acquire', 'request', 'release', 'sleep', 'acquire', 'request']);
  });

  it('a mount waiting out a 503 backoff gives its permit back around the sleep', async () => {
    const events: string[] = [];
    fake.addFault({ method: 'POST', path: /\/blobs\/uploads\/$/, action: { status: 503 } });
    const data = Buffer.from('mountable');
    fake.blobs.set(digestOf(data), data);
    const permit = {
      acquire: async () => void events.push('acquire'),
      release: async () => void events.push('release'),
    };
    assert.equal(await client.mountBlob(repo(), digestOf(data), 'team/other', { permit }), true);
    assert.deepEqual(events, ['release', 'acquire']);
  });

  it('stops a lookup whose caller aborts while it waits out a Retry-After', async () => {
    fake.addFault({
      method: 'HEAD',
      path: /\/blobs\//,
      action: { status: 429, headers: { 'retry-after': '30' } },
    });
    const ac = new AbortController();
    const events: string[] = [];
    const permit = {
      acquire: async () => void events.push('acquire'),
      release: async () => {
        events.push('release');
        ac.abort(); // the permit lapsed: the holder stops its call
      },
    };
    assert.equal(
      await codeOf(
        client.blobExists(repo(), digestOf(Buffer.from('x')), { permit, signal: ac.signal }),
      ),
      'FERRY_ABORTED',
    );
    assert.deepEqual(events, ['release'], 'no re-acquire after the abort');
    assert.equal(fake.requests.filter((q) => q.method === 'HEAD').length, 1);
  });

  it("one caller's abort never cancels a token fetch another caller shares", async () => {
    const ts = await startHeldTokenServer();
    await fake.stop();
    fake = await startFakeRegistry({
      gate: (req) =>
        req.headers.authorization?.startsWith('Bearer ')
          ? undefined
          : {
              status: 401,
              headers: {
                'www-authenticate': `Bearer realm="http://127.0.0.1:${ts.port}/token",service="fake"`,
              },
            },
    });
    try {
      const a = new AbortController();
      const dataA = randomBytes(10_000);
      const dataB = randomBytes(20_000);
      const pA = client.uploadBlob(repo(), bufferBlobSource(dataA), {
        chunkSize: 0,
        signal: a.signal,
      });
      pA.catch(() => undefined);
      await ts.waitForRequest(); // A's token fetch is in flight
      const pB = client.uploadBlob(repo(), bufferBlobSource(dataB), { chunkSize: 0 });
      pB.catch(() => undefined);
      await new Promise((r) => setImmediate(r));
      a.abort();
      assert.equal(await codeOf(pA), 'FERRY_ABORTED');
      ts.release();
      const rB = await pB;
      assert.equal(rB.digest, digestOf(dataB));
      assert.ok(fake.blobs.get(rB.digest)?.equals(dataB));
      assert.equal(fake.blobs.has(digestOf(dataA)), false);
    } finally {
      await ts.stop();
    }
  });

  it('re-sends a failed chunk from its buffer when the registry kept the session (source opened once)', async () => {
    const chunk = 64 * 1024;
    const data = randomBytes(4 * chunk + 99);
    fake.addFault({
      method: 'PATCH',
      path: /\/blobs\/uploads\//,
      skip: 2,
      action: { status: 503, body: 'busy' },
    });
    const src = recordingSource(data);
    const r = await client.uploadBlob(repo(), src, { chunkSize: chunk });
    assert.deepEqual(src.opens, [0], 'the layer was not rebuilt');
    assert.equal(r.resumes, 1);
    assert.equal(r.restarts, 0);
    assert.equal(r.bytesSent, data.length + chunk, 'exactly the failed chunk went out twice');
    assert.ok(fake.blobs.get(r.digest)!.equals(data));
    const patches = fake.requests.filter((q) => q.method === 'PATCH');
    assert.deepEqual(
      patches.map((p) => p.headers['content-range']),
      [
        `0-${chunk - 1}`,
        `${chunk}-${2 * chunk - 1}`,
        `${2 * chunk}-${3 * chunk - 1}`,
        `${2 * chunk}-${3 * chunk - 1}`,
        `${3 * chunk}-${4 * chunk - 1}`,
      ],
    );
    // The last 99 bytes went with the PUT.
    const puts = fake.requests.filter((q) => q.method === 'PUT');
    assert.deepEqual(
      puts.map((p) => p.headers['content-length']),
      ['99'],
    );
  });

  it('gives each chunk back to the source once copied (release): scribbling over it changes nothing sent', async () => {
    const chunk = 64 * 1024;
    const data = randomBytes(10 * 40_000 + 7);
    // One PATCH fails: its chunk is re-sent from the upload's buffer, not from released memory.
    fake.addFault({
      method: 'PATCH',
      path: /\/blobs\/uploads\//,
      skip: 1,
      action: { status: 503, body: 'busy' },
    });
    const emitted: Buffer[] = [];
    const released: Buffer[] = [];
    const src: BlobSource = {
      size: data.length,
      async open(offset: number) {
        assert.equal(offset, 0);
        for (let i = 0; i < data.length; i += 40_000)
          emitted.push(Buffer.from(data.subarray(i, i + 40_000)));
        return {
          stream: Readable.from(emitted),
          done: Promise.resolve({ digest: digestOf(data), size: data.length }),
          release(c: Buffer) {
            released.push(c);
            c.fill(0xee);
          },
        };
      },
    };
    const r = await client.uploadBlob(repo(), src, { chunkSize: chunk });
    assert.equal(r.resumes, 1, 'the fault was hit');
    assert.ok(fake.blobs.get(r.digest)!.equals(data), 'the registry holds the source bytes');
    assert.equal(released.length, emitted.length, 'every chunk was given back');
    assert.equal(new Set(released).size, released.length, 'none twice');
    for (const c of released) assert.ok(emitted.includes(c), 'only chunks the source made');

    // A streamed upload (one PATCH) hands chunks to the request itself: it never releases.
    released.length = 0;
    emitted.length = 0;
    const r2 = await client.uploadBlob(repo(), src, { chunkSize: 0 });
    assert.ok(fake.blobs.get(r2.digest)!.equals(data));
    assert.equal(released.length, 0);
  });

  it('the last chunk rides on the PUT; a failed PUT is sent again from the buffer (source opened once)', async () => {
    const chunk = 64 * 1024;
    const data = randomBytes(2 * chunk + 500);
    fake.addFault({ method: 'PUT', path: /\/blobs\/uploads\//, action: { status: 503 } });
    const src = recordingSource(data);
    const r = await client.uploadBlob(repo(), src, { chunkSize: chunk });
    assert.deepEqual(src.opens, [0], 'the layer was not rebuilt');
    assert.equal(r.resumes, 1);
    assert.equal(r.restarts, 0);
    assert.ok(fake.blobs.get(r.digest)!.equals(data));
    assert.equal(r.bytesSent, data.length + 500, 'the held 500 bytes went out twice');
    const methods = fake.requests
      .filter((q) => q.method !== 'GET')
      .map((q) => `${q.method} ${q.status}`);
    assert.deepEqual(methods, ['POST 202', 'PATCH 202', 'PATCH 202', 'PUT 503', 'PUT 201']);
  });

  it('a PUT cut part-way through the last chunk sends only the rest, then commits', async () => {
    const chunk = 64 * 1024;
    const data = randomBytes(chunk + 5000);
    fake.addFault({ method: 'PUT', path: /\/blobs\/uploads\//, action: { cutAfter: 1200 } });
    const src = recordingSource(data);
    const r = await client.uploadBlob(repo(), src, { chunkSize: chunk });
    assert.deepEqual(src.opens, [0]);
    assert.ok(fake.blobs.get(r.digest)!.equals(data));
    const puts = fake.requests.filter((q) => q.method === 'PUT');
    assert.deepEqual(
      puts.map((p) => p.headers['content-length']),
      ['5000', String(5000 - 1200)],
    );
  });

  /** A source of `data` (size stated or not) that gives its first `first` bytes, then waits for release(). */
  function gatedSource(data: Buffer, first: number, statedSize: number | undefined) {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const src: BlobSource = {
      ...(statedSize !== undefined ? { size: statedSize } : {}),
      open(offset: number) {
        async function* pieces() {
          yield data.subarray(0, first);
          await gate;
          yield data.subarray(first);
        }
        return Promise.resolve(skipAndHash(Readable.from(pieces()), offset));
      },
    };
    return { src, release };
  }

  it('with the size known, a chunk PATCH starts while the chunk is still read; without it, once the chunk is full', async () => {
    const chunk = 64 * 1024;
    const data = randomBytes(3 * chunk + 10);
    const early = gatedSource(data, chunk / 2, data.length);
    const p = client.uploadBlob(repo(), early.src, { chunkSize: chunk });
    for (let i = 0; i < 200 && !fake.requests.some((q) => q.method === 'PATCH'); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(
      fake.requests.some((q) => q.method === 'PATCH'),
      'the PATCH of the first chunk began with half of it read',
    );
    early.release();
    const r = await p;
    assert.ok(fake.blobs.get(r.digest)!.equals(data));
    assert.deepEqual(
      fake.requests.filter((q) => q.method === 'PATCH').map((q) => q.headers['content-range']),
      [`0-${chunk - 1}`, `${chunk}-${2 * chunk - 1}`, `${2 * chunk}-${3 * chunk - 1}`],
    );
    assert.equal(r.bytesSent, data.length);

    const before = fake.requests.length;
    const late = gatedSource(data, chunk / 2, undefined);
    const q = client.uploadBlob(repo(), late.src, { chunkSize: chunk });
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(
      !fake.requests.slice(before).some((x) => x.method === 'PATCH'),
      'no PATCH before the chunk is full when the size is not known',
    );
    late.release();
    const r2 = await q;
    assert.equal(r2.digest, r.digest);
  });

  it('a source that ends before the size it stated fails clearly (the PATCH taking its chunk is stopped)', async () => {
    const chunk = 64 * 1024;
    const data = randomBytes(chunk + chunk / 2);
    const src: BlobSource = { ...bufferBlobSource(data), size: 3 * chunk };
    await assert.rejects(
      client.uploadBlob(repo(), src, { chunkSize: chunk }),
      (e: unknown) => e instanceof RegistryError && /bytes/.test(e.message),
    );
    assert.equal(fake.blobs.size, 0, 'nothing was committed');
  });

  it('a blob smaller than one chunk is one POST and one PUT that carries it', async () => {
    const data = randomBytes(777);
    const r = await client.uploadBlob(repo(), recordingSource(data), { chunkSize: 64 * 1024 });
    assert.ok(fake.blobs.get(r.digest)!.equals(data));
    const blobRequests = fake.requests.filter((q) => q.path.includes('/blobs/'));
    assert.deepEqual(
      blobRequests.map((q) => q.method),
      ['POST', 'PUT'],
    );
    assert.equal(blobRequests[1]!.headers['content-length'], '777');
  });

  it('re-sends only the tail of a chunk the registry partly kept', async () => {
    const chunk = 64 * 1024;
    const data = randomBytes(3 * chunk);
    fake.addFault({
      method: 'PATCH',
      path: /\/blobs\/uploads\//,
      skip: 1,
      action: { cutAfter: 1000 },
    });
    const src = recordingSource(data);
    const r = await client.uploadBlob(repo(), src, { chunkSize: chunk });
    assert.deepEqual(src.opens, [0]);
    assert.ok(fake.blobs.get(r.digest)!.equals(data));
    const ranges = fake.requests
      .filter((q) => q.method === 'PATCH')
      .map((p) => p.headers['content-range']);
    assert.equal(ranges[2], `${chunk + 1000}-${2 * chunk - 1}`);
  });

  it('rejects a chunk size above MAX_CHUNK_SIZE with a clear error', async () => {
    assert.equal(MAX_CHUNK_SIZE, 512 * 1024 * 1024);
    let err: unknown;
    try {
      await client.uploadBlob(repo(), bufferBlobSource(Buffer.from('x')), {
        chunkSize: MAX_CHUNK_SIZE + 1,
      });
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof RegistryError);
    assert.equal(err.code, 'FERRY_INVALID_ARGUMENT');
    assert.match(err.message, /512 MiB/);
    assert.equal(fake.requests.length, 0, 'nothing was sent');
  });

  // (an unparsable Content-Length never reaches the client: undici's parser refuses it)
  for (const [name, headers] of [['without Content-Length', {}]] as const) {
    it(`a blob HEAD ${name} is a permanent protocol error, never size -1`, async () => {
      const d = digestOf(Buffer.from('y'));
      await fake.stop();
      const server = createServer((req, res) => {
        if (req.url === '/v2/') return void res.end('{}');
        // node:http would add a Content-Length; write the head by hand
        res.socket!.write(
          `HTTP/1.1 200 OK\r\n${Object.entries(headers)
            .map(([k, v]) => `${k}: ${v}\r\n`)
            .join('')}docker-content-digest: ${d}\r\nconnection: close\r\n\r\n`,
        );
        res.socket!.end();
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server.address() as AddressInfo).port;
      fake = await startFakeRegistry(); // for afterEach
      try {
        let err: unknown;
        try {
          await client.blobExists({ registry: `127.0.0.1:${port}`, repository: 'team/app' }, d);
        } catch (e) {
          err = e;
        }
        assert.ok(err instanceof RegistryError, String(err));
        assert.equal(err.code, 'FERRY_REGISTRY_PROTOCOL');
        assert.equal(err.transient, false);
        assert.match(err.message, /Content-Length/);
      } finally {
        server.closeAllConnections();
        await new Promise<void>((r) => server.close(() => r()));
      }
    });
  }

  it('one exported decision for transient vs permanent', () => {
    assert.deepEqual([...TRANSIENT_CODES].sort(), [
      'FERRY_RATE_LIMITED',
      'FERRY_REGISTRY_UNAVAILABLE',
      'FERRY_UPLOAD_SESSION_LOST',
    ]);
    assert.equal(isTransient('FERRY_RATE_LIMITED'), true);
    assert.equal(isTransient('FERRY_DIGEST_MISMATCH'), false);
    assert.equal(isTransient(new RegistryError('FERRY_REGISTRY_UNAVAILABLE', 'x')), true);
    assert.equal(isTransient(new RegistryError('FERRY_ABORTED', 'x')), false);
    assert.equal(isTransient(Object.assign(new Error('reset'), { code: 'ECONNRESET' })), true);
    assert.equal(isTransient({ code: 'FERRY_UPLOAD_SESSION_LOST' }), true);
    assert.equal(isTransient(new Error('boom')), false);
  });
});
