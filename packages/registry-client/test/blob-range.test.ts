/**
 * getBlob from an offset: `Range: bytes=N-` against the real docker-registry
 * (206, checked Content-Range), a registry that ignores the Range (200: the
 * client skips N bytes itself, or fails when asked to), a 206 from the wrong
 * byte, and an offset past the end.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  bufferBlobSource,
  parseContentRange,
  RegistryClient,
  RegistryError,
} from '@ferry/registry-client';
import { startRegistry, type RegistryHandle } from '../../../test/helpers';
import { startFakeRegistry, type FakeRegistry } from './fake-registry';

const digestOf = (b: Buffer): string => 'sha256:' + createHash('sha256').update(b).digest('hex');

async function readAll(s: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function rejectsCode(p: Promise<unknown>, code: string, msg?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof RegistryError, String(e));
    assert.equal(e.code, code, e.message);
    if (msg) assert.match(e.message, msg);
    return true;
  });
}

describe('registry client getBlob with an offset', function () {
  this.timeout(60_000);

  it('parseContentRange reads bytes START-END/TOTAL and refuses malformed ranges', () => {
    assert.deepEqual(parseContentRange('bytes 10-99/100'), { start: 10, end: 99, total: 100 });
    assert.deepEqual(parseContentRange('bytes 0-0/*'), { start: 0, end: 0 });
    assert.equal(parseContentRange(undefined), undefined);
    assert.equal(parseContentRange('bytes 10-9/100'), undefined);
    assert.equal(parseContentRange('bytes 10-100/100'), undefined);
    assert.equal(parseContentRange('10-99/100'), undefined);
  });

  describe('against the real docker-registry', () => {
    let reg: RegistryHandle;
    let client: RegistryClient;
    const data = randomBytes(700_000);
    const repo = () => ({ registry: reg.host, repository: 'range/app' });
    before(async () => {
      reg = await startRegistry();
      client = new RegistryClient({ allow: [reg.host], dockerConfigPath: reg.dockerConfigPath });
      await client.uploadBlob(repo(), bufferBlobSource(data));
    });
    after(async () => {
      await client?.close();
      await reg?.stop();
    });

    it('offset 0 sends no Range and gets the whole blob; the old (repo, digest, signal) form still works', async () => {
      const r = await client.getBlob(repo(), digestOf(data), new AbortController().signal);
      assert.equal(r.offset, 0);
      assert.equal(r.size, data.length);
      assert.equal(r.rangeIgnored, false);
      assert.ok((await readAll(r.stream)).equals(data));
    });

    it('an offset gets a 206 from that byte: the rest of the blob, its total size', async () => {
      for (const off of [1, 65_536, data.length - 1]) {
        const r = await client.getBlob(repo(), digestOf(data), {}, { offset: off });
        assert.equal(r.offset, off);
        assert.equal(r.rangeIgnored, false, 'docker-registry honours Range');
        assert.equal(r.size, data.length);
        assert.equal(r.length, data.length - off);
        assert.ok((await readAll(r.stream)).equals(data.subarray(off)), `offset ${off}`);
      }
    });

    it('an offset at or past the end fails FERRY_INVALID_ARGUMENT (416), a bad offset before any request', async () => {
      await rejectsCode(
        client.getBlob(repo(), digestOf(data), {}, { offset: data.length + 10 }),
        'FERRY_INVALID_ARGUMENT',
        /past the end/,
      );
      await rejectsCode(
        client.getBlob(repo(), digestOf(data), {}, { offset: -1 }),
        'FERRY_INVALID_ARGUMENT',
      );
    });
  });

  describe('a registry that ignores Range (node:http fake: always 200)', () => {
    let fake: FakeRegistry;
    let client: RegistryClient;
    const data = randomBytes(300_000);
    const repo = () => ({ registry: fake.host, repository: 'team/app' });
    beforeEach(async () => {
      fake = await startFakeRegistry();
      fake.blobs.set(digestOf(data), data);
      client = new RegistryClient({
        allow: ['127.0.0.1'],
        dockerConfigPath: '/nonexistent/config.json',
        retry: { attempts: 2, baseDelayMs: 5 },
      });
    });
    afterEach(async () => {
      await client.close();
      await fake.stop();
    });

    it('the client skips the first N bytes itself and says so', async () => {
      const r = await client.getBlob(repo(), digestOf(data), {}, { offset: 123_457 });
      assert.equal(r.rangeIgnored, true);
      assert.equal(r.offset, 123_457);
      assert.equal(r.size, data.length);
      assert.equal(r.length, data.length - 123_457);
      assert.ok((await readAll(r.stream)).equals(data.subarray(123_457)));
      const get = fake.requests.find((q) => q.method === 'GET' && q.path.includes('/blobs/'));
      assert.equal(get?.headers.range, 'bytes=123457-', 'the Range header was sent');
    });

    it("onRangeIgnored: 'fail' fails FERRY_REGISTRY_PROTOCOL; an offset past the whole blob fails FERRY_INVALID_ARGUMENT", async () => {
      await rejectsCode(
        client.getBlob(repo(), digestOf(data), {}, { offset: 10, onRangeIgnored: 'fail' }),
        'FERRY_REGISTRY_PROTOCOL',
        /ignored the Range/,
      );
      await rejectsCode(
        client.getBlob(repo(), digestOf(data), {}, { offset: data.length + 1 }),
        'FERRY_INVALID_ARGUMENT',
      );
    });
  });

  describe('a 206 that does not start at the offset asked for', () => {
    let server: Server;
    let host: string;
    let seen: IncomingHttpHeaders | undefined;
    before(async () => {
      server = createServer((req, res) => {
        seen = req.headers;
        if (req.url === '/v2/') return void res.writeHead(200).end();
        res.writeHead(206, { 'content-range': 'bytes 0-9/10', 'content-length': 10 });
        res.end(Buffer.alloc(10));
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    after(() => new Promise<void>((r) => server.close(() => r())));

    it('fails FERRY_REGISTRY_PROTOCOL naming the Content-Range', async () => {
      const client = new RegistryClient({
        allow: ['127.0.0.1'],
        dockerConfigPath: '/nonexistent/config.json',
      });
      try {
        await rejectsCode(
          client.getBlob(
            { registry: host, repository: 'x/y' },
            digestOf(Buffer.from('x')),
            {},
            { offset: 5 },
          ),
          'FERRY_REGISTRY_PROTOCOL',
          /Content-Range "bytes 0-9\/10"/,
        );
        assert.equal(seen?.range, 'bytes=5-');
      } finally {
        await client.close();
      }
    });
  });
});
