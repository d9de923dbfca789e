/**
 * The credentials rule (DESIGN, issue 9 item 5): a credential for host H goes
 * to H and to the token realm of H's 401 challenge when that realm's host is
 * allowed — nowhere else; a realm with userinfo is refused; the challenge is
 * re-read after a 401 and is not cached for the process's life.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegistryClient, RegistryError } from '@ferry/registry-client';
import { Authenticator } from '../src/token';
import { Transport } from '../src/transport';
import { startFakeRegistry, type FakeRegistry } from './fake-registry';

const BASIC_H = `Basic ${Buffer.from('h-user:h-secret').toString('base64')}`;
const BASIC_O = `Basic ${Buffer.from('o-user:o-secret').toString('base64')}`;

interface TokenServer {
  port: number;
  seen: { url: string; authorization?: string }[];
  stop(): Promise<void>;
}

async function startTokenServer(token: string): Promise<TokenServer> {
  const seen: TokenServer['seen'] = [];
  const server: Server = createServer((req: IncomingMessage, res) => {
    seen.push({ url: req.url ?? '', authorization: req.headers.authorization });
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token, expires_in: 300 }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    seen,
    stop: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

const digest = 'sha256:' + createHash('sha256').update('x').digest('hex');

describe('registry client: where credentials go', function () {
  let dir: string;
  let cfg: string;
  const servers: { stop(): Promise<void> }[] = [];
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-creds-'));
    cfg = join(dir, 'config.json');
  });
  afterEach(async () => {
    for (const s of servers.splice(0)) await s.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A registry whose 401 names `realm()`, accepting `Bearer <accept()>`. */
  async function bearerRegistry(realm: () => string, accept: () => string): Promise<FakeRegistry> {
    const fake = await startFakeRegistry({
      gate: (req) =>
        req.headers.authorization === `Bearer ${accept()}`
          ? undefined
          : {
              status: 401,
              headers: { 'www-authenticate': `Bearer realm="${realm()}",service="fake"` },
            },
    });
    servers.push(fake);
    return fake;
  }

  it("sends H's credentials to H's allowed token realm on another host, and never to another registry", async () => {
    const ts = await startTokenServer('tok-h');
    servers.push(ts);
    // the realm is on "localhost", another allowed host than the registry's 127.0.0.1
    const h = await bearerRegistry(
      () => `http://localhost:${ts.port}/token`,
      () => 'tok-h',
    );
    const other = await startFakeRegistry({
      gate: (req) =>
        req.headers.authorization === BASIC_O
          ? undefined
          : { status: 401, headers: { 'www-authenticate': 'Basic realm="other"' } },
    });
    servers.push(other);
    writeFileSync(
      cfg,
      JSON.stringify({
        auths: {
          [h.host]: { auth: Buffer.from('h-user:h-secret').toString('base64') },
          [other.host]: { auth: Buffer.from('o-user:o-secret').toString('base64') },
        },
      }),
    );
    const c = new RegistryClient({ allow: ['127.0.0.1', 'localhost'], dockerConfigPath: cfg });
    try {
      await c.blobExists({ registry: h.host, repository: 'team/app' }, digest);
      await c.blobExists({ registry: other.host, repository: 'team/app' }, digest);
    } finally {
      await c.close();
    }
    assert.equal(ts.seen.length, 1);
    assert.equal(ts.seen[0]!.authorization, BASIC_H, 'the realm of H got H’s credentials');
    // H itself only ever saw its bearer token, never a Basic credential (its challenge is Bearer)
    assert.ok(h.requests.every((q) => q.headers.authorization !== BASIC_O));
    assert.ok(h.requests.every((q) => q.headers.authorization !== BASIC_H));
    // the other registry got its own credentials, and never H's
    assert.ok(other.requests.some((q) => q.headers.authorization === BASIC_O));
    assert.ok(other.requests.every((q) => q.headers.authorization !== BASIC_H));
  });

  it('refuses a token realm that carries userinfo, with a clear error, sending nothing there', async () => {
    const ts = await startTokenServer('tok');
    servers.push(ts);
    const h = await bearerRegistry(
      () => `http://user:pw@127.0.0.1:${ts.port}/token`,
      () => 'tok',
    );
    writeFileSync(
      cfg,
      JSON.stringify({
        auths: { [h.host]: { auth: Buffer.from('h-user:h-secret').toString('base64') } },
      }),
    );
    const c = new RegistryClient({
      allow: ['127.0.0.1'],
      dockerConfigPath: cfg,
      retry: { attempts: 2, baseDelayMs: 5, maxDelayMs: 10 },
    });
    let caught: unknown;
    try {
      await c.blobExists({ registry: h.host, repository: 'team/app' }, digest);
    } catch (e) {
      caught = e;
    } finally {
      await c.close();
    }
    assert.ok(caught instanceof RegistryError, String(caught));
    assert.equal(caught.code, 'FERRY_REDIRECT_REFUSED');
    assert.match(caught.message, /token realm .* carries credentials \(user:password@\); refused/);
    assert.ok(!caught.message.includes('pw'), caught.message);
    assert.equal(ts.seen.length, 0, 'the realm got no request');
  });

  it('re-reads the challenge from a 401: a registry that moves its token service is followed', async () => {
    const a = await startTokenServer('tok-a');
    const b = await startTokenServer('tok-b');
    servers.push(a, b);
    let current = a;
    const h = await bearerRegistry(
      () => `http://127.0.0.1:${current.port}/token`,
      () => (current === a ? 'tok-a' : 'tok-b'),
    );
    const c = new RegistryClient({ allow: ['127.0.0.1'], dockerConfigPath: cfg });
    try {
      const repo = { registry: h.host, repository: 'team/app' };
      await c.blobExists(repo, digest);
      current = b; // tok-a is refused from now on, and the 401 names realm b
      await c.blobExists(repo, digest);
      await c.blobExists(repo, digest);
    } finally {
      await c.close();
    }
    assert.equal(a.seen.length, 1);
    assert.equal(b.seen.length, 1, 'realm b asked once, then its token reused');
    assert.ok(h.requests.some((q) => q.headers.authorization === 'Bearer tok-b'));
  });

  it('does not keep a challenge for the life of the process: it is asked again after its TTL', async () => {
    const ts = await startTokenServer('tok');
    servers.push(ts);
    const h = await bearerRegistry(
      () => `http://127.0.0.1:${ts.port}/token`,
      () => 'tok',
    );
    const transport = new Transport({
      allow: ['127.0.0.1'],
      insecure: ['127.0.0.0/8'],
      userAgent: 'ferry-test',
      connections: 2,
    });
    const auth = new Authenticator(transport, cfg, 50);
    try {
      const pings = () => h.requests.filter((q) => q.path === '/v2/').length;
      await auth.challenge(h.host);
      await auth.challenge(h.host);
      assert.equal(pings(), 1, 'cached within its TTL');
      await new Promise((r) => setTimeout(r, 80));
      const ch = await auth.challenge(h.host);
      assert.equal(pings(), 2, 'asked again after it');
      assert.equal(ch?.scheme, 'bearer');
    } finally {
      await transport.close();
    }
  });
});
