import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdirSync, symlinkSync, rmSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { MediaTypes, parseManifest } from '@ferry/manifest';
import { openSource, SourceError, type OpenedSource } from '@ferry/image-source';
import { skopeo, skopeoInspect } from '../../../test/helpers/skopeo';
import { tmpDir } from '../../../test/helpers/tmp';
import {
  drain,
  drainError,
  makeDirImage,
  sha256,
  writeOciImage,
  writeOciIndex,
  type WrittenImage,
} from './support/images';

const code = (c: string) => (e: unknown) => {
  assert.ok(e instanceof SourceError, String(e));
  assert.equal(e.code, c, e.message);
  return true;
};

/** Every layer of every image: stream it, check the bytes against stated and computed digests. */
async function checkLayers(
  src: OpenedSource,
): Promise<{ digest: string; diffId: string; size: number }[]> {
  const out = [];
  for (const img of src.images) {
    for (const l of img.layers) {
      const { bytes, result } = await drain(await l.open());
      assert.equal(result.digest, sha256(bytes), `${l.description}: digest of the bytes`);
      assert.equal(result.size, bytes.length);
      assert.equal(
        result.diffId,
        sha256(gunzipSync(bytes)),
        `${l.description}: diffId of the bytes`,
      );
      if (l.digest) assert.equal(result.digest, l.digest);
      if (l.diffId) assert.equal(result.diffId, l.diffId);
      assert.equal((await l.diffIdOnly()).diffId, result.diffId);
      out.push({ digest: result.digest, diffId: result.diffId, size: result.size });
    }
  }
  return out;
}

describe('@ferry/image-source oci: and docker-archive:', function () {
  this.timeout(120_000);
  let root: string;
  let written: WrittenImage;

  before(async () => {
    root = tmpDir('oci');
    makeDirImage(join(root, 'src'), { config: { config: { Cmd: ['/bin/tool'] } } });
    const dirImage = (await openSource('dir:src', { root })).images[0]!;
    written = await writeOciImage(join(root, 'mine'), dirImage, { refName: '1.0' });
  });

  it('reads an OCI layout it wrote by hand: stated digests, diffIds, config and manifest bytes', async () => {
    const src = await openSource('oci:mine:1.0', { root });
    assert.equal(src.images.length, 1);
    const img = src.images[0]!;
    assert.equal(img.manifestDigest, written.manifest.digest);
    assert.equal(sha256(img.manifestBytes!), written.manifest.digest);
    assert.equal(img.manifestMediaType, MediaTypes.ociManifest);
    assert.equal(sha256(img.configBytes!), written.config.digest);
    assert.deepEqual(img.platform, { os: 'linux', architecture: 'amd64' });
    assert.deepEqual(
      img.layers.map((l) => ({ digest: l.digest, size: l.size, diffId: l.diffId })),
      written.layers,
    );
    assert.deepEqual(await checkLayers(src), written.layers);
    // the only image is the default; an unknown ref is named in the error
    assert.equal(
      (await openSource('oci:mine', { root })).images[0]!.manifestDigest,
      written.manifest.digest,
    );
    await assert.rejects(
      openSource('oci:mine:2.0', { root }),
      (e: unknown) =>
        code('FERRY_SOURCE_NOT_FOUND')(e) && /"2\.0".*"1\.0"/.test((e as Error).message),
    );
  });

  it('reads layouts and archives that skopeo made from it, with identical digests', async () => {
    await skopeo([
      'copy',
      '--insecure-policy',
      `oci:${join(root, 'mine')}:1.0`,
      `oci:${join(root, 'by-skopeo')}:copied`,
    ]);
    await skopeo([
      'copy',
      '--insecure-policy',
      `oci:${join(root, 'mine')}:1.0`,
      `docker-archive:${join(root, 'by-skopeo.tar')}:ferry/test:1.0`,
    ]);

    const oci = await openSource('oci:by-skopeo:copied', { root });
    assert.deepEqual(await checkLayers(oci), written.layers, 'skopeo oci→oci keeps the blobs');
    assert.equal(sha256(oci.images[0]!.configBytes!), written.config.digest);

    const arch = await openSource('docker-archive:by-skopeo.tar', { root });
    const archTagged = await openSource('docker-archive:by-skopeo.tar:ferry/test:1.0', { root });
    assert.equal(archTagged.images[0]!.layers.length, 2);
    const img = arch.images[0]!;
    assert.equal(img.configMediaType, MediaTypes.dockerConfig);
    assert.equal(
      sha256(img.configBytes!),
      written.config.digest,
      'the archive keeps the config bytes',
    );
    // skopeo stores the layers uncompressed: Ferry gzips them again with its own settings,
    // so the diffIds (content) are identical and the digests are Ferry's deterministic ones.
    const layers = await checkLayers(arch);
    assert.deepEqual(
      layers.map((l) => l.diffId),
      written.layers.map((l) => l.diffId),
    );
    assert.deepEqual(
      layers.map((l) => l.digest),
      written.layers.map((l) => l.digest),
    );
    await assert.rejects(
      openSource('docker-archive:by-skopeo.tar:other:tag', { root }),
      code('FERRY_SOURCE_NOT_FOUND'),
    );
    // offsets work on archive layers too
    const l1 = img.layers[1]!;
    const full = await drain(await l1.open());
    const tail = await drain(await l1.open(1000));
    assert.ok(tail.bytes.equals(full.bytes.subarray(1000)));
    assert.deepEqual(tail.result, full.result);
  });

  it('reads a legacy `docker save` archive (<id>/layer.tar, symlinked duplicate layers)', async () => {
    // Build the legacy layout from the skopeo archive's pieces with the tar CLI nobody here wrote.
    const work = tmpDir('legacy');
    await skopeo([
      'copy',
      '--insecure-policy',
      `oci:${join(root, 'mine')}:1.0`,
      `dir:${join(work, 'd')}`,
    ]);
    const m = JSON.parse(readFileSync(join(work, 'd', 'manifest.json'), 'utf8'));
    const cfgHex = m.config.digest.slice(7);
    const t = join(work, 't');
    mkdirSync(t);
    const ids: string[] = [];
    for (const [i, l] of (m.layers as { digest: string }[]).entries()) {
      const id = `${i}`.padStart(64, 'f');
      mkdirSync(join(t, id));
      writeFileSync(
        join(t, id, 'layer.tar'),
        gunzipSync(readFileSync(join(work, 'd', l.digest.slice(7)))),
      );
      ids.push(`${id}/layer.tar`);
    }
    // a third entry that is a symlink to the first layer, as docker save writes for duplicates
    writeFileSync(join(t, `${cfgHex}.json`), readFileSync(join(work, 'd', cfgHex)));
    writeFileSync(
      join(t, 'manifest.json'),
      JSON.stringify([{ Config: `${cfgHex}.json`, RepoTags: ['legacy:latest'], Layers: ids }]),
    );
    const dupDir = 'e'.repeat(64);
    mkdirSync(join(t, dupDir));
    symlinkSync(`../${ids[0]}`, join(t, dupDir, 'layer.tar'));
    const { execFileSync } = await import('node:child_process');
    execFileSync('tar', ['-cf', join(root, 'legacy.tar'), '-C', t, '.']);
    const src = await openSource('docker-archive:legacy.tar:legacy', { root });
    const layers = await checkLayers(src);
    assert.deepEqual(
      layers.map((l) => l.digest),
      written.layers.map((l) => l.digest),
    );
    // the same archive with manifest.json pointing at the symlinked duplicate
    writeFileSync(
      join(t, 'manifest.json'),
      JSON.stringify([
        {
          Config: `${cfgHex}.json`,
          RepoTags: ['legacy:latest'],
          Layers: [`${dupDir}/layer.tar`, ids[1]],
        },
      ]),
    );
    execFileSync('tar', ['-cf', join(root, 'legacy2.tar'), '-C', t, '.']);
    const src2 = await openSource('docker-archive:legacy2.tar', { root });
    assert.deepEqual(
      (await checkLayers(src2)).map((l) => l.diffId),
      written.layers.map((l) => l.diffId),
    );
  });

  it('a docker-archive layer that does not match the config diff_id fails before the stream ends', async () => {
    const work = tmpDir('badarch');
    const t = join(work, 't');
    mkdirSync(t);
    await skopeo([
      'copy',
      '--insecure-policy',
      `oci:${join(root, 'mine')}:1.0`,
      `dir:${join(work, 'd')}`,
    ]);
    const m = JSON.parse(readFileSync(join(work, 'd', 'manifest.json'), 'utf8'));
    const cfgHex = m.config.digest.slice(7);
    writeFileSync(join(t, 'c.json'), readFileSync(join(work, 'd', cfgHex)));
    const tars = (m.layers as { digest: string }[]).map((l) =>
      gunzipSync(readFileSync(join(work, 'd', l.digest.slice(7)))),
    );
    tars[1]![700] ^= 0xff; // one flipped bit inside the tar
    writeFileSync(join(t, 'a.tar'), tars[0]!);
    writeFileSync(join(t, 'b.tar'), tars[1]!);
    writeFileSync(
      join(t, 'manifest.json'),
      JSON.stringify([{ Config: 'c.json', RepoTags: null, Layers: ['a.tar', 'b.tar'] }]),
    );
    const { execFileSync } = await import('node:child_process');
    execFileSync('tar', [
      '-cf',
      join(root, 'bad.tar'),
      '-C',
      t,
      'manifest.json',
      'c.json',
      'a.tar',
      'b.tar',
    ]);
    const src = await openSource('docker-archive:bad.tar', { root });
    await drain(await src.images[0]!.layers[0]!.open());
    const { error, received } = await drainError(await src.images[0]!.layers[1]!.open());
    code('FERRY_DIFFID_MISMATCH')(error);
    assert.match(error.message, /b\.tar/);
    // whatever arrived is not a complete gzip stream: the trailer was never emitted
    assert.throws(() => gunzipSync(received), /unexpected end of file/);
  });

  it('a tampered OCI blob fails with FERRY_BLOB_DIGEST_MISMATCH naming the blob, before the stream ends', async () => {
    const layout = join(root, 'tampered');
    const w = await writeOciImage(layout, (await openSource('dir:src', { root })).images[0]!, {
      refName: 't',
    });
    const victim = w.layers[1]!;
    const p = join(layout, 'blobs', 'sha256', victim.digest.slice(7));
    const bytes = readFileSync(p);
    bytes[Math.floor(bytes.length / 2)] ^= 0x01;
    writeFileSync(p, bytes);
    const src = await openSource('oci:tampered:t', { root });
    const { error, received } = await drainError(await src.images[0]!.layers[1]!.open());
    code('FERRY_BLOB_DIGEST_MISMATCH')(error);
    assert.equal((error as SourceError).field, victim.digest);
    assert.ok(error.message.includes(victim.digest), error.message);
    assert.ok(
      received.length < bytes.length,
      `the last chunk is held back: got ${received.length} of ${bytes.length}`,
    );
    // a blob cut short fails the same way
    writeFileSync(p, bytes.subarray(0, 100));
    const e2 = await drainError(await src.images[0]!.layers[1]!.open());
    code('FERRY_BLOB_DIGEST_MISMATCH')(e2.error);
    // a tampered manifest or config is refused when the source is opened
    const cfg = join(layout, 'blobs', 'sha256', w.config.digest.slice(7));
    writeFileSync(cfg, readFileSync(cfg).toString().replace('amd64', 'arm64'));
    await assert.rejects(
      openSource('oci:tampered:t', { root }),
      (e: unknown) =>
        code('FERRY_BLOB_DIGEST_MISMATCH')(e) && (e as Error).message.includes(w.config.digest),
    );
  });

  it('multi-platform index: every platform, or one picked by platform; an unknown platform is refused', async () => {
    const layout = join(root, 'multi');
    const dirImage = (await openSource('dir:src', { root })).images[0]!;
    const amd = await writeOciImage(layout, dirImage, {
      platform: { os: 'linux', architecture: 'amd64' },
      writeIndex: false,
    });
    const arm = await writeOciImage(layout, dirImage, {
      platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
      writeIndex: false,
    });
    assert.notEqual(amd.manifest.digest, arm.manifest.digest);
    const idx = await writeOciIndex(layout, [amd.manifest, arm.manifest], 'multi');
    const all = await openSource('oci:multi:multi', { root });
    assert.deepEqual(
      all.images.map((i) => i.platform),
      [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64', variant: 'v8' },
      ],
    );
    assert.equal(all.indexDigest, idx.digest);
    assert.equal(sha256(all.indexBytes!), idx.digest);
    assert.equal(parseManifest(all.indexBytes!).manifests!.length, 2);
    const one = await openSource('oci:multi:multi', { root, platform: 'linux/arm64' });
    assert.equal(one.images.length, 1);
    assert.equal(one.images[0]!.manifestDigest, arm.manifest.digest);
    assert.equal(one.indexBytes, undefined, 'one platform of an index is pushed without the index');
    await assert.rejects(
      openSource('oci:multi', { root, platform: 'linux/s390x' }),
      (e: unknown) =>
        code('FERRY_PLATFORM_NOT_FOUND')(e) &&
        /linux\/amd64, linux\/arm64\/v8/.test((e as Error).message),
    );
    // skopeo reads the index Ferry reads
    const raw = await skopeoInspect(`oci:${layout}:multi`, ['--raw']);
    assert.equal(raw.manifests.length, 2);
    // and skopeo copy --all keeps it: Ferry reads skopeo's copy with the same digests
    await skopeo([
      'copy',
      '--all',
      '--insecure-policy',
      `oci:${layout}:multi`,
      `oci:${join(root, 'multi-copy')}:m`,
    ]);
    const copy = await openSource('oci:multi-copy:m', { root });
    assert.deepEqual(
      copy.images.map((i) => i.manifestDigest),
      [amd.manifest.digest, arm.manifest.digest],
    );
  });

  it('refuses malformed layouts, blobs outside the root and junk references with clear errors', async () => {
    const layout = join(root, 'junk');
    mkdirSync(layout);
    await assert.rejects(
      openSource('oci:junk', { root }),
      (e: unknown) =>
        code('FERRY_SOURCE_NOT_FOUND')(e) && /no index\.json/.test((e as Error).message),
    );
    writeFileSync(
      join(layout, 'index.json'),
      '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../etc/passwd","size":1}]}',
    );
    await assert.rejects(
      openSource('oci:junk', { root }),
      (e: unknown) => code('FERRY_MANIFEST_INVALID')(e) && /digest/.test((e as Error).message),
    );
    writeFileSync(join(layout, 'index.json'), 'nope');
    await assert.rejects(openSource('oci:junk', { root }), code('FERRY_MANIFEST_INVALID'));
    // a blob that is a symlink out of the root is not read
    const w = await writeOciImage(
      join(root, 'evil'),
      (await openSource('dir:src', { root })).images[0]!,
    );
    const outside = tmpDir('oci-outside');
    const b = join(root, 'evil', 'blobs', 'sha256', w.layers[0]!.digest.slice(7));
    writeFileSync(join(outside, 'blob'), readFileSync(b));
    rmSync(b);
    symlinkSync(join(outside, 'blob'), b);
    const src = await openSource('oci:evil', { root });
    await assert.rejects(src.images[0]!.layers[0]!.open(), code('FERRY_SOURCE_OUTSIDE_ROOT'));
    rmSync(b);
    await assert.rejects(
      src.images[0]!.layers[0]!.open(),
      (e: unknown) =>
        code('FERRY_SOURCE_NOT_FOUND')(e) && (e as Error).message.includes(w.layers[0]!.digest),
    );
    writeFileSync(
      join(root, 'gz.tar'),
      (await import('node:zlib')).gzipSync(readFileSync(join(root, 'by-skopeo.tar'))),
    );
    await assert.rejects(
      openSource('docker-archive:gz.tar', { root }),
      (e: unknown) =>
        code('FERRY_UNSUPPORTED_FILE')(e) && /compressed tarball/.test((e as Error).message),
    );
    writeFileSync(join(root, 'notatar.tar'), 'hello');
    await assert.rejects(
      openSource('docker-archive:notatar.tar', { root }),
      code('FERRY_MANIFEST_INVALID'),
    );
    assert.ok(readdirSync(root).length > 0);
  });
});
