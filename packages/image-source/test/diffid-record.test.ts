/**
 * The verified-diffID record (pipeline-verify.ts, VerifiedDiffIds): a gzip
 * blob is gunzipped once per process; later streams of the same bytes compare
 * the stated diff_id with what the gunzip gave — and still fail on a mismatch.
 */
import assert from 'node:assert/strict';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import {
  buildConfig,
  buildManifest,
  canonicalJson,
  descriptorOf,
  MediaTypes,
  type Descriptor,
} from '@ferry/manifest';
import { openSource, SourceError } from '@ferry/image-source';
import { VerifiedDiffIds, verifiedDiffIds } from '../src/pipeline-verify';
import { tmpDir } from '../../../test/helpers/tmp';
import {
  drain,
  drainError,
  makeDirImage,
  randomBytesSeeded,
  sha256,
  writeOciImage,
  type WrittenImage,
} from './support/images';

const code = (c: string) => (e: unknown) => {
  assert.ok(e instanceof SourceError, String(e));
  assert.equal(e.code, c, e.message);
  return true;
};

/** An OCI layout of the given gzip layer blobs (already in blobs/) whose config states `diffIds`. */
function writeLayout(
  dir: string,
  layers: { digest: string; size: number }[],
  diffIds: string[],
  ref: string,
): void {
  const config = buildConfig({}, diffIds);
  writeFileSync(join(dir, 'blobs', 'sha256', config.digest.slice(7)), config.bytes);
  const manifest = buildManifest(
    'oci',
    descriptorOf(config),
    layers.map((l) => ({ mediaType: MediaTypes.ociLayerGzip, digest: l.digest, size: l.size })),
  );
  writeFileSync(join(dir, 'blobs', 'sha256', manifest.digest.slice(7)), manifest.bytes);
  const desc: Descriptor = descriptorOf(manifest);
  desc.annotations = { 'org.opencontainers.image.ref.name': ref };
  writeFileSync(
    join(dir, 'index.json'),
    canonicalJson({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [desc] }),
  );
}

async function layerOf(root: string, source: string, i: number) {
  return (await openSource(source, { root })).images[0]!.layers[i]!;
}

describe('@ferry/image-source: a gzip blob is gunzipped once per process (verified diffIDs)', function () {
  this.timeout(120_000);
  let root: string;
  let w: WrittenImage;
  let blob1: Buffer;

  before(async () => {
    root = tmpDir('diffid-record');
    makeDirImage(join(root, 'src'));
    w = await writeOciImage(
      join(root, 'good'),
      (await openSource('dir:src', { root })).images[0]!,
      { refName: 'g' },
    );
    blob1 = readFileSync(join(root, 'good', 'blobs', 'sha256', w.layers[1]!.digest.slice(7)));
    // The same blobs, a config that states the two diff_ids swapped.
    cpSync(join(root, 'good'), join(root, 'lying'), { recursive: true });
    writeLayout(join(root, 'lying'), w.layers, [w.layers[1]!.diffId, w.layers[0]!.diffId], 'l');
  });

  beforeEach(() => verifiedDiffIds.clear());
  after(() => verifiedDiffIds.clear());

  it('the first stream gunzips and records; later streams of the same blob use the record and report the same result', async () => {
    const first = await drain(await (await layerOf(root, 'oci:good:g', 1)).open());
    assert.deepEqual([verifiedDiffIds.misses, verifiedDiffIds.hits], [1, 0]);
    assert.equal(first.result.diffId, sha256(gunzipSync(first.bytes)));
    assert.equal(first.result.uncompressedSize, gunzipSync(first.bytes).length);
    assert.equal(verifiedDiffIds.size, 1);

    const again = await drain(await (await layerOf(root, 'oci:good:g', 1)).open());
    assert.deepEqual([verifiedDiffIds.misses, verifiedDiffIds.hits], [1, 1]);
    assert.deepEqual(again.result, first.result);
    assert.ok(again.bytes.equals(first.bytes));

    const tail = await drain(await (await layerOf(root, 'oci:good:g', 1)).open(500));
    assert.deepEqual([verifiedDiffIds.misses, verifiedDiffIds.hits], [1, 2]);
    assert.ok(tail.bytes.equals(first.bytes.subarray(500)));
    assert.deepEqual(tail.result, first.result);
  });

  it('a config whose diff_id does not match fails with FERRY_DIFFID_MISMATCH before the end — with the record as without it', async () => {
    // Without a record: the gunzip finds it.
    let r = await drainError(await (await layerOf(root, 'oci:lying:l', 1)).open());
    code('FERRY_DIFFID_MISMATCH')(r.error);
    assert.deepEqual([verifiedDiffIds.misses, verifiedDiffIds.hits], [1, 0]);
    assert.ok(r.received.length < blob1.length, 'the last chunk was held back');
    // The record holds what the gunzip gave, never the stated diff_id: the honest layout streams fine.
    const good = await drain(await (await layerOf(root, 'oci:good:g', 1)).open());
    assert.equal(good.result.diffId, w.layers[1]!.diffId);
    assert.deepEqual([verifiedDiffIds.misses, verifiedDiffIds.hits], [1, 1]);
    // With the record (no gunzip): the same failure, the same held-back last chunk.
    r = await drainError(await (await layerOf(root, 'oci:lying:l', 1)).open());
    code('FERRY_DIFFID_MISMATCH')(r.error);
    assert.match(r.error.message, new RegExp(w.layers[1]!.diffId.slice(7)));
    assert.match(r.error.message, new RegExp(w.layers[0]!.diffId.slice(7)));
    assert.deepEqual([verifiedDiffIds.misses, verifiedDiffIds.hits], [1, 2]);
    assert.ok(r.received.length < blob1.length, 'the last chunk was held back');
    assert.throws(() => gunzipSync(r.received), /unexpected end of file/);
  });

  it('bytes that do not hash to the stated digest fail as corrupt, record or not, and make no record', async () => {
    cpSync(join(root, 'good'), join(root, 'tampered'), { recursive: true });
    const p = join(root, 'tampered', 'blobs', 'sha256', w.layers[1]!.digest.slice(7));
    const bad = Buffer.from(blob1);
    bad[Math.floor(bad.length / 2)] ^= 0x01;
    writeFileSync(p, bad);
    // No record: gunzipped (or not) — the digest fails first, nothing is recorded.
    let r = await drainError(await (await layerOf(root, 'oci:tampered:g', 1)).open());
    code('FERRY_BLOB_DIGEST_MISMATCH')(r.error);
    assert.equal(verifiedDiffIds.size, 0, 'no record from bytes that did not match their digest');
    // A record for the digest exists (from the good blob): the tampered bytes still fail.
    await drain(await (await layerOf(root, 'oci:good:g', 1)).open());
    r = await drainError(await (await layerOf(root, 'oci:tampered:g', 1)).open());
    code('FERRY_BLOB_DIGEST_MISMATCH')(r.error);
    assert.ok(r.received.length < bad.length, 'the last chunk was held back');
  });

  it('a blob that is not a valid gzip stream is never recorded: each stream gunzips and fails', async () => {
    const dir = join(root, 'notgz');
    cpSync(join(root, 'good'), dir, { recursive: true });
    const junk = randomBytesSeeded(100_000, 42);
    const d = sha256(junk);
    writeFileSync(join(dir, 'blobs', 'sha256', d.slice(7)), junk);
    writeLayout(dir, [{ digest: d, size: junk.length }], [sha256('anything')], 'n');
    for (let i = 1; i <= 2; i++) {
      const r = await drainError(await (await layerOf(root, 'oci:notgz:n', 0)).open());
      code('FERRY_DIFFID_MISMATCH')(r.error);
      assert.match(r.error.message, /not a valid gzip stream/);
      assert.deepEqual([verifiedDiffIds.misses, verifiedDiffIds.hits], [i, 0]);
      assert.equal(verifiedDiffIds.size, 0);
    }
  });

  it('is bounded: the least recently used record goes first', () => {
    const v = new VerifiedDiffIds(2);
    const r = (x: string) => ({ diffId: x, uncompressedSize: 1 });
    v.record('sha256:a', 1, r('A'));
    v.record('sha256:b', 1, r('B'));
    assert.equal(v.get('sha256:a', 1)?.diffId, 'A');
    v.record('sha256:c', 1, r('C'));
    assert.equal(v.size, 2);
    assert.equal(v.get('sha256:b', 1), undefined, 'b was the least recently used');
    assert.equal(v.get('sha256:a', 1)?.diffId, 'A');
    assert.equal(v.get('sha256:a', 2), undefined, 'the size is part of the key');
  });
});
