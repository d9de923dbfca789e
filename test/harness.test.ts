import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent, request, type Dispatcher } from 'undici';
import {
  freePort,
  libtrustKeyId,
  liveServices,
  pidAlive,
  portAnswers,
  redisPing,
  skopeo,
  skopeoInspect,
  spawnService,
  startProxy,
  startRedis,
  startRegistry,
  startTokenServer,
  chooseBackend,
  containerEngineAvailable,
  stopAllServices,
  tmpDir,
  waitForPidExit,
  type ProxyHandle,
  type RedisHandle,
  type RegistryHandle,
} from './helpers';
import { mochaHooks } from './helpers/mocha-hooks';

const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');

interface Opts {
  headers?: Record<string, string>;
  dispatcher?: Dispatcher;
}

/** Monolithic blob upload (POST + PUT ?digest=); returns the digest. */
async function pushBlob(base: string, repo: string, blob: Buffer, o: Opts = {}): Promise<string> {
  const digest = sha256(blob);
  const start = await request(`${base}/v2/${repo}/blobs/uploads/`, {
    method: 'POST',
    headers: o.headers,
    dispatcher: o.dispatcher,
  });
  await start.body.dump();
  assert.equal(start.statusCode, 202, `POST upload: ${start.statusCode}`);
  const location = new URL(String(start.headers.location), base);
  location.searchParams.set('digest', digest);
  const put = await request(location, {
    method: 'PUT',
    body: blob,
    headers: { ...o.headers, 'content-type': 'application/octet-stream' },
    dispatcher: o.dispatcher,
  });
  const text = await put.body.text();
  assert.equal(put.statusCode, 201, `PUT blob: ${put.statusCode} ${text}`);
  return digest;
}

/** Pushes a one-layer OCI image and returns its manifest digest. */
async function pushImage(base: string, repo: string, tag: string, o: Opts = {}) {
  const layer = randomBytes(1024);
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: [sha256(layer)] },
    }),
  );
  const layerDigest = await pushBlob(base, repo, layer, o);
  const configDigest = await pushBlob(base, repo, config, o);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: {
        mediaType: 'application/vnd.oci.image.config.v1+json',
        digest: configDigest,
        size: config.length,
      },
      layers: [
        {
          mediaType: 'application/vnd.oci.image.layer.v1.tar',
          digest: layerDigest,
          size: layer.length,
        },
      ],
    }),
  );
  const res = await request(`${base}/v2/${repo}/manifests/${tag}`, {
    method: 'PUT',
    body: manifest,
    headers: { ...o.headers, 'content-type': 'application/vnd.oci.image.manifest.v1+json' },
    dispatcher: o.dispatcher,
  });
  const text = await res.body.text();
  assert.equal(res.statusCode, 201, `PUT manifest: ${text}`);
  return { manifestDigest: sha256(manifest), layerDigest, layer };
}

/**
 * A libtrust-style JWS signature on a schema1 manifest (ES256, key in the
 * header's jwk) — just enough to show the schema1 registry variant verifies and
 * accepts one; Ferry's own signer lives in @ferry/signing.
 */
function signSchema1(manifest: object): Buffer {
  const content = Buffer.from(JSON.stringify(manifest, null, 3));
  const text = content.toString();
  const close = text.lastIndexOf('}');
  const formatLength = text.slice(0, close).trimEnd().length;
  const formatTail = text.slice(formatLength);
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = publicKey.export({ format: 'jwk' });
  const kid = libtrustKeyId(publicKey.export({ type: 'spki', format: 'der' }));
  const protectedHeader = Buffer.from(
    JSON.stringify({
      formatLength,
      formatTail: Buffer.from(formatTail).toString('base64url'),
      time: new Date().toISOString(),
    }),
  ).toString('base64url');
  const signingInput = `${protectedHeader}.${content.toString('base64url')}`;
  const signature = sign('sha256', Buffer.from(signingInput), {
    key: privateKey,
    dsaEncoding: 'ieee-p1363',
  });
  const signatures = [
    {
      header: { jwk: { crv: jwk.crv, kid, kty: jwk.kty, x: jwk.x, y: jwk.y }, alg: 'ES256' },
      signature: signature.toString('base64url'),
      protected: protectedHeader,
    },
  ];
  const pretty = JSON.stringify(signatures, null, 3).replace(/\n/g, '\n   ');
  return Buffer.from(`${text.slice(0, formatLength)},\n   "signatures": ${pretty}${formatTail}`);
}

async function status(url: string, o: Opts & { method?: 'GET' | 'HEAD' } = {}): Promise<number> {
  const res = await request(url, {
    method: o.method ?? 'GET',
    headers: o.headers,
    dispatcher: o.dispatcher,
  });
  await res.body.dump();
  return res.statusCode;
}

describe('test harness', function () {
  this.timeout(60_000);

  describe('ports and processes', () => {
    it('freePort gives a bindable loopback port', async () => {
      const port = await freePort();
      assert.ok(port > 0 && port < 65536);
      assert.equal(await portAnswers(port), false);
    });

    it('spawnService fails with the last log lines when the service exits early', async () => {
      await assert.rejects(
        spawnService({
          name: 'early-exit',
          cmd: process.execPath,
          args: ['-e', 'console.error("boom: config invalid"); process.exit(3)'],
          ready: async () => false,
        }),
        (err: Error) =>
          /exited with code 3/.test(err.message) && /boom: config invalid/.test(err.message),
      );
    });

    it('spawnService kills a service that is not ready in time', async () => {
      const before = new Set(liveServices().map((s) => s.pid));
      await assert.rejects(
        spawnService({
          name: 'never-ready',
          cmd: process.execPath,
          args: ['-e', 'console.log("waiting forever"); setInterval(() => {}, 1000)'],
          ready: async () => false,
          timeoutMs: 500,
          graceMs: 500,
        }),
        /was not ready within 500 ms[\s\S]*waiting forever/,
      );
      assert.deepEqual(
        liveServices().filter((s) => !before.has(s.pid)),
        [],
      );
    });

    it('stop() escalates to SIGKILL when SIGTERM is ignored', async () => {
      const marker = join(tmpDir('harness-stubborn'), 'handler-installed');
      const svc = await spawnService({
        name: 'stubborn',
        cmd: process.execPath,
        args: [
          '-e',
          `process.on("SIGTERM", () => {}); require("fs").writeFileSync(${JSON.stringify(marker)}, "");` +
            ' setInterval(() => {}, 1000)',
        ],
        // ready once the SIGTERM handler is in place
        ready: async () => existsSync(marker),
        graceMs: 300,
      });
      assert.ok(pidAlive(svc.pid));
      await svc.stop();
      assert.equal(svc.exitStatus?.signal, 'SIGKILL');
      assert.equal(pidAlive(svc.pid), false);
    });

    it('a missing binary with no container engine fails with one line saying what to install', async () => {
      // The probe settles on its own (its 2 s cap), and it runs once: later calls share its answer.
      const probe = containerEngineAvailable();
      const first = await probe;
      assert.equal(typeof first, 'boolean');
      if (process.env.FERRY_TEST_CONTAINERS !== '0') {
        assert.equal(containerEngineAvailable(), probe, 'engine detection is cached');
      }
      assert.equal(await containerEngineAvailable(), first);
      if (first) return; // an engine answers here: the container fallback would be used instead
      await assert.rejects(chooseBackend('ferry-no-such-binary'), (err: Error) => {
        assert.equal(err.message.includes('\n'), false);
        assert.match(
          err.message,
          /ferry-no-such-binary not found.*bash scripts\/install-system-deps\.sh/,
        );
        return true;
      });
    });

    it('the mocha root hook stops services a test left running', async () => {
      const svc = await spawnService({
        name: 'forgotten',
        cmd: process.execPath,
        args: ['-e', 'setInterval(() => {}, 1000)'],
        ready: async () => true,
      });
      assert.ok(liveServices().some((s) => s.pid === svc.pid));
      await mochaHooks.afterAll();
      assert.equal(pidAlive(svc.pid), false);
      assert.equal(liveServices().length, 0);
    });

    it('services die with a process that crashes after starting them', async () => {
      const dir = tmpDir('harness-crash');
      const pidFile = join(dir, 'pid');
      const script = join(dir, 'crash.ts');
      const helpers = join(__dirname, 'helpers');
      writeFileSync(
        script,
        `const { startRedis } = require(${JSON.stringify(helpers)});\n` +
          `const { writeFileSync } = require('node:fs');\n` +
          `startRedis().then((r) => { writeFileSync(${JSON.stringify(pidFile)}, String(r.pid)); throw new Error('test crashed'); });\n`,
      );
      const code = await new Promise<number | null>((resolve) => {
        const child = spawn(process.execPath, ['--require', 'tsx/cjs', script], {
          stdio: 'ignore',
        });
        child.once('exit', (c) => resolve(c));
      });
      assert.notEqual(code, 0);
      const pid = Number(readFileSync(pidFile, 'utf8'));
      assert.ok(pid > 0);
      // SIGKILL was sent from the dying process's exit hook; give the kernel a moment to reap it.
      assert.equal(
        await waitForPidExit(pid, 3_000),
        true,
        `redis-server ${pid} outlived its parent`,
      );
    });
  });

  describe('redis', () => {
    let redis: RedisHandle | undefined;
    afterEach(async () => redis?.stop());

    it('answers PING and is gone after stop', async () => {
      redis = await startRedis();
      assert.match(redis.url, /^redis:\/\/127\.0\.0\.1:\d+$/);
      assert.notEqual(redis.port, 6379);
      assert.equal(await redisPing(redis.host, redis.port), true);
      const pid = redis.pid as number;
      assert.ok(pidAlive(pid));
      await redis.stop();
      assert.equal(pidAlive(pid), false);
      assert.equal(
        await portAnswers(redis.port),
        false,
        'port still accepts connections after stop',
      );
    });

    it('runs with maxmemory-policy noeviction and no persistence', async () => {
      redis = await startRedis();
      const { connect } = await import('node:net');
      const reply = await new Promise<string>((resolve, reject) => {
        const s = connect({ host: redis!.host, port: redis!.port });
        let out = '';
        s.on('connect', () =>
          s.write('CONFIG GET maxmemory-policy\r\nCONFIG GET save\r\nCONFIG GET appendonly\r\n'),
        );
        s.on('data', (d) => {
          out += d;
          if ((out.match(/\r\n/g) ?? []).length >= 15) {
            s.destroy();
            resolve(out);
          }
        });
        s.on('error', reject);
      });
      assert.match(reply, /maxmemory-policy\r\n\$10\r\nnoeviction/);
      assert.match(reply, /save\r\n\$0\r\n\r\n/);
      assert.match(reply, /appendonly\r\n\$2\r\nno/);
    });
  });

  describe('registry (plain)', () => {
    let registry: RegistryHandle | undefined;
    afterEach(async () => registry?.stop());

    it('answers GET /v2/ 200, stores an image skopeo can read, and stops', async () => {
      registry = await startRegistry();
      assert.match(registry.host, /^127\.0\.0\.1:\d+$/);
      assert.equal(registry.url, `http://${registry.host}`);
      assert.equal(await status(`${registry.url}/v2/`), 200);
      const { manifestDigest } = await pushImage(registry.url, 'harness/plain', 'v1');
      const info = await skopeoInspect(`docker://${registry.host}/harness/plain:v1`);
      assert.equal(info.Digest, manifestDigest);
      const raw = await skopeo([
        'inspect',
        '--tls-verify=false',
        '--raw',
        `docker://${registry.host}/harness/plain:v1`,
      ]);
      assert.equal(sha256(Buffer.from(raw.stdout)), manifestDigest);
      assert.deepEqual(JSON.parse(readFileSync(registry.dockerConfigPath, 'utf8')), { auths: {} });
      const pid = registry.pid as number;
      await registry.stop();
      assert.equal(pidAlive(pid), false);
      assert.equal(await portAnswers(registry.port), false);
    });

    it('deletes are enabled', async () => {
      registry = await startRegistry();
      const { layerDigest } = await pushImage(registry.url, 'harness/del', 'v1');
      const blob = `${registry.url}/v2/harness/del/blobs/${layerDigest}`;
      assert.equal(await status(blob, { method: 'HEAD' }), 200);
      const res = await request(blob, { method: 'DELETE' });
      await res.body.dump();
      assert.equal(res.statusCode, 202);
      assert.equal(await status(blob, { method: 'HEAD' }), 404);
    });

    it('skopeo() rejects with stderr on failure', async () => {
      registry = await startRegistry();
      await assert.rejects(
        skopeoInspect(`docker://${registry.host}/harness/missing:nope`),
        /skopeo inspect --tls-verify=false docker:\/\/.*failed \(exit \d+\): .*(manifest unknown|not found)/i,
      );
    });
  });

  describe('registry variants', () => {
    let registry: RegistryHandle | undefined;
    afterEach(async () => {
      await registry?.stop();
      registry = undefined;
    });

    const basicHeader = (u: string, p: string) => ({
      authorization: 'Basic ' + Buffer.from(`${u}:${p}`).toString('base64'),
    });

    it('hostname localhost names the registry localhost:PORT', async () => {
      registry = await startRegistry({ hostname: 'localhost' });
      assert.equal(registry.host, `localhost:${registry.port}`);
      assert.equal(await status(`${registry.url}/v2/`), 200);
    });

    it('basic: 401 without credentials, 200 with, and the docker config works for skopeo', async () => {
      registry = await startRegistry({ auth: 'basic' });
      const { username, password } = registry;
      assert.ok(username && password);
      const res = await request(`${registry.url}/v2/`);
      await res.body.dump();
      assert.equal(res.statusCode, 401);
      assert.match(String(res.headers['www-authenticate']), /^Basic realm=/);
      assert.equal(
        await status(`${registry.url}/v2/`, { headers: basicHeader(username, password) }),
        200,
      );
      assert.equal(
        await status(`${registry.url}/v2/`, { headers: basicHeader(username, password + 'x') }),
        401,
      );
      const cfg = JSON.parse(readFileSync(registry.dockerConfigPath, 'utf8'));
      assert.equal(
        Buffer.from(cfg.auths[registry.host].auth, 'base64').toString(),
        `${username}:${password}`,
      );
      const { manifestDigest } = await pushImage(registry.url, 'harness/basic', 'v1', {
        headers: basicHeader(username, password),
      });
      await assert.rejects(
        skopeoInspect(`docker://${registry.host}/harness/basic:v1`),
        /unauthorized|authentication required/i,
      );
      const info = await skopeoInspect(`docker://${registry.host}/harness/basic:v1`, [
        '--authfile',
        registry.dockerConfigPath,
      ]);
      assert.equal(info.Digest, manifestDigest);
    });

    it('basic: several users, each with its own password', async () => {
      const users = [
        { username: 'alice', password: 'alice-secret' },
        { username: 'bob', password: 'bob-secret' },
      ];
      registry = await startRegistry({ auth: 'basic', users });
      assert.equal(registry.username, 'alice');
      assert.equal(
        await status(`${registry.url}/v2/`, { headers: basicHeader('bob', 'bob-secret') }),
        200,
      );
      assert.equal(
        await status(`${registry.url}/v2/`, { headers: basicHeader('bob', 'alice-secret') }),
        401,
      );
    });

    it('token: Bearer challenge names the realm; issued tokens are accepted with their scope', async () => {
      registry = await startRegistry({ auth: 'token' });
      const ts = registry.tokenServer!;
      assert.ok(ts);
      const res = await request(`${registry.url}/v2/`);
      await res.body.dump();
      assert.equal(res.statusCode, 401);
      const challenge = String(res.headers['www-authenticate']);
      assert.match(challenge, /^Bearer /);
      assert.ok(challenge.includes(`realm="${ts.url}"`), challenge);
      const service = /service="([^"]+)"/.exec(challenge)?.[1];
      assert.ok(service);

      const getToken = async (
        scope: string,
        creds = basicHeader(registry!.username!, registry!.password!),
      ) => {
        const r = await request(
          `${ts.url}?service=${encodeURIComponent(service)}&scope=${encodeURIComponent(scope)}`,
          {
            headers: creds,
          },
        );
        const body = (await r.body.json()) as {
          token: string;
          access_token: string;
          expires_in: number;
        };
        return { status: r.statusCode, body };
      };
      const push = await getToken('repository:harness/tok:pull,push');
      assert.equal(push.status, 200);
      assert.equal(push.body.token, push.body.access_token);
      const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
      assert.equal(await status(`${registry.url}/v2/`, { headers: bearer(push.body.token) }), 200);
      const { layerDigest } = await pushImage(registry.url, 'harness/tok', 'v1', {
        headers: bearer(push.body.token),
      });

      const pull = await getToken('repository:harness/tok:pull');
      const blob = `${registry.url}/v2/harness/tok/blobs/${layerDigest}`;
      assert.equal(await status(blob, { method: 'HEAD', headers: bearer(pull.body.token) }), 200);
      // The pull token does not allow pushing, nor reading another repository.
      const denied = await request(`${registry.url}/v2/harness/tok/blobs/uploads/`, {
        method: 'POST',
        headers: bearer(pull.body.token),
      });
      await denied.body.dump();
      assert.equal(denied.statusCode, 401);
      assert.match(String(denied.headers['www-authenticate']), /error="insufficient_scope"/);
      assert.equal(
        await status(`${registry.url}/v2/harness/other/blobs/${layerDigest}`, {
          method: 'HEAD',
          headers: bearer(pull.body.token),
        }),
        401,
      );

      assert.deepEqual(
        ts.requests.map((r) => [r.scope, r.account, r.status]),
        [
          ['repository:harness/tok:pull,push', registry.username, 200],
          ['repository:harness/tok:pull', registry.username, 200],
        ],
      );
      assert.equal(ts.issued, 2);
      assert.equal((await getToken('repository:harness/tok:pull', {} as never)).status, 401);
      assert.equal(
        (await getToken('repository:harness/tok:pull', basicHeader(registry.username!, 'wrong')))
          .status,
        401,
      );
      assert.equal(ts.issued, 2);
    });

    it('token: skopeo completes the token flow with the docker config', async () => {
      registry = await startRegistry({ auth: 'token' });
      const ts = registry.tokenServer!;
      const token = ts.issue(registry.username!, ['repository:harness/sk:pull,push']);
      const { manifestDigest } = await pushImage(registry.url, 'harness/sk', 'v1', {
        headers: { authorization: `Bearer ${token}` },
      });
      const info = await skopeoInspect(`docker://${registry.host}/harness/sk:v1`, [
        '--authfile',
        registry.dockerConfigPath,
      ]);
      assert.equal(info.Digest, manifestDigest);
      assert.ok(
        ts.requests.some(
          (r) => r.scope.includes('repository:harness/sk:pull') && r.account === registry!.username,
        ),
        JSON.stringify(ts.requests),
      );
    });

    it('token: the registry accepts the key named by x5c alone or by its libtrust kid alone', async () => {
      registry = await startRegistry({ auth: 'token' });
      const ts = registry.tokenServer!;
      for (const keyIn of ['x5c', 'kid', 'both'] as const) {
        const token = ts.issue(registry.username!, [], keyIn);
        const header = JSON.parse(Buffer.from(token.split('.')[0], 'base64url').toString());
        assert.equal('kid' in header, keyIn !== 'x5c');
        assert.equal('x5c' in header, keyIn !== 'kid');
        const r = await status(`${registry.url}/v2/`, {
          headers: { authorization: `Bearer ${token}` },
        });
        assert.equal(r, 200, `token with ${keyIn}`);
      }
      // A token signed by a key the registry does not trust is refused.
      const other = await startTokenServer({
        service: 'x',
        issuer: 'ferry-test-token-server',
        users: [{ username: 'u', password: 'p' }],
      });
      try {
        const forged = other.issue(registry.username!, []);
        assert.equal(
          await status(`${registry.url}/v2/`, { headers: { authorization: `Bearer ${forged}` } }),
          401,
        );
      } finally {
        await other.stop();
      }
    });

    it('token: TTL is configurable and revokeAll makes old tokens fail', async () => {
      registry = await startRegistry({ auth: 'token', tokenTtlSeconds: 120 });
      const ts = registry.tokenServer!;
      ts.setTokenTtl(2);
      const creds = basicHeader(registry.username!, registry.password!);
      const r = await request(`${ts.url}?scope=repository:harness/ttl:pull`, { headers: creds });
      const body = (await r.body.json()) as {
        token: string;
        expires_in: number;
        issued_at: string;
      };
      assert.equal(body.expires_in, 2);
      const claims = JSON.parse(Buffer.from(body.token.split('.')[1], 'base64url').toString());
      assert.equal(claims.exp - claims.iat, 2);
      assert.ok(!Number.isNaN(Date.parse(body.issued_at)));
      assert.throws(() => ts.setTokenTtl(0), /positive integer/);

      const bearer = { authorization: `Bearer ${body.token}` };
      assert.equal(await status(`${registry.url}/v2/`, { headers: bearer }), 200);
      const pidBefore = registry.pid!;
      await ts.revokeAll();
      assert.equal(pidAlive(pidBefore), false);
      assert.equal(await status(`${registry.url}/v2/`, { headers: bearer }), 401);
      const fresh = ts.issue(registry.username!, []);
      assert.equal(
        await status(`${registry.url}/v2/`, { headers: { authorization: `Bearer ${fresh}` } }),
        200,
      );
    });

    it('tls: https /v2/ works with the CA and fails without', async () => {
      registry = await startRegistry({ tls: true });
      assert.equal(registry.url, `https://${registry.host}`);
      assert.ok(registry.caFile && registry.caPem);
      assert.equal(readFileSync(registry.caFile, 'utf8'), registry.caPem);
      const trusted = new Agent({ connect: { ca: registry.caPem } });
      try {
        assert.equal(await status(`${registry.url}/v2/`, { dispatcher: trusted }), 200);
        const viaLocalhost = `https://localhost:${registry.port}/v2/`;
        assert.equal(await status(viaLocalhost, { dispatcher: trusted }), 200);
      } finally {
        await trusted.close();
      }
      const untrusted = new Agent();
      try {
        await assert.rejects(
          status(`${registry.url}/v2/`, { dispatcher: untrusted }),
          (err: Error & { code?: string }) =>
            /SELF_SIGNED|UNABLE_TO_VERIFY|CERT/i.test(`${err.code} ${err.message}`),
        );
      } finally {
        await untrusted.close();
      }
    });

    it('tls + token + basic-free docker config: skopeo reads through https with the CA', async () => {
      registry = await startRegistry({ tls: true, auth: 'token' });
      const certDir = tmpDir('harness-certs');
      writeFileSync(join(certDir, 'ca.crt'), registry.caPem!);
      const token = registry.tokenServer!.issue(registry.username!, [
        'repository:harness/tls:pull,push',
      ]);
      const dispatcher = new Agent({ connect: { ca: registry.caPem } });
      try {
        const { manifestDigest } = await pushImage(registry.url, 'harness/tls', 'v1', {
          headers: { authorization: `Bearer ${token}` },
          dispatcher,
        });
        const { stdout } = await skopeo([
          'inspect',
          '--cert-dir',
          certDir,
          '--authfile',
          registry.dockerConfigPath,
          `docker://${registry.host}/harness/tls:v1`,
        ]);
        assert.equal(JSON.parse(stdout).Digest, manifestDigest);
      } finally {
        await dispatcher.close();
      }
    });

    it('schema1: accepts a signed schema1 manifest that the plain registry refuses', async () => {
      registry = await startRegistry({ schema1: true });
      const config = JSON.parse(readFileSync(registry.configPath, 'utf8'));
      assert.deepEqual(config.compatibility, { schema1: { enabled: true } });
      const layer = randomBytes(512);
      const layerDigest = await pushBlob(registry.url, 'harness/s1', layer);
      const manifest = signSchema1({
        schemaVersion: 1,
        name: 'harness/s1',
        tag: 'v1',
        architecture: 'amd64',
        fsLayers: [{ blobSum: layerDigest }],
        history: [
          {
            v1Compatibility: JSON.stringify({
              id: 'a'.repeat(64),
              created: '2020-01-01T00:00:00Z',
            }),
          },
        ],
      });
      const put = async (base: string) => {
        const r = await request(`${base}/v2/harness/s1/manifests/v1`, {
          method: 'PUT',
          body: manifest,
          headers: { 'content-type': 'application/vnd.docker.distribution.manifest.v1+prettyjws' },
        });
        return { status: r.statusCode, text: await r.body.text() };
      };
      const accepted = await put(registry.url);
      assert.equal(accepted.status, 201, accepted.text);
      await registry.stop();
      registry = await startRegistry();
      await pushBlob(registry.url, 'harness/s1', layer);
      const refused = await put(registry.url);
      // distribution 2.8 without schema1 answers 500 UNKNOWN; only its log names the reason.
      assert.equal(refused.status, 500, refused.text);
      assert.match(registry.logs(), /manifest schema v1 unsupported/);
    });

    it('rejects bad options with a clear message', async () => {
      await assert.rejects(
        startRegistry({ auth: 'kerberos' as never }),
        /auth must be 'none', 'basic' or 'token'/,
      );
      await assert.rejects(startRegistry({ hostname: '10.0.0.1' as never }), /hostname must be/);
      await assert.rejects(
        startRegistry({ auth: 'basic', users: [{ username: 'a:b', password: 'x' }] }),
        /username/,
      );
    });
  });

  describe('proxy', () => {
    let registry: RegistryHandle | undefined;
    let proxy: ProxyHandle | undefined;
    afterEach(async () => {
      await proxy?.stop();
      await registry?.stop();
    });

    it('counts bytes both ways against the size of a blob', async () => {
      registry = await startRegistry();
      proxy = await startProxy({ host: '127.0.0.1', port: registry.port });
      const base = `http://${proxy.host}`;
      assert.equal(await status(`${base}/v2/`), 200);
      proxy.resetCounters();
      const blob = randomBytes(256 * 1024);
      const digest = await pushBlob(base, 'harness/proxy', blob);
      assert.ok(proxy.bytesUp >= blob.length, `bytesUp ${proxy.bytesUp} < ${blob.length}`);
      assert.ok(
        proxy.bytesUp < blob.length + 8 * 1024,
        `bytesUp ${proxy.bytesUp} counts more than the upload`,
      );
      const up = proxy.bytesUp;
      const down = proxy.bytesDown;
      const res = await request(`${base}/v2/harness/proxy/blobs/${digest}`);
      const body = Buffer.from(await res.body.arrayBuffer());
      assert.equal(sha256(body), digest);
      assert.ok(proxy.bytesDown - down >= blob.length);
      assert.ok(proxy.bytesUp - up < 4 * 1024);
    });

    it('cutOnceAfter resets one connection, then lets traffic flow', async () => {
      registry = await startRegistry();
      proxy = await startProxy({ host: '127.0.0.1', port: registry.port });
      const base = `http://${proxy.host}`;
      const blob = randomBytes(512 * 1024);
      proxy.cutOnceAfter(100 * 1024);
      await assert.rejects(
        pushBlob(base, 'harness/cut', blob),
        (err: Error & { code?: string }) => {
          return /UND_ERR_SOCKET|ECONNRESET|EPIPE/.test(`${err.code} ${err.message}`);
        },
      );
      assert.equal(proxy.cuts, 1);
      assert.ok(proxy.bytesUp >= 100 * 1024 && proxy.bytesUp <= 100 * 1024 + 16 * 1024);
      const digest = await pushBlob(base, 'harness/cut', blob);
      assert.equal(proxy.cuts, 1);
      assert.equal(
        await status(`${registry.url}/v2/harness/cut/blobs/${digest}`, { method: 'HEAD' }),
        200,
      );
    });
    it('cutOnceAfter counts from the moment it is armed, also on a kept-alive connection', async () => {
      registry = await startRegistry();
      proxy = await startProxy({ host: '127.0.0.1', port: registry.port });
      const agent = new Agent({ connections: 1 });
      try {
        const base = `http://${proxy.host}`;
        const first = randomBytes(64 * 1024);
        await pushBlob(base, 'harness/keep', first, { dispatcher: agent });
        assert.equal(proxy.connections, 1);
        // This connection already carried > 64 KiB; the cut must still wait for 32 KiB more.
        proxy.cutOnceAfter(32 * 1024);
        const before = proxy.bytesUp;
        await assert.rejects(
          pushBlob(base, 'harness/keep', randomBytes(64 * 1024), { dispatcher: agent }),
        );
        assert.equal(proxy.cuts, 1);
        assert.equal(proxy.bytesUp - before, 32 * 1024);
      } finally {
        await agent.close();
      }
    });
  });

  after(async () => stopAllServices());
});
