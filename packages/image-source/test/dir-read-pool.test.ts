/**
 * dir: layers read their files into pooled buffers that the consumer gives
 * back (ByteSource.release): gzip once zlib has consumed a chunk, the
 * lookup's hash at once. Given back too early, a buffer read into again would
 * change bytes zlib has not compressed yet: the layers here, read in 128 KiB
 * pieces side by side, must come out byte for byte as they do with 4 KiB
 * reads (which never use the pool), and the pool must have been reused.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { openSource } from '@ferry/image-source';
import { tarReadPoolStats } from '../src/dir-tar';
import { tmpDir } from '../../../test/helpers/tmp';
import { drain, randomBytesSeeded, sha256, textBytes, writeTree } from './support/images';

const KiB = 1024;

describe('@ferry/image-source dir: tar reads into reused buffers', function () {
  this.timeout(120_000);
  let root: string;

  before(() => {
    root = tmpDir('dir-read-pool');
    for (let i = 0; i < 3; i++) {
      writeTree(join(root, 'img', 'layers', `0${i}-l`), {
        'big.txt': textBytes(3 * 1024 * KiB + i, 10 + i),
        'random.bin': randomBytesSeeded(2 * 1024 * KiB + 7 * i, 20 + i),
        'mid.txt': textBytes(300 * KiB, 30 + i),
        'small/a': 'a\n',
        'small/b': textBytes(40 * KiB, 40 + i),
        'tail.bin': randomBytesSeeded(130 * KiB, 50 + i),
      });
    }
  });

  async function layersWith(tarReadSize: number) {
    const src = await openSource(`dir:${join(root, 'img')}`, { root, tarReadSize });
    return src.images[0]!.layers;
  }

  it('layers read in 128 KiB pooled pieces side by side are byte for byte those of 4 KiB reads', async () => {
    // 4 KiB reads are gathered and copied, never pooled: the reference.
    const reference = await Promise.all(
      (await layersWith(4 * KiB)).map(async (l) => (await drain(await l.open())).result),
    );
    assert.equal(tarReadPoolStats(4 * KiB).created, 0, '4 KiB reads take no pooled buffer');
    for (let round = 0; round < 2; round++) {
      const layers = await layersWith(128 * KiB);
      const got = await Promise.all(
        layers.map(async (l) => {
          const { bytes, result } = await drain(await l.open());
          assert.equal(sha256(gunzipSync(bytes)), result.diffId, 'gzip holds the bytes hashed');
          return result;
        }),
      );
      assert.deepEqual(got, reference);
      // The lookup's hash gives its buffers back too, with the same diffIDs.
      const ids = await Promise.all(layers.map((l) => l.diffIdOnly()));
      assert.deepEqual(
        ids.map((r) => r.diffId),
        reference.map((r) => r.diffId),
      );
    }
    // ~170 reads of 128 KiB in the two rounds; a fresh buffer for each without the pool.
    const { waiting, created } = tarReadPoolStats(128 * KiB);
    assert.ok(created <= 40, `${created} buffers made for ~170 reads`);
    assert.ok(waiting > 0 && waiting <= 8, `${waiting} buffers wait for reuse`);
  });
});
