/**
 * dir: layers' gzip (adaptive-gzip.ts): blocks that cannot shrink are stored,
 * the rest compressed at the level asked for; the output is the same however
 * the input is chunked (an upload resumes by regenerating it), is a valid
 * gzip of the input, and is byte-for-byte zlib's gzip when no block is stored.
 */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import { fromReadable, runPipeline } from '@ferry/image-source';
import { AdaptiveGzip, adaptiveGzipStats, sampledEntropy } from '../src/adaptive-gzip';
import { GZIP_CHUNK_SIZE, ZLIB_INPUT_QUEUE } from '../src/pipeline';
import { drain, randomBytesSeeded, sha256 as sha, textBytes as text } from './support/images';

/** Gzips `input` through the layer pipeline, fed in pieces of `piece` bytes, from `offset` on. */
async function gzipThrough(input: Buffer, piece: number, level = 6, offset = 0) {
  const chunks: Buffer[] = [];
  for (let o = 0; o < input.length; o += piece) chunks.push(input.subarray(o, o + piece));
  const ls = runPipeline({
    source: fromReadable(Readable.from(chunks)),
    mode: { kind: 'gzip', level },
    description: 'test layer',
    offset,
  });
  return drain(ls);
}

const stats = () => ({ ...adaptiveGzipStats });
const delta = (a: typeof adaptiveGzipStats, b: typeof adaptiveGzipStats) => ({
  blocks: b.blocks - a.blocks,
  stored: b.stored - a.stored,
  switches: b.switches - a.switches,
});

describe('@ferry/image-source: dir: layer gzip stores blocks that cannot shrink', function () {
  this.timeout(60_000);
  // 1.1 MB text, 1.5 MB random, 0.7 MB text, 0.3 MB random, 0.33 MB text.
  const mixed = Buffer.concat([
    text(1_100_000),
    randomBytesSeeded(1_500_000, 1),
    text(700_000),
    randomBytesSeeded(300_000, 2),
    text(333_333),
  ]);

  it('the same bytes whatever the input chunking; a valid gzip of the input; random blocks stored', async () => {
    const s0 = stats();
    const first = await gzipThrough(mixed, 64 * 1024);
    const d = delta(s0, stats());
    assert.deepEqual(gunzipSync(first.bytes), mixed);
    assert.equal(first.result.digest, sha(first.bytes));
    assert.equal(first.result.diffId, sha(mixed));
    // the four 256 KiB blocks wholly inside the 1.5 MB of random bytes
    assert.ok(d.stored >= 4, `random blocks stored: ${JSON.stringify(d)}`);
    assert.ok(d.stored < d.blocks, 'text blocks compressed');
    for (const piece of [1, 1000, 256 * 1024, 777_777, 4 * 1024 * 1024]) {
      // (1-byte pieces only over a prefix: a million single-byte chunks is slow, not different)
      const input = piece === 1 ? mixed.subarray(0, 300_000) : mixed;
      const again = await gzipThrough(input, piece);
      const want = piece === 1 ? (await gzipThrough(input, 65536)).bytes : first.bytes;
      assert.ok(again.bytes.equals(want), `pieces of ${piece} bytes gave other bytes`);
    }
    // Storing random blocks loses nothing against plain level 6.
    assert.ok(first.bytes.length <= gzipSync(mixed, { level: 6 }).length);
  });

  it('with no block stored, the output is zlib gzip at that level, byte for byte', async () => {
    for (const level of [1, 6, 9]) {
      const t = text(900_000);
      const s0 = stats();
      const { bytes } = await gzipThrough(t, 100_000, level);
      assert.equal(delta(s0, stats()).stored, 0);
      assert.ok(bytes.equals(gzipSync(t, { level })), `level ${level}`);
    }
  });

  it('random data is stored (size within 0.1 % of the input), and an offset gives the tail of the same bytes', async () => {
    const r = randomBytesSeeded(3_000_000, 3);
    const s0 = stats();
    const whole = await gzipThrough(r, 1 << 20);
    const d = delta(s0, stats());
    assert.equal(d.stored, d.blocks);
    assert.equal(d.switches, 1);
    assert.ok(whole.bytes.length < r.length * 1.001, `${whole.bytes.length} bytes`);
    assert.deepEqual(gunzipSync(whole.bytes), r);
    const tail = await gzipThrough(r, 123_456, 6, 1_000_001);
    assert.ok(tail.bytes.equals(whole.bytes.subarray(1_000_001)));
    assert.equal(tail.result.digest, whole.result.digest);
  });

  it('gives each written chunk back once zlib has consumed it, never before: scribbled over then, the output is unchanged', async () => {
    const reference = (await gzipThrough(mixed, 64 * 1024)).bytes;
    for (const piece of [1000, 256 * 1024, 600_000, 4 * 1024 * 1024]) {
      const written = new Set<Buffer>();
      const released: Buffer[] = [];
      const out: Buffer[] = [];
      await new Promise<void>((resolve, reject) => {
        const z = new AdaptiveGzip({
          level: 6,
          // As the pipeline has them: the output chunk size is part of what makes the bytes.
          chunkSize: GZIP_CHUNK_SIZE,
          queueLimit: ZLIB_INPUT_QUEUE,
          onData: (c) => out.push(c),
          // The caller reuses the memory at once: any byte zlib had not read yet would change.
          release: (c) => {
            assert.ok(written.has(c), 'only chunks given to write() come back');
            released.push(c);
            c.fill(0xa5);
          },
          onDrain: () => undefined,
          onEnd: resolve,
          onError: reject,
        });
        // Every chunk is written at once (fresh memory each): zlib's queue holds several.
        for (let o = 0; o < mixed.length; o += piece) {
          const c = Buffer.from(mixed.subarray(o, o + piece));
          written.add(c);
          z.write(c);
        }
        z.end();
      });
      assert.ok(Buffer.concat(out).equals(reference), `pieces of ${piece}: other bytes`);
      assert.equal(
        released.length,
        written.size,
        `pieces of ${piece}: every chunk given back once`,
      );
      assert.equal(new Set(released).size, released.length);
    }
  });

  it('an empty layer is the empty gzip', async () => {
    const { bytes } = await gzipThrough(Buffer.alloc(0), 1);
    assert.ok(bytes.equals(gzipSync(Buffer.alloc(0), { level: 6 })));
  });

  it('sampled entropy: ~8 bits for random bytes, low for text, 0 for a constant', () => {
    assert.ok(sampledEntropy(randomBytesSeeded(256 * 1024, 4)) > 7.98);
    assert.ok(sampledEntropy(text(256 * 1024)) < 6);
    assert.equal(sampledEntropy(Buffer.alloc(256 * 1024, 7)), 0);
  });
});
