import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { MediaTypes, buildIndex, canonicalJson, descriptorOf } from '@ferry/manifest';
import { openSource, SourceError } from '@ferry/image-source';
import { tmpDir } from '../../../test/helpers/tmp';
import {
  drain,
  drainError,
  makeDirImage,
  sha256,
  writeOciImage,
  type WrittenImage,
} from './support/images';

const code = (c: string) => (e: unknown) => {
  assert.ok(e instanceof SourceError, String(e));
  assert.equal(e.code, c, e.message);
  return true;
};

describe('@ferry/image-source more layouts', function () {
  this.timeout(60_000);
  let root: string;
  let w: WrittenImage;
  const blob = (hex: string) => readFileSync(join(root, 'base', 'blobs', 'sha256', hex));

  before(async () => {
    root = tmpDir('extra');
    makeDirImage(join(root, 'src'));
    w = await writeOciImage(
      join(root, 'base'),
      (await openSource('dir:src', { root })).images[0]!,
      { refName: 'r' },
    );
  });

  it('docker-archive, OCI style (blobs/sha256): an uncompressed layer is gzipped, a gzipped one passes through byte for byte', async () => {
    const t = join(root, 'ocistyle');
    mkdirSync(join(t, 'blobs', 'sha256'), { recursive: true });
    const gz0 = blob(w.layers[0]!.digest.slice(7));
    const tar0 = gunzipSync(gz0);
    const gz1 = blob(w.layers[1]!.digest.slice(7));
    writeFileSync(join(t, 'blobs', 'sha256', sha256(tar0).slice(7)), tar0);
    writeFileSync(join(t, 'blobs', 'sha256', w.layers[1]!.digest.slice(7)), gz1);
    writeFileSync(
      join(t, 'blobs', 'sha256', w.config.digest.slice(7)),
      blob(w.config.digest.slice(7)),
    );
    const manifest = [
      {
        Config: `blobs/sha256/${w.config.digest.slice(7)}`,
        RepoTags: ['ferry/x:1'],
        Layers: [
          `blobs/sha256/${sha256(tar0).slice(7)}`,
          `blobs/sha256/${w.layers[1]!.digest.slice(7)}`,
        ],
      },
      {
        Config: `blobs/sha256/${w.config.digest.slice(7)}`,
        RepoTags: ['ferry/y:2'],
        Layers: [
          `blobs/sha256/${sha256(tar0).slice(7)}`,
          `blobs/sha256/${w.layers[1]!.digest.slice(7)}`,
        ],
      },
    ];
    writeFileSync(join(t, 'manifest.json'), JSON.stringify(manifest));
    execFileSync('tar', ['-cf', join(root, 'ocistyle.tar'), '-C', t, 'manifest.json', 'blobs']);

    await assert.rejects(
      openSource('docker-archive:ocistyle.tar', { root }),
      (e: unknown) => code('FERRY_BAD_SOURCE')(e) && /2 images/.test((e as Error).message),
    );
    const byTag = await openSource('docker-archive:ocistyle.tar:ferry/y:2', { root });
    const byIndex = await openSource('docker-archive:ocistyle.tar:@1', { root });
    await assert.rejects(
      openSource('docker-archive:ocistyle.tar:@2', { root }),
      code('FERRY_SOURCE_NOT_FOUND'),
    );
    for (const src of [byTag, byIndex]) {
      const [l0, l1] = src.images[0]!.layers;
      assert.equal(l0!.digest, undefined, 'Ferry compresses the tar layer: no stated digest');
      assert.equal(l1!.digest, w.layers[1]!.digest, 'the gzipped layer keeps its digest');
      assert.equal(l1!.size, gz1.length);
      const a = await drain(await l0!.open());
      assert.equal(a.result.digest, w.layers[0]!.digest);
      assert.equal(a.result.diffId, w.layers[0]!.diffId);
      const b = await drain(await l1!.open());
      assert.ok(b.bytes.equals(gz1), 'passed through unchanged');
      assert.equal(b.result.diffId, w.layers[1]!.diffId, 'diffId computed by gunzipping the blob');
      assert.equal((await l1!.diffIdOnly()).diffId, w.layers[1]!.diffId);
      const tail = await drain(await l1!.open(500));
      assert.ok(tail.bytes.equals(gz1.subarray(500)));
    }
  });

  it('a passed-through gzip layer whose content does not match the config diff_id fails before the end', async () => {
    const t = join(root, 'badgz');
    mkdirSync(t, { recursive: true });
    // config says layer 0's diffId for a blob that is actually layer 1
    const cfg = JSON.parse(blob(w.config.digest.slice(7)).toString());
    cfg.rootfs.diff_ids = [w.layers[0]!.diffId];
    writeFileSync(join(t, 'c.json'), JSON.stringify(cfg));
    writeFileSync(join(t, 'l.tar.gz'), blob(w.layers[1]!.digest.slice(7)));
    writeFileSync(
      join(t, 'manifest.json'),
      JSON.stringify([{ Config: 'c.json', Layers: ['l.tar.gz'] }]),
    );
    execFileSync('tar', [
      '-cf',
      join(root, 'badgz.tar'),
      '-C',
      t,
      'manifest.json',
      'c.json',
      'l.tar.gz',
    ]);
    const src = await openSource('docker-archive:badgz.tar', { root });
    const { error, received } = await drainError(await src.images[0]!.layers[0]!.open());
    code('FERRY_DIFFID_MISMATCH')(error);
    assert.ok(
      received.length < blob(w.layers[1]!.digest.slice(7)).length,
      'the last chunk was held back',
    );
  });

  it('oci: nested indexes, and an index.json that is itself a multi-platform index', async () => {
    const layout = join(root, 'base');
    const inner = buildIndex('oci', [
      { ...w.manifest, annotations: undefined, platform: { os: 'linux', architecture: 'amd64' } },
    ]);
    writeFileSync(join(layout, 'blobs', 'sha256', inner.digest.slice(7)), inner.bytes);
    const outer = buildIndex('oci', [descriptorOf(inner)]);
    writeFileSync(join(layout, 'blobs', 'sha256', outer.digest.slice(7)), outer.bytes);
    const top = {
      schemaVersion: 2,
      mediaType: MediaTypes.ociIndex,
      manifests: [
        { ...descriptorOf(outer), annotations: { 'org.opencontainers.image.ref.name': 'nested' } },
        { ...w.manifest },
      ],
    };
    writeFileSync(join(layout, 'index.json'), canonicalJson(top));
    const nested = await openSource('oci:base:nested', { root });
    assert.equal(nested.images.length, 1);
    assert.equal(nested.images[0]!.manifestDigest, w.manifest.digest);
    assert.deepEqual(nested.images[0]!.platform, { os: 'linux', architecture: 'amd64' });
    assert.equal(nested.indexBytes, undefined, 'a nested index is not pushed as stored');
    assert.equal(
      (await openSource('oci:base:r', { root })).images[0]!.manifestDigest,
      w.manifest.digest,
    );
    await assert.rejects(
      openSource('oci:base', { root }),
      (e: unknown) => code('FERRY_BAD_SOURCE')(e) && /name one/.test((e as Error).message),
    );

    // index.json listing unnamed per-platform manifests (as some builders write it)
    const flat = {
      schemaVersion: 2,
      manifests: [
        { ...w.manifest, annotations: undefined, platform: { os: 'linux', architecture: 'amd64' } },
        { ...w.manifest, annotations: undefined, platform: { os: 'linux', architecture: 'arm64' } },
      ],
    };
    writeFileSync(join(layout, 'index.json'), JSON.stringify(flat));
    const all = await openSource('oci:base', { root });
    assert.deepEqual(
      all.images.map((i) => i.platform!.architecture),
      ['amd64', 'arm64'],
    );
    const arm = await openSource('oci:base', { root, platform: 'linux/arm64' });
    assert.equal(arm.images.length, 1);
    assert.deepEqual(arm.images[0]!.platform, { os: 'linux', architecture: 'arm64' });
  });
});
