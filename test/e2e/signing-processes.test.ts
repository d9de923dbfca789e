/**
 * Signing with every role in its own `ferry serve --role` process, only the
 * coordinator given key variables:
 * - OpenPGP simple signing verified by skopeo: `standalone-verify` on the
 *   pushed manifest with the signature from Ferry's /sigstore, and `skopeo
 *   copy` under a policy requiring `signedBy` Ferry's key with a registries.d
 *   `lookaside:` at Ferry — refused with another key;
 * - a docker:// copy fanned out to two registries is signed on each target
 *   (the copied digest);
 * - no private key byte (PEM body, armored block, raw scalar) in any Redis key
 *   or value (job data included) or in any role's log;
 * - a second coordinator with another key refuses to start, naming both.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createPrivateKey, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Redis } from 'ioredis';
import { RegistryClient } from '@ferry/registry-client';
import { generateKeys, generatePgpKey, verifyCosignSignatures } from '@ferry/signing';
import {
  findBinary,
  freePort,
  skopeo,
  spawnService,
  startRedis,
  startRegistry,
  tmpDir,
  type RedisHandle,
  type RegistryHandle,
  type ServiceHandle,
} from '../helpers';
import { copyHello } from './stack';

const repoRoot = join(__dirname, '..', '..');
const bin = join(repoRoot, 'bin', 'ferry.js');
const TOKEN = 'sig-' + randomBytes(8).toString('hex');

async function httpOk(url: string): Promise<boolean> {
  return fetch(url).then(
    (r) => r.ok,
    () => false,
  );
}

/** Everything in a Redis database, as one string: keys, values of every type. */
async function dumpRedis(url: string): Promise<string> {
  const r = new Redis(url);
  const out: string[] = [];
  try {
    let cursor = '0';
    do {
      const [next, keys] = await r.scan(cursor, 'COUNT', 500);
      cursor = next;
      for (const k of keys) {
        out.push(k);
        const type = await r.type(k);
        if (type === 'string') out.push((await r.get(k)) ?? '');
        else if (type === 'hash') out.push(JSON.stringify(await r.hgetall(k)));
        else if (type === 'list') out.push(JSON.stringify(await r.lrange(k, 0, -1)));
        else if (type === 'set') out.push(JSON.stringify(await r.smembers(k)));
        else if (type === 'zset') out.push(JSON.stringify(await r.zrange(k, 0, -1)));
        else if (type === 'stream') out.push(JSON.stringify(await r.xrange(k, '-', '+')));
      }
    } while (cursor !== '0');
  } finally {
    r.disconnect();
  }
  return out.join('\n');
}

describe('e2e: signing with the roles as separate processes', function () {
  this.timeout(300_000);
  let redis: RedisHandle;
  let a: RegistryHandle;
  let b: RegistryHandle;
  let c: RegistryHandle;
  let root: string;
  const services: ServiceHandle[] = [];
  let url: string;
  let env: Record<string, string>;
  let ec: Awaited<ReturnType<typeof generateKeys>>;
  let pgp: Awaited<ReturnType<typeof generatePgpKey>>;
  let other: Awaited<ReturnType<typeof generatePgpKey>>;
  let pushed: { digest: string; target: string };
  let passphrase: string;

  const gnupg = (home: string, args: string[]) =>
    execFileSync(findBinary('gpg') ?? 'gpg', ['--homedir', home, '--batch', ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  const homes: string[] = [];

  before(async () => {
    assert.ok(findBinary('gpg'), 'gpg is needed (scripts/install-system-deps.sh installs it)');
    [redis, a, b, c] = await Promise.all([
      startRedis(),
      startRegistry(),
      startRegistry(),
      startRegistry(),
    ]);
    root = tmpDir('signing-processes');
    // Both keys encrypted with one passphrase (FERRY_KEY_PASSPHRASE_FILE), which never leaks either.
    passphrase = randomBytes(12).toString('hex');
    ec = await generateKeys(join(root, 'keys'), { passphrase });
    pgp = await generatePgpKey({ name: 'Ferry test', email: 'ferry@example.invalid', passphrase });
    writeFileSync(join(root, 'keys', 'passphrase'), passphrase + '\n', { mode: 0o600 });
    other = await generatePgpKey({ name: 'Someone else' });
    writeFileSync(join(root, 'keys', 'pgp.key'), pgp.privateKeyArmored, { mode: 0o600 });
    copyHello(root);
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    env = {
      FERRY_QUEUE_PREFIX: `{sig${randomBytes(3).toString('hex')}}`,
      FERRY_REDIS_URL: redis.url,
      FERRY_REGISTRY_ALLOW: '127.0.0.1',
      FERRY_SOURCE_ROOT: root,
      FERRY_PORT: String(port),
      FERRY_API_TOKENS: TOKEN,
      FERRY_LOG_LEVEL: 'debug',
      FERRY_DOCKER_CONFIG: '/nonexistent/ferry-e2e/config.json',
      NODE_ENV: 'production',
    };
    const keyEnv = {
      FERRY_SIGNING_KEY: ec.privateKeyPath,
      FERRY_PGP_KEY: join(root, 'keys', 'pgp.key'),
      FERRY_KEY_PASSPHRASE_FILE: join(root, 'keys', 'passphrase'),
    };
    for (const role of ['coordinator', 'lookup', 'upload', 'api'] as const) {
      const healthPort = role === 'api' ? undefined : await freePort();
      services.push(
        await spawnService({
          name: `ferry-${role}`,
          cmd: process.execPath,
          args: [bin, 'serve', '--role', role],
          env: {
            ...env,
            ...(role === 'coordinator' ? keyEnv : {}),
            ...(healthPort ? { FERRY_HEALTH_PORT: String(healthPort) } : {}),
          },
          cwd: repoRoot,
          timeoutMs: 30_000,
          ready: () =>
            httpOk(healthPort ? `http://127.0.0.1:${healthPort}/readyz` : `${url}/readyz`),
        }),
      );
    }
  });
  after(async () => {
    // gpg may have started an agent for a home: stop it by its home, never by name.
    for (const home of homes) {
      try {
        execFileSync('gpgconf', ['--homedir', home, '--kill', 'gpg-agent'], { stdio: 'ignore' });
      } catch {
        // no agent there
      }
    }
    await Promise.allSettled(services.map((s) => s.stop()));
    await Promise.allSettled([redis, a, b, c].map((x) => x?.stop()));
  });

  async function push(body: Record<string, unknown>) {
    const res = await fetch(`${url}/v1/pushes`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` },
      body: JSON.stringify(body),
    });
    const accepted = (await res.json()) as { id: string };
    assert.equal(res.status, 202, JSON.stringify(accepted));
    for (let i = 0; i < 600; i++) {
      const s = await fetch(`${url}/v1/pushes/${accepted.id}`, {
        headers: { authorization: `Bearer ${TOKEN}` },
      }).then((r) => r.json() as Promise<Record<string, any>>); // eslint-disable-line @typescript-eslint/no-explicit-any
      if (['succeeded', 'failed', 'cancelled'].includes(s.status)) return s;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('push did not end');
  }

  it('OpenPGP: skopeo standalone-verify accepts the signature served at /sigstore', async () => {
    const target = `${a.host}/team/app:1.0`;
    const s = await push({ source: `dir:${join(root, 'hello')}`, target, sign: true });
    assert.equal(s.status, 'succeeded', JSON.stringify(s.error));
    pushed = { digest: s.manifest.digest, target };
    const kinds = s.signatures.map((x: { kind: string }) => x.kind).sort();
    assert.deepEqual(kinds, ['cosign', 'pgp']);
    // The manifest as the registry serves it, the signature as Ferry's lookaside serves it.
    const client = new RegistryClient({ allow: ['127.0.0.1'] });
    const m = await client.getManifest({ registry: a.host, repository: 'team/app' }, '1.0');
    await client.close();
    const sig = await fetch(
      `${url}/sigstore/team/app@sha256=${pushed.digest.slice(7)}/signature-1`,
    );
    assert.equal(sig.status, 200);
    const dir = tmpDir('standalone');
    writeFileSync(join(dir, 'manifest.json'), m.body);
    writeFileSync(join(dir, 'signature-1'), Buffer.from(await sig.arrayBuffer()));
    const home = join(dir, 'gnupg');
    mkdirSync(home, { mode: 0o700 });
    homes.push(home);
    writeFileSync(join(dir, 'pub.asc'), pgp.publicKeyArmored);
    gnupg(home, ['--import', join(dir, 'pub.asc')]);
    const out = await skopeo(
      [
        'standalone-verify',
        join(dir, 'manifest.json'),
        `${a.host}/team/app:1.0`,
        pgp.fingerprint,
        join(dir, 'signature-1'),
      ],
      { env: { GNUPGHOME: home } },
    );
    assert.match(out.stdout, /Signature verified/);
  });

  it('OpenPGP: skopeo copy with a signedBy policy and lookaside at Ferry succeeds; with another key it is refused', async () => {
    const dir = tmpDir('policy');
    const regd = join(dir, 'registries.d');
    mkdirSync(regd);
    writeFileSync(
      join(regd, 'ferry.yaml'),
      `docker:\n  ${a.host}:\n    lookaside: ${url}/sigstore\n`,
    );
    const policy = (keyPath: string) => {
      const p = join(dir, `policy-${randomBytes(3).toString('hex')}.json`);
      writeFileSync(
        p,
        JSON.stringify({
          default: [{ type: 'reject' }],
          transports: {
            docker: { [a.host]: [{ type: 'signedBy', keyType: 'GPGKeys', keyPath }] },
            dir: { '': [{ type: 'insecureAcceptAnything' }] },
          },
        }),
      );
      return p;
    };
    // The key Ferry publishes at /v1/signing/pgp-key is the one skopeo is given.
    const served = await fetch(`${url}/v1/signing/pgp-key`, {
      headers: { authorization: `Bearer ${TOKEN}` },
    }).then((r) => r.text());
    writeFileSync(join(dir, 'ferry.asc'), served);
    writeFileSync(join(dir, 'other.asc'), other.publicKeyArmored);
    const copy = (keyFile: string) =>
      skopeo([
        '--policy',
        policy(join(dir, keyFile)),
        '--registries.d',
        regd,
        'copy',
        '--src-tls-verify=false',
        `docker://${pushed.target}`,
        `dir:${join(dir, `out-${keyFile}`)}`,
      ]);
    await copy('ferry.asc');
    const digestOfCopy = readFileSync(join(dir, 'out-ferry.asc', 'manifest.json'));
    assert.ok(digestOfCopy.length > 0);
    await assert.rejects(copy('other.asc'), /signature|Signature|signed/);
  });

  it('a docker:// copy fanned out to two registries is signed on each target (the copied digest)', async () => {
    const targets = [`${b.host}/mirror/app:1.0`, `${c.host}/mirror/app:1.0`];
    const s = await push({
      source: `docker://${pushed.target}`,
      target: targets[0],
      targets: [targets[1]],
      sign: { cosign: true },
    });
    assert.equal(s.status, 'succeeded', JSON.stringify(s.error));
    assert.equal(s.manifest.digest, pushed.digest, 'copied byte for byte');
    const client = new RegistryClient({ allow: ['127.0.0.1'] });
    const publicKey = readFileSync(ec.publicKeyPath, 'utf8');
    try {
      for (const t of targets) {
        const [host, ...rest] = t.split('/');
        const repo = { registry: host, repository: rest.join('/').split(':')[0] };
        const sig = await client.getManifest(repo, `sha256-${pushed.digest.slice(7)}.sig`);
        const { verified } = await verifyCosignSignatures({
          imageDigest: pushed.digest,
          signatureManifest: sig.body,
          publicKey,
          fetchBlob: async (d) => {
            const parts: Buffer[] = [];
            for await (const x of (await client.getBlob(repo, d)).stream) parts.push(x as Buffer);
            return Buffer.concat(parts);
          },
        });
        // Ferry's signature for this target (its reference), and the source's, copied along.
        const refs = verified.map((v) => v.dockerReference).sort();
        assert.deepEqual(refs, [`${a.host}/team/app`, `${host}/${repo.repository}`].sort(), t);
      }
    } finally {
      await client.close();
    }
  });

  it('no private key byte is in Redis (keys, values, job data) or in any role’s log', async () => {
    const pem = readFileSync(ec.privateKeyPath, 'utf8');
    const body = pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
    const jwk = createPrivateKey({ key: pem, passphrase }).export({ format: 'jwk' }) as {
      d: string;
    };
    const scalar = Buffer.from(jwk.d, 'base64url');
    const armoredBody = pgp.privateKeyArmored
      .split('\n')
      .filter((l) => l && !l.startsWith('-----') && !l.includes(':') && !l.startsWith('='))
      .join('');
    const needles = [
      body.slice(20, 80),
      jwk.d,
      scalar.toString('hex'),
      scalar.toString('base64'),
      armoredBody.slice(40, 100),
      'PRIVATE KEY',
      passphrase,
    ];
    const haystacks = {
      redis: await dumpRedis(redis.url),
      ...Object.fromEntries(services.map((s) => [s.name, s.logs()])),
    };
    assert.ok(haystacks.redis.includes(pushed.digest), 'the dump holds the pushes');
    for (const [where, text] of Object.entries(haystacks)) {
      for (const n of needles) assert.ok(!text.includes(n), `${where} contains key material`);
    }
  });

  it('a coordinator with another key refuses to start, naming both fingerprints', async () => {
    const second = await generateKeys(join(root, 'keys2'), { passphrase });
    const child = spawn(process.execPath, [bin, 'serve', '--role', 'coordinator'], {
      env: {
        ...process.env,
        ...env,
        FERRY_SIGNING_KEY: second.privateKeyPath,
        FERRY_KEY_PASSPHRASE_FILE: join(root, 'keys', 'passphrase'),
        FERRY_HEALTH_PORT: String(await freePort()),
      },
      cwd: dirname(bin),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((resolve) => {
      const t = setTimeout(() => child.kill('SIGKILL'), 30_000);
      child.once('exit', (c) => {
        clearTimeout(t);
        resolve(c);
      });
    });
    assert.notEqual(code, 0, out);
    assert.ok(out.includes(second.fingerprint), out);
    assert.ok(out.includes(ec.fingerprint), out);
  });
});
