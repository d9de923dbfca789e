/**
 * Every upload, auth and manifest path against the real docker-registry 2.8,
 * read back with plain HTTP GETs and skopeo.
 */
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { createLogger } from '@ferry/log';
import { request } from 'undici';
import {
  bufferBlobSource,
  regeneratingBlobSource,
  RegistryClient,
  RegistryError,
  type BlobSource,
} from '@ferry/registry-client';
import {
  libtrustKeyId,
  startRegistry,
  startProxy,
  skopeo,
  skopeoInspect,
  writeDockerConfig,
  type RegistryHandle,
} from '../../../test/helpers';
import { startFaultProxy } from './fault-proxy';

function digestOf(b: Buffer): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex');
}

/** GET a blob straight from a plain-HTTP registry (not through our client) and hash it. */
async function readBack(
  registryUrl: string,
  repository: string,
  digest: string,
): Promise<{ digest: string; size: number }> {
  let url = `${registryUrl}/v2/${repository}/blobs/${digest}`;
  for (let i = 0; i < 3; i++) {
    const res = await request(url);
    if (res.statusCode === 307) {
      await res.body.dump();
      url = new URL(String(res.headers.location), url).toString();
      continue;
    }
    assert.equal(res.statusCode, 200, `GET ${url}`);
    const h = createHash('sha256');
    let size = 0;
    for await (const c of res.body) {
      h.update(c as Buffer);
      size += (c as Buffer).length;
    }
    return { digest: `sha256:${h.digest('hex')}`, size };
  }
  throw new Error('too many redirects');
}

/** A source that regenerates the same pseudo-random bytes on every open (like a tar+gzip stream). */
function prngSource(
  size: number,
  seed: number,
  opts: { delayEveryBytes?: number; delayMs?: number } = {},
): BlobSource & { opens: number[] } {
  const opens: number[] = [];
  const make = (): Readable => {
    let produced = 0;
    let x = seed >>> 0 || 1;
    let sinceDelay = 0;
    return new Readable({
      read() {
        if (produced >= size) return void this.push(null);
        const n = Math.min(64 * 1024, size - produced);
        const full = Buffer.allocUnsafe((n + 3) & ~3);
        for (let i = 0; i < full.length; i += 4) {
          x ^= x << 13;
          x ^= x >>> 17;
          x ^= x << 5;
          x >>>= 0;
          full.writeUInt32LE(x, i);
        }
        const b = full.subarray(0, n);
        produced += n;
        sinceDelay += n;
        if (opts.delayEveryBytes && sinceDelay >= opts.delayEveryBytes) {
          sinceDelay = 0;
          setTimeout(() => this.push(b), opts.delayMs ?? 0);
        } else this.push(b);
      },
    });
  };
  const inner = regeneratingBlobSource(make, { size });
  return {
    size,
    opens,
    open(offset: number) {
      opens.push(offset);
      return inner.open(offset);
    },
  };
}

async function wholeOf(src: BlobSource): Promise<Buffer> {
  const { stream } = await src.open(0);
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

const quick = { attempts: 5, baseDelayMs: 20, maxDelayMs: 200 };

describe('registry client against docker-registry 2.8', function () {
  this.timeout(120_000);

  describe('plain HTTP registry', () => {
    let reg: RegistryHandle;
    let client: RegistryClient;
    before(async () => {
      reg = await startRegistry();
      client = new RegistryClient({
        allow: ['127.0.0.1'],
        retry: quick,
        dockerConfigPath: reg.dockerConfigPath,
      });
    });
    after(async () => {
      await client?.close();
      await reg?.stop();
    });
    const repo = (repository = 'team/app'): { registry: string; repository: string } => ({
      registry: reg.host,
      repository,
    });

    it('pings', async () => {
      await client.ping(reg.host);
    });

    it('uploads monolithically (stated digest, and two-pass without one)', async () => {
      const data = randomBytes(3 * 1024 * 1024 + 1);
      const r1 = await client.uploadBlob(repo(), bufferBlobSource(data, digestOf(data)), {
        monolithic: true,
      });
      assert.equal(r1.digest, digestOf(data));
      assert.equal(r1.bytesSent, data.length);
      assert.deepEqual(await readBack(reg.url, 'team/app', r1.digest), {
        digest: digestOf(data),
        size: data.length,
      });

      const data2 = randomBytes(100_000);
      const r2 = await client.uploadBlob(repo('team/mono'), bufferBlobSource(data2), {
        monolithic: true,
      });
      assert.equal(r2.digest, digestOf(data2));
      assert.deepEqual(await readBack(reg.url, 'team/mono', r2.digest), {
        digest: digestOf(data2),
        size: data2.length,
      });
      assert.deepEqual(await client.blobExists(repo('team/mono'), r2.digest), {
        size: data2.length,
      });
    });

    it('uploads with one streamed PATCH', async () => {
      const src = prngSource(5 * 1024 * 1024 + 3, 7);
      const whole = await wholeOf(src);
      const progress: number[] = [];
      const r = await client.uploadBlob(repo(), src, {
        chunkSize: 0,
        onProgress: (_s, pos) => progress.push(pos),
      });
      assert.equal(r.digest, digestOf(whole));
      assert.equal(r.size, whole.length);
      assert.equal(r.bytesSent, whole.length);
      assert.equal(r.restarts + r.resumes, 0);
      assert.equal(progress.at(-1), whole.length);
      assert.deepEqual(await readBack(reg.url, 'team/app', r.digest), {
        digest: r.digest,
        size: whole.length,
      });
    });

    it('uploads an empty blob in every mode', async () => {
      const empty = Buffer.alloc(0);
      for (const opts of [{ chunkSize: 0 }, { chunkSize: 1024 }, { monolithic: true }]) {
        const r = await client.uploadBlob(repo('team/empty'), bufferBlobSource(empty), opts);
        assert.equal(r.digest, digestOf(empty), JSON.stringify(opts));
        assert.equal(r.size, 0);
      }
      assert.deepEqual(await readBack(reg.url, 'team/empty', digestOf(empty)), {
        digest: digestOf(empty),
        size: 0,
      });
    });

    it('uploads in Content-Range chunks', async () => {
      const data = randomBytes(5 * 1024 * 1024 + 123);
      const r = await client.uploadBlob(repo(), bufferBlobSource(data), { chunkSize: 1024 * 1024 });
      assert.equal(r.digest, digestOf(data));
      assert.equal(r.bytesSent, data.length);
      assert.deepEqual(await readBack(reg.url, 'team/app', r.digest), {
        digest: r.digest,
        size: data.length,
      });
      const got = await client.getBlob(repo(), r.digest);
      const parts: Buffer[] = [];
      for await (const c of got.stream) parts.push(c as Buffer);
      assert.ok(Buffer.concat(parts).equals(data));
    });

    it('cancels an upload session by its Location', async () => {
      const post = await request(`${reg.url}/v2/team/app/blobs/uploads/`, { method: 'POST' });
      await post.body.dump();
      assert.equal(post.statusCode, 202);
      const location = String(post.headers.location);
      await client.cancelUpload(repo(), location);
      const after = await request(new URL(location, reg.url));
      await after.body.dump();
      assert.equal(after.statusCode, 404, 'the registry no longer knows the session');
      await client.cancelUpload(repo(), location); // gone already: fine
      await assert.rejects(client.cancelUpload(repo(), 'http://localhost:1/v2/x/blobs/uploads/y'), {
        code: 'FERRY_REDIRECT_REFUSED',
      });
    });

    it('keeps its connection across existence checks (HEAD), as for other requests', async () => {
      const proxy = await startProxy({ host: '127.0.0.1', port: reg.port });
      const mine = new RegistryClient({
        allow: ['127.0.0.1'],
        retry: quick,
        dockerConfigPath: reg.dockerConfigPath,
      });
      try {
        const r = { registry: proxy.host, repository: 'team/heads' };
        const blob = randomBytes(100);
        await mine.uploadBlob(r, bufferBlobSource(blob, digestOf(blob)), { monolithic: true });
        const before = proxy.connections;
        for (let i = 0; i < 10; i++) {
          assert.equal((await mine.blobExists(r, digestOf(blob)))?.size, 100);
          assert.equal(await mine.blobExists(r, digestOf(Buffer.from(`absent ${i}`))), undefined);
        }
        // One after another: one connection (undici alone would open one per HEAD).
        assert.ok(proxy.connections - before <= 1, `${proxy.connections - before} connections`);
      } finally {
        await mine.close();
        await proxy.stop();
      }
    });

    it('reports unknown blobs and repositories', async () => {
      assert.equal(
        await client.blobExists(repo(), digestOf(Buffer.from('never pushed'))),
        undefined,
      );
      await assert.rejects(
        client.getBlob(repo(), digestOf(Buffer.from('never pushed'))),
        (e: RegistryError) => {
          assert.equal(e.code, 'FERRY_BLOB_UNKNOWN');
          assert.equal(e.status, 404);
          assert.equal(e.errors?.[0]?.code, 'BLOB_UNKNOWN');
          return true;
        },
      );
      await assert.rejects(client.listTags(repo('no/such/repo')), {
        code: 'FERRY_REPOSITORY_NOT_FOUND',
      });
    });

    for (const mode of [
      { name: 'streamed', chunkSize: 0 },
      { name: 'chunked', chunkSize: 1024 * 1024 },
    ]) {
      it(`survives a connection cut mid-${mode.name}-upload (dead session → fresh one)`, async () => {
        const proxy = await startProxy({ host: '127.0.0.1', port: reg.port });
        try {
          const size = 6 * 1024 * 1024 + 11;
          const src = prngSource(size, 99 + mode.chunkSize);
          proxy.cutOnceAfter(2.5 * 1024 * 1024);
          const r = await client.uploadBlob(
            { registry: proxy.host, repository: `cut/${mode.name}` },
            src,
            {
              chunkSize: mode.chunkSize,
            },
          );
          assert.equal(proxy.cuts, 1);
          assert.ok(r.restarts >= 1, `restarts ${r.restarts}`);
          assert.ok(r.bytesSent > size, `bytesSent ${r.bytesSent} > ${size}`);
          assert.equal(src.opens[0], 0);
          assert.equal(src.opens.at(-1), 0, 'the fresh session starts from byte 0');
          const whole = await wholeOf(src);
          assert.equal(r.digest, digestOf(whole));
          assert.deepEqual(await readBack(reg.url, `cut/${mode.name}`, r.digest), {
            digest: r.digest,
            size,
          });
        } finally {
          await proxy.stop();
        }
      });
    }

    it('re-sends a chunk refused with a 503 from its buffer (the registry kept the session)', async () => {
      const fp = await startFaultProxy({ host: '127.0.0.1', port: reg.port });
      try {
        fp.addFault({
          method: 'PATCH',
          path: /\/blobs\/uploads\//,
          skip: 1,
          status: 503,
          body: 'maintenance',
        });
        const chunk = 1024 * 1024;
        const size = 4 * chunk + 77;
        const src = prngSource(size, 1234);
        const r = await client.uploadBlob({ registry: fp.host, repository: 'resume/app' }, src, {
          chunkSize: chunk,
        });
        assert.equal(r.resumes, 1);
        assert.equal(r.restarts, 0);
        assert.deepEqual(src.opens, [0], 'the refused chunk was re-sent from the upload buffer');
        assert.equal(r.bytesSent, size + chunk, 'exactly the refused chunk went out twice');
        const statusQueries = fp.log.filter(
          (l) => l.method === 'GET' && l.path.includes('/blobs/uploads/'),
        );
        assert.equal(statusQueries.length, 1);
        assert.equal(statusQueries[0]!.status, 204);
        assert.equal(fp.log.filter((l) => l.faulted).length, 1);
        const whole = await wholeOf(src);
        assert.equal(r.digest, digestOf(whole));
        assert.deepEqual(await readBack(reg.url, 'resume/app', r.digest), {
          digest: r.digest,
          size,
        });
      } finally {
        await fp.stop();
      }
    });

    it('an aborted upload cancels its session (GET on its Location: 404), unless told to keep it', async () => {
      const chunk = 256 * 1024;
      const upload = async (
        keep?: (e: RegistryError) => boolean,
      ): Promise<{ code: string; sessions: (string | undefined)[] }> => {
        const ac = new AbortController();
        const sessions: (string | undefined)[] = [];
        const src = prngSource(8 * chunk, 31, { delayEveryBytes: chunk, delayMs: 20 });
        let code = 'resolved';
        try {
          await client.uploadBlob(repo('abort/app'), src, {
            chunkSize: chunk,
            signal: ac.signal,
            ...(keep ? { keepSessionOnFailure: keep } : {}),
            onSession: (l) => {
              sessions.push(l);
              if (sessions.length === 3) ac.abort(); // after the second chunk was accepted
            },
          });
        } catch (e) {
          code = (e as RegistryError).code;
        }
        return { code, sessions };
      };
      const statusOf = async (location: string): Promise<{ status: number; body: string }> => {
        const res = await request(new URL(location, reg.url));
        return { status: res.statusCode, body: await res.body.text() };
      };

      const cancelled = await upload();
      assert.equal(cancelled.code, 'FERRY_ABORTED');
      assert.equal(cancelled.sessions.at(-1), undefined, 'the closed session was reported');
      const last = cancelled.sessions.filter((l) => l !== undefined).at(-1)!;
      const gone = await statusOf(last);
      assert.equal(gone.status, 404);
      assert.match(gone.body, /BLOB_UPLOAD_UNKNOWN/);

      const kept = await upload((e) => e.code === 'FERRY_ABORTED');
      assert.equal(kept.code, 'FERRY_ABORTED');
      const open = kept.sessions.at(-1)!;
      assert.ok(open, 'a kept session is not reported closed');
      assert.equal((await statusOf(open)).status, 204, 'the registry still holds it');
      await client.cancelUpload(repo('abort/app'), open);
      assert.equal((await statusOf(open)).status, 404);
    });

    it('a later attempt resumes the session an earlier one left open (resumeSession)', async () => {
      const fp = await startFaultProxy({ host: '127.0.0.1', port: reg.port });
      const once = new RegistryClient({ allow: ['127.0.0.1'], retry: { attempts: 1 } });
      try {
        // The first attempt sends one chunk, then the registry is "down": it gives up, keeping the session.
        fp.addFault({ method: 'PATCH', path: /\/blobs\/uploads\//, skip: 1, status: 503 });
        const chunk = 1024 * 1024;
        const size = 3 * chunk + 5;
        const first = prngSource(size, 777);
        let kept: string | undefined;
        await assert.rejects(
          once.uploadBlob({ registry: fp.host, repository: 'resume/later' }, first, {
            chunkSize: chunk,
            keepSessionOnFailure: true,
            onSession: (l) => (kept = l),
          }),
          (e: RegistryError) => e.transient,
        );
        assert.ok(kept, 'the open session was reported');
        // The next attempt (another process in real life) continues from the registry's offset.
        const second = prngSource(size, 777);
        const sessions: (string | undefined)[] = [];
        const r = await client.uploadBlob(
          { registry: fp.host, repository: 'resume/later' },
          second,
          {
            chunkSize: chunk,
            resumeSession: kept,
            onSession: (l) => sessions.push(l),
          },
        );
        assert.equal(r.resumes, 1);
        assert.equal(r.restarts, 0);
        assert.deepEqual(second.opens, [chunk], 'regenerated from the reported offset');
        assert.equal(r.bytesSent, size - chunk);
        assert.equal(sessions.at(-1), undefined, 'a finished session is reported closed');
        assert.deepEqual(await readBack(reg.url, 'resume/later', r.digest), {
          digest: r.digest,
          size,
        });
        // A session the registry no longer knows: a fresh one, from byte 0.
        const third = prngSource(size, 778);
        const r3 = await client.uploadBlob(
          { registry: fp.host, repository: 'resume/later' },
          third,
          {
            chunkSize: chunk,
            resumeSession: kept,
          },
        );
        assert.equal(r3.restarts, 1);
        assert.deepEqual(third.opens, [0]);
        assert.equal(r3.bytesSent, size);
      } finally {
        await once.close();
        await fp.stop();
      }
    });

    it('mounts across repositories (201) and falls back to an upload on 202', async () => {
      const fp = await startFaultProxy({ host: '127.0.0.1', port: reg.port });
      try {
        const at = (repository: string): { registry: string; repository: string } => ({
          registry: fp.host,
          repository,
        });
        const data = randomBytes(300_000);
        const d = digestOf(data);
        await client.uploadBlob(at('mount/src'), bufferBlobSource(data), { chunkSize: 0 });
        assert.equal(await client.blobExists(at('mount/dst'), d), undefined);
        assert.equal(await client.mountBlob(at('mount/dst'), d, 'mount/src'), true);
        assert.deepEqual(await client.blobExists(at('mount/dst'), d), { size: data.length });

        // 202: the source repository does not hold it; the opened session is cancelled
        const other = randomBytes(1000);
        assert.equal(await client.mountBlob(at('mount/dst2'), digestOf(other), 'mount/src'), false);
        const lastPost = fp.log
          .map((l, i) => ({ ...l, i }))
          .filter((l) => l.method === 'POST')
          .at(-1)!;
        assert.equal(lastPost.status, 202);
        assert.equal(
          fp.log[lastPost.i + 1]?.method,
          'DELETE',
          'the session opened by the 202 is cancelled',
        );

        // uploadBlob with mountFrom: mounted when possible, uploaded in the 202 session otherwise
        const m = await client.uploadBlob(at('mount/dst3'), bufferBlobSource(data, d), {
          mountFrom: ['mount/src'],
        });
        assert.equal(m.mountedFrom, 'mount/src');
        assert.equal(m.bytesSent, 0);
        assert.equal(m.size, data.length);
        const u = await client.uploadBlob(
          at('mount/dst3'),
          bufferBlobSource(other, digestOf(other)),
          {
            mountFrom: ['mount/src'],
          },
        );
        assert.equal(u.mountedFrom, undefined);
        assert.equal(u.bytesSent, other.length);
        assert.deepEqual(await readBack(reg.url, 'mount/dst3', digestOf(other)), {
          digest: digestOf(other),
          size: other.length,
        });
      } finally {
        await fp.stop();
      }
    });

    it('puts manifests by tag and by digest, checked by skopeo', async () => {
      const layer = randomBytes(2048);
      const lr = await client.uploadBlob(repo('man/app'), bufferBlobSource(layer));
      const config = Buffer.from(
        JSON.stringify({
          architecture: 'amd64',
          os: 'linux',
          config: {},
          rootfs: { type: 'layers', diff_ids: [digestOf(Buffer.from('uncompressed'))] },
        }),
      );
      const cr = await client.uploadBlob(repo('man/app'), bufferBlobSource(config));
      const mt = 'application/vnd.oci.image.manifest.v1+json';
      const manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: mt,
          config: {
            mediaType: 'application/vnd.oci.image.config.v1+json',
            digest: cr.digest,
            size: config.length,
          },
          layers: [
            {
              mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
              digest: lr.digest,
              size: layer.length,
            },
          ],
        }),
      );
      const byDigest = await client.putManifest(repo('man/app'), digestOf(manifest), manifest, mt);
      assert.equal(byDigest.digest, digestOf(manifest));
      const byTag = await client.putManifest(repo('man/app'), 'v1', manifest, mt);
      assert.equal(byTag.digest, digestOf(manifest));
      await client.putManifest(repo('man/app'), 'v2', manifest, mt);

      const raw = await skopeo([
        'inspect',
        '--tls-verify=false',
        '--raw',
        `docker://${reg.host}/man/app:v1`,
      ]);
      assert.equal(raw.stdout, manifest.toString());
      const info = await skopeoInspect(`docker://${reg.host}/man/app:v1`);
      assert.equal(info.Digest, byTag.digest);
      assert.deepEqual([...(info.RepoTags as string[])].sort(), ['v1', 'v2']);

      const got = await client.getManifest(repo('man/app'), 'v1');
      assert.ok(got.body.equals(manifest));
      assert.equal(got.mediaType, mt);
      assert.equal(got.digest, byTag.digest);
      assert.deepEqual(await client.headManifest(repo('man/app'), byTag.digest), {
        digest: byTag.digest,
        size: manifest.length,
        mediaType: mt,
      });
      assert.equal(await client.headManifest(repo('man/app'), 'nope'), undefined);
      assert.deepEqual((await client.listTags(repo('man/app'))).sort(), ['v1', 'v2']);

      // a manifest naming a blob the repository lacks: permanent, with the registry's error list
      const broken = Buffer.from(
        manifest.toString().replace(lr.digest, digestOf(Buffer.from('absent'))),
      );
      await assert.rejects(
        client.putManifest(repo('man/app'), 'broken', broken, mt),
        (e: RegistryError) => {
          assert.equal(e.code, 'FERRY_MANIFEST_INVALID');
          assert.equal(e.transient, false);
          assert.ok(e.errors?.some((x) => x.code === 'MANIFEST_BLOB_UNKNOWN'));
          return true;
        },
      );
    });
  });

  describe('schema1 registry', () => {
    let reg: RegistryHandle;
    before(async () => {
      reg = await startRegistry({ schema1: true });
    });
    after(async () => {
      await reg?.stop();
    });

    /** A minimal libtrust-style JWS (ES256, jwk in the header) — enough for the registry to verify. */
    function signed(manifest: object): { body: Buffer; payload: Buffer } {
      const payload = Buffer.from(JSON.stringify(manifest, null, 3));
      const text = payload.toString();
      const formatLength = text.lastIndexOf('\n}');
      const tail = text.slice(formatLength);
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const jwk = publicKey.export({ format: 'jwk' });
      const prot = Buffer.from(
        JSON.stringify({
          formatLength,
          formatTail: Buffer.from(tail).toString('base64url'),
          time: '2026-01-01T00:00:00Z',
        }),
      ).toString('base64url');
      const sig = sign('sha256', Buffer.from(`${prot}.${payload.toString('base64url')}`), {
        key: privateKey,
        dsaEncoding: 'ieee-p1363',
      });
      const kid = libtrustKeyId(publicKey.export({ type: 'spki', format: 'der' }));
      const sigs = JSON.stringify([
        {
          header: { jwk: { crv: jwk.crv, kid, kty: jwk.kty, x: jwk.x, y: jwk.y }, alg: 'ES256' },
          signature: sig.toString('base64url'),
          protected: prot,
        },
      ]);
      return {
        body: Buffer.from(`${text.slice(0, formatLength)},\n   "signatures": ${sigs}${tail}`),
        payload,
      };
    }

    it('checks a signed schema1 manifest against the digest the registry computes over its payload', async () => {
      const client = new RegistryClient({ allow: ['127.0.0.1'], retry: quick });
      try {
        const repo = { registry: reg.host, repository: 's1/app' };
        const layer = await client.uploadBlob(repo, bufferBlobSource(randomBytes(512)));
        const { body, payload } = signed({
          schemaVersion: 1,
          name: 's1/app',
          tag: 'v1',
          architecture: 'amd64',
          fsLayers: [{ blobSum: layer.digest }],
          history: [
            {
              v1Compatibility: JSON.stringify({
                id: 'b'.repeat(64),
                created: '2026-01-01T00:00:00Z',
              }),
            },
          ],
        });
        const mt = 'application/vnd.docker.distribution.manifest.v1+prettyjws';
        const r = await client.putManifest(repo, 'v1', body, mt);
        assert.equal(
          r.digest,
          digestOf(payload),
          'the registry agreed: Docker-Content-Digest is over the payload',
        );
        assert.notEqual(r.digest, digestOf(body));
        const head = await client.headManifest(repo, 'v1', [mt]);
        assert.equal(head?.digest, r.digest);
        const got = await client.getManifest(repo, r.digest, [mt]);
        assert.equal(got.digest, r.digest);
      } finally {
        await client.close();
      }
    });
  });

  describe('basic auth', () => {
    let reg: RegistryHandle;
    before(async () => {
      reg = await startRegistry({ auth: 'basic' });
    });
    after(async () => {
      await reg?.stop();
    });

    it('pushes with the docker config credentials and refuses without', async () => {
      const client = new RegistryClient({
        allow: ['127.0.0.1'],
        retry: quick,
        dockerConfigPath: reg.dockerConfigPath,
      });
      const anon = new RegistryClient({
        allow: ['127.0.0.1'],
        retry: quick,
        dockerConfigPath: '/nonexistent.json',
      });
      try {
        await client.ping(reg.host);
        const data = randomBytes(500_000);
        const r = await client.uploadBlob(
          { registry: reg.host, repository: 'sec/app' },
          bufferBlobSource(data),
          {
            chunkSize: 128 * 1024,
          },
        );
        assert.equal(r.digest, digestOf(data));
        assert.deepEqual(
          await client.blobExists({ registry: reg.host, repository: 'sec/app' }, r.digest),
          {
            size: data.length,
          },
        );
        await assert.rejects(anon.ping(reg.host), (e: RegistryError) => {
          assert.equal(e.code, 'FERRY_REGISTRY_UNAUTHORIZED');
          assert.match(e.message, /no credentials for 127\.0\.0\.1:\d+ in \/nonexistent\.json/);
          return true;
        });
        await assert.rejects(
          anon.blobExists({ registry: reg.host, repository: 'sec/app' }, r.digest),
          {
            code: 'FERRY_REGISTRY_UNAUTHORIZED',
          },
        );
      } finally {
        await client.close();
        await anon.close();
      }
    });
  });

  describe('token auth', () => {
    let reg: RegistryHandle;
    before(async () => {
      reg = await startRegistry({ auth: 'token' });
    });
    after(async () => {
      await reg?.stop();
    });

    it('fetches tokens per scope, refreshes them when they expire mid-push, asks pull on a mount source', async () => {
      const ts = reg.tokenServer!;
      const client = new RegistryClient({
        allow: ['127.0.0.1'],
        retry: quick,
        dockerConfigPath: reg.dockerConfigPath,
      });
      try {
        await client.ping(reg.host);
        ts.setTokenTtl(1);
        const before = ts.requests.length;
        // 4 chunks, ~700 ms apart: the 1 s token runs out during the upload
        const src = prngSource(4 * 256 * 1024, 5, { delayEveryBytes: 256 * 1024, delayMs: 700 });
        const r = await client.uploadBlob({ registry: reg.host, repository: 'tok/src' }, src, {
          chunkSize: 256 * 1024,
        });
        const pushReqs = ts.requests
          .slice(before)
          .filter((q) => q.scope === 'repository:tok/src:pull,push');
        assert.ok(
          pushReqs.length >= 2,
          `token refreshed during the push: ${JSON.stringify(ts.requests.slice(before))}`,
        );
        assert.ok(pushReqs.every((q) => q.status === 200 && q.account === reg.username));

        ts.setTokenTtl(300);
        assert.equal(
          await client.mountBlob(
            { registry: reg.host, repository: 'tok/dst' },
            r.digest,
            'tok/src',
          ),
          true,
        );
        const mountReq = ts.requests.at(-1)!;
        assert.deepEqual(mountReq.scope.split(' ').sort(), [
          'repository:tok/dst:pull,push',
          'repository:tok/src:pull',
        ]);
        assert.deepEqual(
          await client.blobExists({ registry: reg.host, repository: 'tok/dst' }, r.digest),
          {
            size: src.size,
          },
        );
      } finally {
        await client.close();
      }
    });

    it('refreshes once when the registry refuses a cached token (401 mid-push)', async () => {
      const ts = reg.tokenServer!;
      const client = new RegistryClient({
        allow: ['127.0.0.1'],
        retry: quick,
        dockerConfigPath: reg.dockerConfigPath,
      });
      try {
        const a = randomBytes(10_000);
        await client.uploadBlob(
          { registry: reg.host, repository: 'tok/rev' },
          bufferBlobSource(a),
          { chunkSize: 0 },
        );
        const issued = ts.issued;
        await ts.revokeAll(); // every token issued so far is now refused
        const b = randomBytes(20_000);
        const r = await client.uploadBlob(
          { registry: reg.host, repository: 'tok/rev' },
          bufferBlobSource(b),
          { chunkSize: 0 },
        );
        assert.equal(r.digest, digestOf(b));
        assert.equal(ts.issued, issued + 1, 'exactly one fresh token');
        assert.deepEqual(
          await client.blobExists({ registry: reg.host, repository: 'tok/rev' }, r.digest),
          { size: b.length },
        );
      } finally {
        await client.close();
      }
    });

    it('keeps passwords and tokens out of its log lines, even while retrying', async () => {
      const lines: string[] = [];
      const sink = new Writable({
        write(chunk: Buffer, _e, cb) {
          lines.push(chunk.toString());
          cb();
        },
      });
      const logger = createLogger({ level: 'debug', format: 'json', stream: sink });
      const fp = await startFaultProxy({ host: '127.0.0.1', port: reg.port });
      // credentials belong to a host: the proxy's host needs its own entry
      const cfg = reg.dockerConfigPath + '.proxy.json';
      writeDockerConfig(cfg, fp.host, reg.username, reg.password);
      const client = new RegistryClient({
        allow: ['127.0.0.1'],
        retry: quick,
        dockerConfigPath: cfg,
        logger,
      });
      try {
        fp.addFault({ method: 'PATCH', path: /\/blobs\/uploads\//, skip: 1, status: 503 });
        const data = randomBytes(300_000);
        const r = await client.uploadBlob(
          { registry: fp.host, repository: 'tok/logs' },
          bufferBlobSource(data),
          {
            chunkSize: 100_000,
          },
        );
        assert.equal(r.resumes, 1);
        const tokenSeen = fp.log
          .find((l) => l.auth?.startsWith('Bearer '))
          ?.auth?.slice('Bearer '.length);
        assert.ok(tokenSeen && tokenSeen.length > 20, 'the registry did get a bearer token');
        const text = lines.join('');
        assert.match(text, /retrying/, 'the retry was logged');
        assert.ok(!text.includes(reg.password!), 'no password in the log');
        assert.ok(!text.includes(tokenSeen), 'no token in the log');
        assert.ok(!/_state=/.test(text), 'no upload session state in the log');
      } finally {
        await client.close();
        await fp.stop();
      }
    });

    it('fails as unauthorized with wrong credentials', async () => {
      const { writeFileSync } = await import('node:fs');
      const bad = reg.dockerConfigPath + '.bad.json';
      writeFileSync(
        bad,
        JSON.stringify({
          auths: { [reg.host]: { auth: Buffer.from('nobody:wrong').toString('base64') } },
        }),
      );
      const client = new RegistryClient({
        allow: ['127.0.0.1'],
        retry: quick,
        dockerConfigPath: bad,
      });
      try {
        await assert.rejects(
          client.uploadBlob(
            { registry: reg.host, repository: 'tok/x' },
            bufferBlobSource(Buffer.from('x')),
          ),
          (e: RegistryError) => e.code === 'FERRY_REGISTRY_UNAUTHORIZED' && !e.transient,
        );
      } finally {
        await client.close();
      }
    });
  });

  describe('TLS with a custom CA', () => {
    let reg: RegistryHandle;
    before(async () => {
      reg = await startRegistry({ tls: true, hostname: 'localhost' });
    });
    after(async () => {
      await reg?.stop();
    });

    it('pushes over HTTPS trusting the CA file, and refuses without it', async () => {
      const client = new RegistryClient({
        allow: ['localhost'],
        insecure: [],
        caFile: reg.caFile,
        retry: quick,
      });
      const noCa = new RegistryClient({ allow: ['localhost'], insecure: [], retry: quick });
      try {
        const data = randomBytes(1024 * 1024 + 9);
        const r = await client.uploadBlob(
          { registry: reg.host, repository: 'tls/app' },
          bufferBlobSource(data),
          {
            chunkSize: 256 * 1024,
          },
        );
        assert.equal(r.digest, digestOf(data));
        assert.deepEqual(
          await client.blobExists({ registry: reg.host, repository: 'tls/app' }, r.digest),
          {
            size: data.length,
          },
        );
        await assert.rejects(noCa.ping(reg.host), (e: RegistryError) => {
          assert.equal(e.code, 'FERRY_TLS');
          assert.match(e.message, /FERRY_CA_FILE/);
          return true;
        });
      } finally {
        await client.close();
        await noCa.close();
      }
    });
  });
});
