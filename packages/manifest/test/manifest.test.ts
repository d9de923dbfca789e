import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  FIXED_CREATED,
  ManifestError,
  MediaTypes,
  buildConfig,
  buildIndex,
  buildManifest,
  canonicalJson,
  configDiffIds,
  convertLayerMediaType,
  descriptorOf,
  isValidDigest,
  parseManifest,
  parsePlatform,
  platformMatches,
} from '@ferry/manifest';

const sha = (b: Buffer): string => 'sha256:' + createHash('sha256').update(b).digest('hex');
const D1 = 'sha256:' + 'a'.repeat(64);
const D2 = 'sha256:' + 'b'.repeat(64);
const D3 = 'sha256:' + 'c'.repeat(64);

describe('@ferry/manifest', () => {
  describe('canonicalJson', () => {
    it('sorts keys at every depth and drops whitespace, whatever the insertion order', () => {
      const a = canonicalJson({ b: 1, a: { d: [1, { z: 1, y: 2 }], c: 'x' } });
      const b = canonicalJson({ a: { c: 'x', d: [1, { y: 2, z: 1 }] }, b: 1 });
      assert.equal(a.toString(), '{"a":{"c":"x","d":[1,{"y":2,"z":1}]},"b":1}');
      assert.deepEqual(a, b);
    });
    it('drops undefined members and refuses non-finite numbers', () => {
      assert.equal(canonicalJson({ a: undefined, b: null }).toString(), '{"b":null}');
      assert.throws(() => canonicalJson({ n: NaN }), /n is not a finite number/);
    });
  });

  describe('buildConfig', () => {
    it('writes diff_ids and one fixed-time history entry per layer, defaults linux/amd64', () => {
      const c = buildConfig(undefined, [D1, D2]);
      assert.equal(c.digest, sha(c.bytes));
      assert.equal(c.size, c.bytes.length);
      assert.equal(c.mediaType, MediaTypes.ociConfig);
      const j = JSON.parse(c.bytes.toString());
      assert.deepEqual(j.rootfs, { type: 'layers', diff_ids: [D1, D2] });
      assert.equal(j.history.length, 2);
      for (const h of j.history) assert.equal(h.created, FIXED_CREATED);
      assert.equal(j.created, FIXED_CREATED);
      assert.equal(j.os, 'linux');
      assert.equal(j.architecture, 'amd64');
    });
    it('keeps config.json fields, replaces rootfs/history, and is byte-stable', () => {
      const fields = {
        architecture: 'arm64',
        os: 'linux',
        config: { Entrypoint: ['/app'], Env: ['A=1'], WorkingDir: '/w', Labels: { x: 'y' } },
        rootfs: { type: 'layers', diff_ids: [D3] },
        history: [{ created_by: 'junk' }],
      };
      const c1 = buildConfig(fields, [D1], { history: ['COPY app'] });
      const c2 = buildConfig(JSON.parse(JSON.stringify(fields)), [D1], { history: ['COPY app'] });
      assert.deepEqual(c1.bytes, c2.bytes);
      const j = JSON.parse(c1.bytes.toString());
      assert.equal(j.architecture, 'arm64');
      assert.deepEqual(j.config.Entrypoint, ['/app']);
      assert.deepEqual(j.rootfs.diff_ids, [D1]);
      assert.deepEqual(j.history, [{ created: FIXED_CREATED, created_by: 'COPY app' }]);
      assert.notEqual(buildConfig(fields, [D2]).digest, c1.digest);
    });
    it('refuses config fields of the wrong type, naming the field', () => {
      assert.throws(
        () => buildConfig({ config: { Env: 'A=1' } }, [D1]),
        (e: unknown) =>
          e instanceof ManifestError &&
          e.code === 'FERRY_CONFIG_INVALID' &&
          e.field === 'config.Env',
      );
      assert.throws(
        () => buildConfig({ config: { Env: ['novalue'] } }, [D1]),
        (e: unknown) => e instanceof ManifestError && e.field === 'config.Env[0]',
      );
      assert.throws(() => buildConfig({}, ['sha256:xyz']), /diffIds\[0\]/);
    });
  });

  describe('buildManifest / buildIndex', () => {
    const config = { mediaType: MediaTypes.ociConfig, digest: D1, size: 10 };
    const layers = [{ mediaType: MediaTypes.ociLayerGzip, digest: D2, size: 20 }];
    it('builds an OCI manifest whose digest is sha256 of its bytes and which parses back', () => {
      const m = buildManifest('oci', config, layers, { 'org.example': 'v' });
      assert.equal(m.digest, sha(m.bytes));
      assert.equal(m.mediaType, MediaTypes.ociManifest);
      const p = parseManifest(m.bytes);
      assert.equal(p.mediaType, MediaTypes.ociManifest);
      assert.deepEqual(p.config, config);
      assert.deepEqual(p.layers, layers);
      assert.deepEqual(p.annotations, { 'org.example': 'v' });
    });
    it('converts media types for Docker schema2 and refuses annotations there', () => {
      const m = buildManifest('docker', config, layers);
      const j = JSON.parse(m.bytes.toString());
      assert.equal(j.mediaType, MediaTypes.dockerManifest);
      assert.equal(j.config.mediaType, MediaTypes.dockerConfig);
      assert.equal(j.layers[0].mediaType, MediaTypes.dockerLayerGzip);
      assert.equal(j.schemaVersion, 2);
      assert.throws(() => buildManifest('docker', config, layers, { a: 'b' }), /no annotations/);
    });
    it('builds indexes; Docker manifest lists require platforms', () => {
      const m = buildManifest('oci', config, layers);
      const entry = {
        ...descriptorOf(m),
        platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
      };
      const idx = buildIndex('oci', [entry]);
      assert.equal(idx.digest, sha(idx.bytes));
      const p = parseManifest(idx.bytes, MediaTypes.ociIndex);
      assert.equal(p.manifests!.length, 1);
      assert.deepEqual(p.manifests![0]!.platform, entry.platform);
      assert.throws(() => buildIndex('docker', [descriptorOf(m)]), /needs a platform/);
      const list = buildIndex('docker', [entry]);
      assert.equal(JSON.parse(list.bytes.toString()).mediaType, MediaTypes.dockerManifestList);
    });
    it('convertLayerMediaType maps both ways and leaves unknown types alone', () => {
      assert.equal(
        convertLayerMediaType(MediaTypes.ociLayerGzip, 'docker'),
        MediaTypes.dockerLayerGzip,
      );
      assert.equal(
        convertLayerMediaType(MediaTypes.dockerLayerGzip, 'oci'),
        MediaTypes.ociLayerGzip,
      );
      assert.equal(
        convertLayerMediaType(MediaTypes.ociLayerZstd, 'docker'),
        MediaTypes.ociLayerZstd,
      );
    });
  });

  describe('parseManifest', () => {
    const bad = (input: string | Buffer, field?: string | RegExp, mt?: string): void => {
      assert.throws(
        () => parseManifest(typeof input === 'string' ? Buffer.from(input) : input, mt),
        (e: unknown) => {
          assert.ok(e instanceof ManifestError, String(e));
          assert.equal(e.code, 'FERRY_MANIFEST_INVALID');
          if (field instanceof RegExp) assert.match(e.field ?? '', field);
          else if (field) assert.equal(e.field, field);
          return true;
        },
      );
    };
    it('rejects junk, wrong schema versions and malformed descriptors, naming the field', () => {
      bad('not json');
      bad('[1,2]');
      bad('{"schemaVersion":1,"name":"x"}', 'schemaVersion');
      bad('{"schemaVersion":3}', 'schemaVersion');
      const ok = {
        schemaVersion: 2,
        mediaType: MediaTypes.ociManifest,
        config: { mediaType: MediaTypes.ociConfig, digest: D1, size: 1 },
        layers: [] as unknown[],
      };
      bad(
        JSON.stringify({ ...ok, config: { ...ok.config, digest: 'sha256:zz' } }),
        'config.digest',
      );
      bad(
        JSON.stringify({ ...ok, layers: [{ mediaType: 'x', digest: D2, size: -1 }] }),
        'layers[0].size',
      );
      bad(JSON.stringify({ ...ok, layers: {} }), 'layers');
      bad(JSON.stringify(ok), 'mediaType', MediaTypes.dockerManifest);
      bad(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MediaTypes.dockerManifestList,
          manifests: [{ mediaType: MediaTypes.dockerManifest, digest: D1, size: 1 }],
        }),
        'manifests[0].platform',
      );
      bad(JSON.stringify({ schemaVersion: 2, mediaType: 'application/x-whatever' }), 'mediaType');
      // path traversal in a digest is not a digest
      bad(
        JSON.stringify({ ...ok, config: { ...ok.config, digest: 'sha256:../../etc/passwd' } }),
        'config.digest',
      );
      assert.doesNotThrow(() => parseManifest(Buffer.from(JSON.stringify(ok))));
    });
    it('configDiffIds reads rootfs.diff_ids and refuses configs without them', () => {
      assert.deepEqual(configDiffIds(buildConfig({}, [D1, D2]).bytes), [D1, D2]);
      assert.throws(() => configDiffIds(Buffer.from('{}')), /rootfs.diff_ids/);
    });
  });

  it('digests and platforms', () => {
    assert.ok(isValidDigest(D1));
    assert.ok(!isValidDigest('sha256:' + 'A'.repeat(64)));
    assert.ok(!isValidDigest('md5:' + 'a'.repeat(32)));
    assert.deepEqual(parsePlatform('linux/arm/v7'), {
      os: 'linux',
      architecture: 'arm',
      variant: 'v7',
    });
    assert.throws(() => parsePlatform('linux'), /OS\/ARCH/);
    assert.ok(
      platformMatches(
        { os: 'linux', architecture: 'arm', variant: 'v7' },
        parsePlatform('linux/arm'),
      ),
    );
    assert.ok(
      !platformMatches(
        { os: 'linux', architecture: 'arm', variant: 'v6' },
        parsePlatform('linux/arm/v7'),
      ),
    );
  });
});
