/**
 * Protocol corners against a node:http fake registry: resume from a reported
 * offset, 416, 429 + Retry-After, wrong manifest digests, schema1 payloads,
 * refused redirects / Locations / token realms, credential helpers.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  bufferBlobSource,
  RegistryClient,
  RegistryError,
  schema1Payload,
  type BlobSource,
  type RetryInfo,
} from '@ferry/registry-client';
import { startFakeRegistry, startTrap, type FakeRegistry } from './fake-registry';

function digestOf(b: Buffer): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex');
}

/** A buffer source that records every offset it was opened at. */
function recordingSource(buf: Buffer, stated?: string): BlobSource & { opens: number[] } {
  const inner = bufferBlobSource(buf, stated);
  const opens: number[] = [];
  return {
    size: buf.length,
    ...(stated ? { digest: stated } : {}),
    opens,
    open(offset: number) {
      opens.push(offset);
      return inner.open(offset);
    },
  };
}

async function rejectsWith(
  p: Promise<unknown>,
  code: string,
  msg?: RegExp,
): Promise<RegistryError> {
  let caught: unknown;
  try {
    await p;
  } catch (e) {
    caught = e;
  }
  assert.ok(
    caught instanceof RegistryError,
    `expected a RegistryError ${code}, got ${String(caught)}`,
  );
  assert.equal(caught.code, code, caught.message);
  if (msg) assert.match(caught.message, msg);
  return caught;
}

describe('registry client against a node:http fake', function () {
  let fake: FakeRegistry;
  let client: RegistryClient;
  let retries: RetryInfo[];
  const repo = (): { registry: string; repository: string } => ({
    registry: fake.host,
    repository: 'team/app',
  });

  beforeEach(async () => {
    fake = await startFakeRegistry();
    retries = [];
    client = new RegistryClient({
      allow: ['127.0.0.1'],
      retry: { attempts: 4, baseDelayMs: 5, maxDelayMs: 20 },
      dockerConfigPath: '/nonexistent/config.json',
      onRetry: (i) => retries.push(i),
    });
  });
  afterEach(async () => {
    await client.close();
    await fake.stop();
  });

  it('resumes a streamed upload from the offset the registry reports after a cut', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    fake.addFault({ method: 'PATCH', path: /\/blobs\/uploads\//, action: { cutAfter: 1_000_000 } });
    const src = recordingSource(data);
    const r = await client.uploadBlob(repo(), src, { chunkSize: 0 });
    assert.equal(r.digest, digestOf(data));
    assert.equal(r.size, data.length);
    assert.ok(r.resumes >= 1, `resumes ${r.resumes}`);
    assert.equal(r.restarts, 0);
    assert.ok(r.bytesSent > data.length, 'the cut bytes count as sent');
    assert.ok(r.bytesSent < 2 * data.length, `bytesSent ${r.bytesSent} < 2×size`);
    assert.deepEqual(src.opens, [0, 1_000_000], 'reopened at the reported offset');
    assert.ok(fake.blobs.get(r.digest)!.equals(data));
    assert.ok(
      fake.requests.some((q) => q.method === 'GET' && q.path.includes('/blobs/uploads/')),
      'asked the session status',
    );
  });

  it('handles a 416 on a chunk by re-querying the offset, honouring OCI-Chunk-Min-Length', async () => {
    await fake.stop();
    fake = await startFakeRegistry({ minChunk: 256 * 1024, absoluteLocations: true });
    const data = randomBytes(1024 * 1024 + 5);
    fake.addFault({
      method: 'PATCH',
      path: /\/blobs\/uploads\//,
      skip: 1,
      action: { status: 416 },
    });
    const src = recordingSource(data);
    const r = await client.uploadBlob(repo(), src, { chunkSize: 1024 });
    assert.equal(r.digest, digestOf(data));
    assert.ok(fake.blobs.get(r.digest)!.equals(data));
    assert.equal(r.resumes, 1);
    assert.deepEqual(src.opens, [0], 'the refused chunk was re-sent from the upload buffer');
    const patches = fake.requests.filter((q) => q.method === 'PATCH');
    assert.equal(patches.filter((p) => p.status === 416).length, 1);
    // chunks are at least the registry's minimum: 4 PATCHes of 256 KiB (+ the refused one) for
    // 1 MiB + 5, and the last 5 bytes as the body of the PUT
    assert.equal(patches.length, 5);
    const puts = fake.requests.filter((q) => q.method === 'PUT');
    assert.equal(puts.length, 1);
    assert.equal(puts[0]!.headers['content-length'], '5');
    assert.equal(patches[0]!.headers['content-range'], `0-${256 * 1024 - 1}`);
    assert.equal(patches[0]!.headers['content-length'], String(256 * 1024));
  });

  it('waits as a 429 Retry-After says, then succeeds', async () => {
    fake.addFault({
      method: 'POST',
      path: /\/blobs\/uploads\/$/,
      action: {
        status: 429,
        headers: { 'retry-after': '1' },
        body: '{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}',
      },
    });
    const data = randomBytes(10_000);
    const r = await client.uploadBlob(repo(), bufferBlobSource(data), { chunkSize: 0 });
    assert.equal(r.digest, digestOf(data));
    assert.equal(retries.length, 1);
    assert.equal(retries[0]!.error.code, 'FERRY_RATE_LIMITED');
    assert.equal(retries[0]!.delayMs, 1000);
    const posts = fake.requests.filter((q) => q.method === 'POST');
    assert.equal(posts.length, 2);
    assert.deepEqual(
      posts.map((p) => p.status),
      [429, 202],
      'one refused POST, then one after the wait',
    );
  });

  it('gives up after the retry budget on a persistent 503 and reports it as transient', async () => {
    for (let i = 0; i < 10; i++)
      fake.addFault({ method: 'HEAD', path: /\/blobs\//, action: { status: 503 } });
    const e = await rejectsWith(
      client.blobExists(repo(), digestOf(Buffer.from('x'))),
      'FERRY_REGISTRY_UNAVAILABLE',
    );
    assert.equal(e.transient, true);
    assert.equal(e.status, 503);
    assert.equal(fake.requests.filter((q) => q.method === 'HEAD').length, 4);
  });

  it('fails a blob whose stated digest differs before the final PUT, and cancels the session', async () => {
    const data = randomBytes(5000);
    const lie = digestOf(Buffer.from('something else'));
    await rejectsWith(
      client.uploadBlob(repo(), bufferBlobSource(data, lie), { chunkSize: 0 }),
      'FERRY_DIGEST_MISMATCH',
      /states sha256:[0-9a-f]+ but its bytes hash to/,
    );
    assert.equal(
      fake.requests.filter((q) => q.method === 'PUT').length,
      0,
      'no PUT with any digest',
    );
    assert.equal(fake.requests.filter((q) => q.method === 'DELETE').length, 1, 'session cancelled');
    assert.equal(fake.sessions.size, 0);
    assert.equal(fake.blobs.size, 0);
  });

  it('checks Docker-Content-Digest of a manifest PUT', async () => {
    await fake.stop();
    fake = await startFakeRegistry({ manifestDigest: () => digestOf(Buffer.from('not it')) });
    const body = Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json' }),
    );
    await rejectsWith(
      client.putManifest(repo(), 'v1', body, 'application/vnd.oci.image.manifest.v1+json'),
      'FERRY_DIGEST_MISMATCH',
      /registry says its digest is sha256:/,
    );
  });

  it('computes the schema1 digest over the canonical payload', async () => {
    // Built the way libtrust does: payload, then `,"signatures":[...]` spliced before the tail.
    const payload = Buffer.from(
      JSON.stringify(
        {
          schemaVersion: 1,
          name: 'team/app',
          tag: 'v1',
          architecture: 'amd64',
          fsLayers: [],
          history: [],
        },
        null,
        3,
      ),
    );
    const tail = Buffer.from('\n}');
    assert.ok(payload.subarray(payload.length - tail.length).equals(tail));
    const formatLength = payload.length - tail.length;
    const protectedHdr = Buffer.from(
      JSON.stringify({
        formatLength,
        formatTail: tail.toString('base64url'),
        time: '2026-01-01T00:00:00Z',
      }),
    ).toString('base64url');
    const signed = Buffer.concat([
      payload.subarray(0, formatLength),
      Buffer.from(
        `,\n   "signatures": [{"header":{"alg":"ES256"},"signature":"c2ln","protected":"${protectedHdr}"}]`,
      ),
      tail,
    ]);
    JSON.parse(signed.toString()); // still JSON
    assert.ok(schema1Payload(signed).equals(payload));

    await fake.stop();
    // This fake behaves like docker-registry: digest over the payload it recovers.
    fake = await startFakeRegistry({ manifestDigest: () => digestOf(payload) });
    const mt = 'application/vnd.docker.distribution.manifest.v1+prettyjws';
    const r = await client.putManifest(repo(), 'v1', signed, mt);
    assert.equal(r.digest, digestOf(payload));
    assert.notEqual(r.digest, digestOf(signed));
    const byDigest = await client.putManifest(repo(), digestOf(payload), signed, mt);
    assert.equal(byDigest.digest, digestOf(payload));
    await rejectsWith(
      client.putManifest(repo(), digestOf(signed), signed, mt),
      'FERRY_DIGEST_MISMATCH',
      /schema1 payload/,
    );

    await fake.stop();
    fake = await startFakeRegistry({ manifestDigest: (b) => digestOf(b) });
    await rejectsWith(client.putManifest(repo(), 'v1', signed, mt), 'FERRY_DIGEST_MISMATCH');
  });

  it('never connects to a registry that is not allowed', async () => {
    const trap = await startTrap();
    try {
      await rejectsWith(
        client.blobExists({ registry: trap.host, repository: 'a' }, digestOf(Buffer.from('x'))),
        'FERRY_REGISTRY_NOT_ALLOWED',
        /localhost:\d+ is not on the allowlist/,
      );
      assert.equal(
        await client
          .uploadBlob({ registry: trap.host, repository: 'a' }, bufferBlobSource(Buffer.from('x')))
          .catch((e: RegistryError) => e.code),
        'FERRY_REGISTRY_NOT_ALLOWED',
      );
      assert.equal(trap.hits, 0, 'no connection was made');
      // 127.1 is 127.0.0.1, which is allowed
      await client.ping(`127.1:${fake.port}`);
      assert.equal(fake.requests.filter((q) => q.path === '/v2/').length, 1);
    } finally {
      await trap.stop();
    }
  });

  it('refuses a redirect and an upload Location to a host that is not allowed', async () => {
    const trap = await startTrap();
    try {
      const d = digestOf(Buffer.from('x'));
      fake.addFault({
        method: 'GET',
        path: /\/blobs\/sha256:/,
        action: { status: 307, headers: { location: `http://${trap.host}/blob` } },
      });
      await rejectsWith(
        client.getBlob(repo(), d),
        'FERRY_REDIRECT_REFUSED',
        /sent us to localhost:\d+, which is not on the allowlist/,
      );
      fake.addFault({
        method: 'POST',
        path: /\/blobs\/uploads\/$/,
        action: {
          status: 202,
          headers: { location: `http://${trap.host}/v2/team/app/blobs/uploads/x` },
        },
      });
      await rejectsWith(
        client.uploadBlob(repo(), bufferBlobSource(Buffer.from('data'))),
        'FERRY_REDIRECT_REFUSED',
      );
      assert.equal(trap.hits, 0, 'nothing reached the other host');
    } finally {
      await trap.stop();
    }
  });

  it('follows a redirect to an allowed host without sending it credentials', async () => {
    const other = await startFakeRegistry();
    const dir = mkdtempSync(join(tmpdir(), 'ferry-rc-'));
    try {
      const data = Buffer.from('blob bytes');
      const d = digestOf(data);
      other.blobs.set(d, data);
      const cfg = join(dir, 'config.json');
      writeFileSync(
        cfg,
        JSON.stringify({ auths: { [fake.host]: { auth: Buffer.from('u:p').toString('base64') } } }),
      );
      await fake.stop();
      fake = await startFakeRegistry({
        gate: (req) =>
          req.headers.authorization === `Basic ${Buffer.from('u:p').toString('base64')}` ||
          !req.url?.startsWith('/v2/')
            ? undefined
            : { status: 401, headers: { 'www-authenticate': 'Basic realm="fake"' } },
      });
      writeFileSync(
        cfg,
        JSON.stringify({ auths: { [fake.host]: { auth: Buffer.from('u:p').toString('base64') } } }),
      );
      fake.addFault({
        method: 'GET',
        path: /\/blobs\/sha256:/,
        action: {
          status: 307,
          headers: { location: `http://localhost:${other.port}/v2/team/app/blobs/${d}` },
        },
      });
      const c2 = new RegistryClient({ allow: ['127.0.0.1', 'localhost'], dockerConfigPath: cfg });
      try {
        const { stream } = await c2.getBlob(repo(), d);
        const parts: Buffer[] = [];
        for await (const p of stream) parts.push(p as Buffer);
        assert.ok(Buffer.concat(parts).equals(data));
      } finally {
        await c2.close();
      }
      const redirected = fake.requests.find((q) => q.status === 307)!;
      assert.ok(redirected.headers.authorization, 'the registry got its credentials');
      const got = other.requests.find((q) => q.path.includes('/blobs/'))!;
      assert.equal(got.headers.authorization, undefined, 'the redirect target got none');
    } finally {
      await other.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a token realm on a host that is not allowed, sending it nothing', async () => {
    const trap = await startTrap();
    await fake.stop();
    fake = await startFakeRegistry({
      gate: () => ({
        status: 401,
        headers: { 'www-authenticate': `Bearer realm="http://${trap.host}/token",service="fake"` },
      }),
    });
    try {
      await rejectsWith(
        client.blobExists(repo(), digestOf(Buffer.from('x'))),
        'FERRY_REGISTRY_NOT_ALLOWED',
        /token realm host localhost:\d+ is not on the allowlist/,
      );
      assert.equal(trap.hits, 0);
    } finally {
      await trap.stop();
    }
  });

  it('takes Basic credentials from a credential helper, for that host only', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-rc-'));
    const oldPath = process.env.PATH;
    const seen: string[] = [];
    const second = await startFakeRegistry({
      gate: (req) => {
        seen.push(`second:${req.headers.authorization ?? ''}`);
        return undefined;
      },
    });
    try {
      const helper = join(dir, 'docker-credential-ferrytest');
      writeFileSync(
        helper,
        `#!/bin/sh\nread host\necho "$host" >> "${dir}/asked"\nif [ "$host" = "${'${WANT}'}" ]; then echo '{"ServerURL":"'$host'","Username":"helper-user","Secret":"helper-secret"}'; else echo "credentials not found in native keychain"; exit 1; fi\n`,
      );
      chmodSync(helper, 0o755);
      process.env.PATH = `${dir}:${oldPath}`;
      await fake.stop();
      const expected = `Basic ${Buffer.from('helper-user:helper-secret').toString('base64')}`;
      fake = await startFakeRegistry({
        gate: (req) => {
          seen.push(`first:${req.headers.authorization ?? ''}`);
          return req.headers.authorization === expected
            ? undefined
            : { status: 401, headers: { 'www-authenticate': 'Basic realm="fake"' } };
        },
      });
      process.env.WANT = fake.host;
      const cfg = join(dir, 'config.json');
      writeFileSync(cfg, JSON.stringify({ auths: {}, credHelpers: { [fake.host]: 'ferrytest' } }));
      const c2 = new RegistryClient({ allow: ['127.0.0.1'], dockerConfigPath: cfg });
      try {
        await c2.ping(fake.host);
        const data = randomBytes(1000);
        const r = await c2.uploadBlob(
          { registry: fake.host, repository: 'a/b' },
          bufferBlobSource(data),
          { chunkSize: 0 },
        );
        assert.equal(r.digest, digestOf(data));
        assert.equal(
          await c2.blobExists({ registry: second.host, repository: 'a/b' }, r.digest),
          undefined,
        );
      } finally {
        await c2.close();
      }
      // credsStore: the same helper, as the default store for every host
      writeFileSync(cfg, JSON.stringify({ auths: { [fake.host]: {} }, credsStore: 'ferrytest' }));
      const c3 = new RegistryClient({ allow: ['127.0.0.1'], dockerConfigPath: cfg });
      try {
        await c3.ping(fake.host);
      } finally {
        await c3.close();
      }
      assert.ok(seen.includes(`first:${expected}`), 'the helper credentials reached their host');
      assert.ok(
        seen.filter((s) => s.startsWith('second:')).every((s) => s === 'second:'),
        'the other host got no credentials',
      );
    } finally {
      process.env.PATH = oldPath;
      delete process.env.WANT;
      await second.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refreshes a bearer token once on a 401 in the middle of an upload', async () => {
    const tokens: string[] = [];
    let n = 0;
    const tokenServer = await startFakeRegistry({
      gate: (req) => {
        tokens.push(req.url ?? '');
        return undefined;
      },
    });
    // the token "server": answers GET /token with a fresh token each time
    await tokenServer.stop();
    const { createServer } = await import('node:http');
    const ts = createServer((req, res) => {
      tokens.push(req.url ?? '');
      n++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token: `tok${n}`, expires_in: 300 }));
    });
    await new Promise<void>((r) => ts.listen(0, '127.0.0.1', r));
    const tsPort = (ts.address() as { port: number }).port;
    let rejectOnce = true;
    await fake.stop();
    fake = await startFakeRegistry({
      gate: (req) => {
        const auth = req.headers.authorization ?? '';
        const challenge = {
          status: 401,
          headers: {
            'www-authenticate': `Bearer realm="http://127.0.0.1:${tsPort}/token",service="fake"`,
          },
        };
        if (!auth.startsWith('Bearer ')) return challenge;
        if (req.method === 'PATCH' && rejectOnce) {
          rejectOnce = false; // the token "expired" server-side
          return challenge;
        }
        return undefined;
      },
    });
    try {
      const data = randomBytes(200_000);
      const r = await client.uploadBlob(repo(), bufferBlobSource(data), { chunkSize: 64 * 1024 });
      assert.equal(r.digest, digestOf(data));
      assert.ok(fake.blobs.get(r.digest)!.equals(data));
      const pushTokens = tokens.filter((t) =>
        t.includes('scope=repository%3Ateam%2Fapp%3Apull%2Cpush'),
      );
      assert.equal(pushTokens.length, 2, `one token, then one refresh: ${tokens.join(' ')}`);
      assert.ok(
        fake.requests.some(
          (q) => q.method === 'PATCH' && q.headers.authorization === 'Bearer tok2',
        ),
      );
    } finally {
      ts.close();
    }
  });

  it('restarts once in a fresh session after DIGEST_INVALID on the final PUT, then fails permanently', async () => {
    const invalid = {
      status: 400,
      body: '{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}',
    };
    fake.addFault({ method: 'PUT', path: /\/blobs\/uploads\//, action: invalid });
    const data = randomBytes(70_000);
    const r = await client.uploadBlob(repo(), bufferBlobSource(data), { chunkSize: 0 });
    assert.equal(r.restarts, 1);
    assert.equal(r.bytesSent, 2 * data.length);
    assert.ok(fake.blobs.get(r.digest)!.equals(data));

    fake.addFault({ method: 'PUT', path: /\/blobs\/uploads\//, action: invalid });
    fake.addFault({ method: 'PUT', path: /\/blobs\/uploads\//, action: invalid });
    const e = await rejectsWith(
      client.uploadBlob(repo(), bufferBlobSource(data), { chunkSize: 0 }),
      'FERRY_DIGEST_MISMATCH',
    );
    assert.equal(e.transient, false);
    assert.equal(e.errors?.[0]?.code, 'DIGEST_INVALID');
    assert.equal(fake.sessions.size, 0, 'abandoned sessions are cancelled');
  });

  it('does not loop on a registry that keeps answering 416', async () => {
    for (let i = 0; i < 20; i++) {
      fake.addFault({ method: 'PATCH', path: /\/blobs\/uploads\//, action: { status: 416 } });
    }
    const e = await rejectsWith(
      client.uploadBlob(repo(), bufferBlobSource(randomBytes(10_000)), { chunkSize: 4096 }),
      'FERRY_REGISTRY_PROTOCOL',
    );
    assert.equal(e.status, 416);
    assert.equal(
      fake.requests.filter((q) => q.method === 'PATCH').length,
      4,
      'retry.attempts bounds it',
    );
  });

  it('stops on abort, cancels the session and puts nothing', async () => {
    const ac = new AbortController();
    const { Readable } = await import('node:stream');
    const src: BlobSource = {
      open: async () => {
        let n = 0;
        const stream = new Readable({
          read() {
            n++;
            if (n === 3) ac.abort();
            setTimeout(() => this.push(Buffer.alloc(64 * 1024, n)), 20);
          },
        });
        return { stream, done: new Promise(() => undefined) };
      },
    };
    await rejectsWith(
      client.uploadBlob(repo(), src, { chunkSize: 64 * 1024, signal: ac.signal }),
      'FERRY_ABORTED',
    );
    assert.equal(fake.requests.filter((q) => q.method === 'PUT').length, 0);
    assert.equal(fake.requests.filter((q) => q.method === 'DELETE').length, 1);
    assert.equal(fake.sessions.size, 0);
  });

  it('shares one token request among concurrent calls', async () => {
    const { createServer } = await import('node:http');
    let issued = 0;
    const ts = createServer((_req, res) => {
      issued++;
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ token: `t${issued}`, expires_in: 300 }));
      }, 50);
    });
    await new Promise<void>((r) => ts.listen(0, '127.0.0.1', r));
    const tsPort = (ts.address() as { port: number }).port;
    await fake.stop();
    fake = await startFakeRegistry({
      gate: (req) =>
        req.headers.authorization?.startsWith('Bearer ')
          ? undefined
          : {
              status: 401,
              headers: {
                'www-authenticate': `Bearer realm="http://127.0.0.1:${tsPort}/token",service="fake"`,
              },
            },
    });
    try {
      const d = digestOf(Buffer.from('x'));
      const all = await Promise.all([1, 2, 3, 4, 5].map(() => client.blobExists(repo(), d)));
      assert.deepEqual(all, [undefined, undefined, undefined, undefined, undefined]);
      assert.equal(issued, 1);
    } finally {
      ts.close();
    }
  });

  it('trades a docker identitytoken for an access token (OAuth2 refresh_token grant)', async () => {
    const { createServer } = await import('node:http');
    const forms: URLSearchParams[] = [];
    const ts = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        forms.push(new URLSearchParams(body));
        res.writeHead(req.method === 'POST' ? 200 : 405, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ access_token: 'oauth-access', expires_in: 300 }));
      });
    });
    await new Promise<void>((r) => ts.listen(0, '127.0.0.1', r));
    const tsPort = (ts.address() as { port: number }).port;
    await fake.stop();
    fake = await startFakeRegistry({
      gate: (req) =>
        req.headers.authorization === 'Bearer oauth-access'
          ? undefined
          : {
              status: 401,
              headers: {
                'www-authenticate': `Bearer realm="http://127.0.0.1:${tsPort}/token",service="fake"`,
              },
            },
    });
    const dir = mkdtempSync(join(tmpdir(), 'ferry-rc-'));
    const cfg = join(dir, 'config.json');
    writeFileSync(cfg, JSON.stringify({ auths: { [fake.host]: { identitytoken: 'refresh-me' } } }));
    const c2 = new RegistryClient({ allow: ['127.0.0.1'], dockerConfigPath: cfg });
    try {
      assert.equal(await c2.blobExists(repo(), digestOf(Buffer.from('x'))), undefined);
      assert.equal(forms.length, 1);
      assert.equal(forms[0]!.get('grant_type'), 'refresh_token');
      assert.equal(forms[0]!.get('refresh_token'), 'refresh-me');
      assert.equal(forms[0]!.get('service'), 'fake');
      assert.equal(forms[0]!.get('scope'), 'repository:team/app:pull');
    } finally {
      await c2.close();
      ts.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('fails permanently when a fresh token is refused too', async () => {
    await fake.stop();
    const { createServer } = await import('node:http');
    const ts = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token: 'useless', expires_in: 300 }));
    });
    await new Promise<void>((r) => ts.listen(0, '127.0.0.1', r));
    const tsPort = (ts.address() as { port: number }).port;
    fake = await startFakeRegistry({
      gate: () => ({
        status: 401,
        headers: {
          'www-authenticate': `Bearer realm="http://127.0.0.1:${tsPort}/token",service="fake"`,
        },
      }),
    });
    try {
      const e = await rejectsWith(
        client.blobExists(repo(), digestOf(Buffer.from('x'))),
        'FERRY_REGISTRY_UNAUTHORIZED',
      );
      assert.equal(e.transient, false);
      assert.equal(
        fake.requests.filter((q) => q.method === 'HEAD').length,
        2,
        'one try, one refresh, no more',
      );
    } finally {
      ts.close();
    }
  });
});
