/**
 * schema1: the manifest derived as docker/distribution derived it, signed as
 * libtrust signs, and checked by the real thing — docker-registry 2.8 with
 * schema1 enabled verifies the JWS on PUT — then read back by skopeo.
 */
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { create as tarCreate } from 'tar';
import { buildConfig } from '@ferry/manifest';
import { bufferBlobSource, RegistryClient, RegistryError } from '@ferry/registry-client';
import {
  EMPTY_LAYER_DIGEST,
  buildSchema1Manifest,
  generateKeys,
  libtrustKeyId,
  loadCertChain,
  loadSigningKey,
  schema1Payload,
  signSchema1,
  signingKeyFromPem,
  verifySchema1,
  type SigningKey,
} from '@ferry/signing';
import {
  libtrustKeyId as harnessKeyId,
  skopeo,
  skopeoInspect,
  startRegistry,
  tmpDir,
  type RegistryHandle,
} from '../../../test/helpers';
import { requireTool, runOk } from './support/tools';

const sha256 = (b: Buffer | string) => 'sha256:' + createHash('sha256').update(b).digest('hex');
const hex = (d: string) => d.slice(7);
const MT = 'application/vnd.docker.distribution.manifest.v1+prettyjws';

function ecKey(): SigningKey {
  const pem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
    type: 'pkcs8',
    format: 'pem',
  });
  return signingKeyFromPem(pem as string, 'ec test key');
}

/** A real gzipped tar holding one file (skopeo decompresses layers when it converts schema1). */
function layerTar(dir: string, name: string, content: string): { gz: Buffer; diffId: string } {
  const src = join(dir, `src-${name}`);
  mkdirSync(src);
  writeFileSync(join(src, name), content);
  const file = join(dir, `${name}.tar.gz`);
  tarCreate({ gzip: true, file, cwd: src, sync: true, portable: true }, [name]);
  const gz = readFileSync(file);
  return { gz, diffId: sha256(gunzipSync(gz)) };
}

describe('schema1 manifests (unit)', () => {
  const config = buildConfig({ architecture: 'arm64', config: { Cmd: ['sh'] } }, [
    'sha256:' + '1'.repeat(64),
    'sha256:' + '2'.repeat(64),
  ]).bytes;
  const layers = ['sha256:' + 'a'.repeat(64), 'sha256:' + 'b'.repeat(64)];

  it('chains v1 ids as Docker derived them, top first, the top entry being the config', () => {
    const { bytes, blobs } = buildSchema1Manifest({ name: 'team/app', tag: '1.0', config, layers });
    assert.deepEqual(blobs, []);
    const m = JSON.parse(bytes.toString());
    assert.deepEqual(Object.keys(m), [
      'schemaVersion',
      'name',
      'tag',
      'architecture',
      'fsLayers',
      'history',
    ]);
    assert.equal(m.schemaVersion, 1);
    assert.equal(m.architecture, 'arm64');
    assert.deepEqual(m.fsLayers, [{ blobSum: layers[1] }, { blobSum: layers[0] }]);
    const [top, base] = m.history.map((h: { v1Compatibility: string }) =>
      JSON.parse(h.v1Compatibility),
    );
    // base: id = sha256("<blob hex> "), no parent; top: sha256("<blob hex> <parent> <config>")
    assert.equal(base.id, hex(sha256(`${hex(layers[0] as string)} `)));
    assert.equal(base.parent, undefined);
    assert.deepEqual(base.container_config, { Cmd: ['ferry: layer 1 of 2'] });
    assert.equal(top.parent, base.id);
    assert.equal(
      top.id,
      hex(sha256(`${hex(layers[1] as string)} ${base.id} ${config.toString()}`)),
    );
    const cfg = JSON.parse(config.toString());
    assert.deepEqual(
      Object.keys(top).sort(),
      [...Object.keys(cfg).filter((k) => k !== 'rootfs' && k !== 'history'), 'id', 'parent'].sort(),
    );
    assert.deepEqual(top.config, cfg.config);
    assert.match(
      bytes.toString(),
      /^\{\n {3}"schemaVersion": 1,\n/,
      'pretty-printed with 3 spaces',
    );
  });

  it('points empty-layer history at the gzipped empty tar, marked throwaway, and asks for that blob', () => {
    const cfg = JSON.parse(config.toString());
    cfg.history.splice(1, 0, {
      created: '2020-01-01T00:00:00.100Z',
      created_by: 'ENV a=b',
      empty_layer: true,
    });
    const { bytes, blobs } = buildSchema1Manifest({
      name: 'team/app',
      tag: '1.0',
      config: Buffer.from(JSON.stringify(cfg)),
      layers,
    });
    const m = JSON.parse(bytes.toString());
    assert.deepEqual(
      m.fsLayers.map((l: { blobSum: string }) => l.blobSum),
      [layers[1], EMPTY_LAYER_DIGEST, layers[0]],
    );
    const mid = JSON.parse(m.history[1].v1Compatibility);
    assert.equal(mid.throwaway, true);
    assert.equal(mid.created, '2020-01-01T00:00:00.1Z', 'time as Go marshals it');
    assert.deepEqual(mid.container_config, { Cmd: ['ENV a=b'] });
    assert.equal(blobs.length, 1);
    assert.equal(sha256(blobs[0]?.bytes as Buffer), EMPTY_LAYER_DIGEST);
    assert.equal(
      gunzipSync(blobs[0]?.bytes as Buffer).length,
      1024,
      'an empty tar: two zero blocks',
    );
  });

  it('refuses a config whose layers do not match', () => {
    assert.throws(
      () => buildSchema1Manifest({ name: 'a', tag: 'b', config, layers: layers.slice(1) }),
      (e: Error & { code?: string }) => e.code === 'FERRY_SCHEMA1_INVALID',
    );
  });

  it('signs as libtrust does: protected header, jwk with libtrust key id, payload = bytes without signatures', () => {
    const key = ecKey();
    const { bytes } = buildSchema1Manifest({ name: 'team/app', tag: '1.0', config, layers });
    const s = signSchema1(bytes, key, { time: new Date('2026-01-02T03:04:05.678Z') });
    assert.deepEqual(s.payload, bytes);
    assert.equal(s.digest, sha256(bytes));
    assert.deepEqual(schema1Payload(s.bytes), bytes);
    const doc = JSON.parse(s.bytes.toString());
    const sig = doc.signatures[0];
    assert.deepEqual(Object.keys(sig), ['header', 'signature', 'protected']);
    assert.deepEqual(Object.keys(sig.header), ['jwk', 'alg']);
    assert.equal(sig.header.alg, 'ES256');
    assert.equal(
      sig.header.jwk.kid,
      harnessKeyId(key.publicKey.export({ type: 'spki', format: 'der' })),
    );
    assert.equal(sig.header.jwk.kid, libtrustKeyId(key.publicKey));
    const prot = JSON.parse(Buffer.from(sig.protected, 'base64url').toString());
    assert.deepEqual(prot, {
      formatLength: bytes.length - 2,
      formatTail: 'Cn0',
      time: '2026-01-02T03:04:05Z',
    });
    assert.ok(s.bytes.toString().endsWith('\n   ]\n}'));
    assert.deepEqual(verifySchema1(s.bytes).keyIds, [libtrustKeyId(key.publicKey)]);
  });
});

describe('schema1 manifests against docker-registry (schema1 enabled)', function () {
  this.timeout(120_000);
  let reg: RegistryHandle;
  let client: RegistryClient;
  let dir: string;
  let layers: string[];
  let config: Buffer;
  const repoName = 's1/signed';
  const repo = () => ({ registry: reg.host, repository: repoName });

  before(async () => {
    reg = await startRegistry({ schema1: true });
    client = new RegistryClient({
      allow: ['127.0.0.1'],
      retry: { attempts: 3, baseDelayMs: 20, maxDelayMs: 200 },
    });
    dir = tmpDir('schema1');
    const tars = [
      layerTar(dir, 'base.txt', 'base layer\n'),
      layerTar(dir, 'top.txt', 'top layer\n'),
    ];
    layers = [];
    for (const t of tars)
      layers.push((await client.uploadBlob(repo(), bufferBlobSource(t.gz))).digest);
    config = buildConfig(
      { architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/sh'] } },
      tars.map((t) => t.diffId),
    ).bytes;
  });
  after(async () => {
    await client?.close();
    await reg?.stop();
  });

  async function push(tag: string, key: SigningKey, certChain?: string[]) {
    const unsigned = buildSchema1Manifest({ name: repoName, tag, config, layers });
    const s = signSchema1(unsigned.bytes, key, { certChain });
    const r = await client.putManifest(repo(), tag, s.bytes, MT);
    assert.equal(r.digest, s.digest, 'the registry computed the same digest');
    return s;
  }

  it('accepts an EC key (ES256, jwk) and skopeo reads the image back', async () => {
    const s = await push('ec', ecKey());
    const raw = Buffer.from(
      (
        await skopeo([
          'inspect',
          '--tls-verify=false',
          '--raw',
          `docker://${reg.host}/${repoName}:ec`,
        ])
      ).stdout,
    );
    // docker-registry keeps the payload and re-signs it with its own key on every GET, through
    // libtrust: our payload comes back byte for byte, in libtrust's own layout, and Ferry's
    // verifier accepts libtrust's signature.
    assert.deepEqual(schema1Payload(raw), s.payload, 'payload stored byte for byte');
    assert.equal(verifySchema1(raw).digest, s.digest);
    const shape = (b: Buffer) =>
      b.toString().replace(/"(kid|x|y|signature|protected)": "[^"]*"/g, '"$1": "…"');
    assert.equal(
      shape(raw),
      shape(s.bytes),
      'the signatures block is laid out as libtrust lays it out',
    );
    const info = await skopeoInspect(`docker://${reg.host}/${repoName}:ec`);
    assert.equal(info.Digest, s.digest);
    assert.deepEqual(info.Layers, layers);
    assert.equal(info.Architecture, 'amd64');
    const oci = join(dir, 'oci');
    await skopeo([
      'copy',
      '--src-tls-verify=false',
      `docker://${reg.host}/${repoName}:ec`,
      `oci:${oci}:ec`,
    ]);
    const index = JSON.parse(readFileSync(join(oci, 'index.json'), 'utf8'));
    const m = JSON.parse(
      readFileSync(join(oci, 'blobs', 'sha256', hex(index.manifests[0].digest)), 'utf8'),
    );
    assert.equal(m.layers.length, 2);
  });

  it('accepts an RSA key (RS256) with a jwk and with an x5c chain from keygen --rsa', async () => {
    const gen = await generateKeys(join(dir, 'rsa'), { rsa: 2048 });
    const key = await loadSigningKey(gen.privateKeyPath);
    const jwk = await push('rsa-jwk', key);
    assert.equal(JSON.parse(jwk.bytes.toString()).signatures[0].header.alg, 'RS256');
    const chain = await loadCertChain(gen.certificatePath as string, key);
    const x5c = await push('rsa-x5c', key, chain);
    const header = JSON.parse(x5c.bytes.toString()).signatures[0].header;
    assert.deepEqual(Object.keys(header), ['alg', 'x5c']);
    assert.deepEqual(header.x5c, chain);
    const info = await skopeoInspect(`docker://${reg.host}/${repoName}:rsa-x5c`);
    assert.equal(info.Digest, x5c.digest);
  });

  it('accepts an EC key with an x5c chain (certificate made by openssl)', async function () {
    const openssl = requireTool(this, 'openssl');
    const gen = await generateKeys(join(dir, 'ec-x5c'));
    const crt = join(dir, 'ec-x5c', 'ec.crt');
    await runOk(openssl, [
      'req',
      '-x509',
      '-new',
      '-key',
      gen.privateKeyPath,
      '-subj',
      '/CN=ferry',
      '-days',
      '2',
      '-out',
      crt,
    ]);
    const key = await loadSigningKey(gen.privateKeyPath);
    await push('ec-x5c', key, await loadCertChain(crt, key));
  });

  it('rejects a manifest whose signature or signed content was altered', async () => {
    const unsigned = buildSchema1Manifest({ name: repoName, tag: 'bad', config, layers });
    const s = signSchema1(unsigned.bytes, ecKey());
    const doc = JSON.parse(s.bytes.toString());
    const sig: string = doc.signatures[0].signature;
    const flipped = sig.slice(0, 10) + (sig[10] === 'A' ? 'B' : 'A') + sig.slice(11);
    const badSig = Buffer.from(s.bytes.toString().replace(sig, flipped));
    await assert.rejects(client.putManifest(repo(), 'bad', badSig, MT), (e: RegistryError) => {
      assert.equal(e.code, 'FERRY_MANIFEST_INVALID', e.message);
      return true;
    });
    const badContent = Buffer.from(s.bytes.toString().replace('"tag": "bad"', '"tag": "bae"'));
    await assert.rejects(
      client.putManifest(repo(), 'bae', badContent, MT),
      (e: RegistryError) => e.code === 'FERRY_MANIFEST_INVALID',
    );
    assert.equal(await client.headManifest(repo(), 'bad', [MT]), undefined, 'nothing was tagged');
    assert.throws(() => verifySchema1(badSig), /does not verify/);
  });

  it('accepts a manifest with empty layers once the empty tar is uploaded', async () => {
    const cfg = JSON.parse(config.toString());
    cfg.history.push({
      created: '1970-01-01T00:00:00Z',
      created_by: 'CMD ["sh"]',
      empty_layer: true,
    });
    const unsigned = buildSchema1Manifest({
      name: repoName,
      tag: 'empty',
      config: Buffer.from(JSON.stringify(cfg)),
      layers,
    });
    for (const b of unsigned.blobs) await client.uploadBlob(repo(), bufferBlobSource(b.bytes));
    const s = signSchema1(unsigned.bytes, ecKey());
    const r = await client.putManifest(repo(), 'empty', s.bytes, MT);
    assert.equal(r.digest, s.digest);
    const info = await skopeoInspect(`docker://${reg.host}/${repoName}:empty`);
    assert.equal(info.Digest, s.digest);
  });
});
