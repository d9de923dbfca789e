/**
 * File reads into reused buffers (read-pool.ts): a file source gives exactly
 * the file's bytes (whole or a range), honours pause and cancel, closes its
 * handle, and reads into a buffer again only once its reader released it;
 * a layer stream read by a reader that releases (and overwrites) every chunk
 * still checks digest and diffID against the file's true bytes.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { READ_CHUNK_SIZE, runPipeline } from '@ferry/image-source';
import { verifiedDiffIds } from '../src/pipeline-verify';
import { clearReadPool, fileSource, readPoolSize, releaseReadBuffer } from '../src/read-pool';
import type { ByteSource } from '../src/pipeline';
import { randomBytesSeeded, sha256, textBytes } from './support/images';

/** Runs a source to its end, optionally releasing each chunk once it is copied. */
function collect(src: ByteSource, release = false): Promise<{ bytes: Buffer; chunks: Buffer[] }> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    const chunks: Buffer[] = [];
    src.start(
      (c) => {
        chunks.push(c);
        parts.push(Buffer.from(c));
        if (release) releaseReadBuffer(c);
      },
      () => resolve({ bytes: Buffer.concat(parts), chunks }),
      reject,
    );
  });
}

const closed = (fh: FileHandle): boolean => fh.fd === -1;
const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 20));

describe('read pool: file sources into reused buffers', function () {
  let dir: string;
  const file = (name: string, bytes: Buffer): string => {
    const p = join(dir, name);
    writeFileSync(p, bytes);
    return p;
  };
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-read-pool-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('gives exactly the bytes of the file, or of a range, and closes the file at the end', async () => {
    for (const n of [
      0,
      1,
      READ_CHUNK_SIZE - 1,
      READ_CHUNK_SIZE,
      READ_CHUNK_SIZE + 1,
      3.5 * READ_CHUNK_SIZE,
    ]) {
      const data = randomBytesSeeded(n, n);
      const fh = await open(file(`f${n}`, data), 'r');
      const { bytes, chunks } = await collect(fileSource(fh));
      assert.ok(bytes.equals(data), `${n} bytes`);
      assert.ok(chunks.every((c) => c.length > 0 && c.length <= READ_CHUNK_SIZE));
      assert.ok(closed(fh), `the handle of the ${n}-byte file is closed`);
    }
    const data = randomBytesSeeded(3 * READ_CHUNK_SIZE, 7);
    const p = file('ranged', data);
    for (const [start, end] of [
      [0, 0],
      [5, 6],
      [100, READ_CHUNK_SIZE + 100],
      [READ_CHUNK_SIZE - 3, 3 * READ_CHUNK_SIZE],
      // Past the end of the file: what there is (the pipeline's size check catches a short blob).
      [2 * READ_CHUNK_SIZE, 5 * READ_CHUNK_SIZE],
    ] as const) {
      const fh = await open(p, 'r');
      const { bytes } = await collect(fileSource(fh, { start, end }));
      assert.ok(bytes.equals(data.subarray(start, end)), `range ${start}-${end}`);
      assert.ok(closed(fh));
    }
  });

  it('reads a buffer again only after its reader released it; foreign chunks and second releases are ignored', async () => {
    const p = file('reuse', randomBytesSeeded(6 * READ_CHUNK_SIZE, 3));
    clearReadPool();
    const { chunks: held } = await collect(fileSource(await open(p, 'r')));
    assert.equal(held.length, 6);
    assert.equal(new Set(held.map((c) => c.buffer)).size, 6, 'unreleased chunks are never reused');
    // (The read that found the end of the file gave its buffer back itself.)
    const before = readPoolSize();
    releaseReadBuffer(held[0]!);
    releaseReadBuffer(held[0]!);
    releaseReadBuffer(held[0]!.subarray(10, 20));
    releaseReadBuffer(Buffer.alloc(READ_CHUNK_SIZE));
    assert.equal(readPoolSize(), before + 1, 'one buffer back, once');
    const { chunks: again } = await collect(fileSource(await open(p, 'r'), { end: 10 }));
    assert.equal(again[0]!.buffer, held[0]!.buffer, 'the released buffer is read into again');
    assert.equal(readPoolSize(), before);

    // A reader that releases every chunk as it goes keeps reading into the same few buffers.
    const data = randomBytesSeeded(6 * READ_CHUNK_SIZE, 3);
    const { bytes, chunks } = await collect(fileSource(await open(p, 'r')), true);
    assert.ok(bytes.equals(data));
    assert.ok(new Set(chunks.map((c) => c.buffer)).size <= 2);
    assert.ok(readPoolSize() <= 16);
  });

  it('pause stops reading until resume; cancel stops it for good and closes the file', async () => {
    const data = randomBytesSeeded(4 * READ_CHUNK_SIZE, 9);
    const fh = await open(file('paused', data), 'r');
    const src = fileSource(fh);
    const got: Buffer[] = [];
    let ended = false;
    src.start(
      (c) => {
        got.push(Buffer.from(c));
        src.pause();
      },
      () => (ended = true),
      (e) => assert.fail(e),
    );
    await tick();
    assert.equal(got.length, 1, 'paused after the first chunk');
    src.resume();
    await tick();
    assert.equal(got.length, 2);
    src.cancel();
    src.resume();
    await tick();
    assert.equal(got.length, 2, 'nothing after cancel');
    assert.equal(ended, false);
    assert.ok(closed(fh));
  });

  it('a read error fails the source once, with the handle closed', async () => {
    const fh = await open(dir, 'r'); // a directory: read fails with EISDIR
    await assert.rejects(collect(fileSource(fh)), /EISDIR/);
    await tick();
    assert.ok(closed(fh));
  });

  it('a layer stream whose reader releases (and overwrites) every chunk still checks digest and diffID', async () => {
    const raw = Buffer.concat([
      textBytes(3 * READ_CHUNK_SIZE),
      randomBytesSeeded(2 * READ_CHUNK_SIZE, 5),
    ]);
    const gz = gzipSync(raw);
    const p = file('layer.gz', gz);
    verifiedDiffIds.clear();
    const ls = runPipeline({
      source: fileSource(await open(p, 'r')),
      mode: { kind: 'passthrough', content: 'gzip' },
      description: 'layer.gz',
      expect: { digest: sha256(gz), size: gz.length, diffId: sha256(raw) },
    });
    const parts: Buffer[] = [];
    for await (const c of ls.stream) {
      parts.push(Buffer.from(c as Buffer));
      ls.release(c as Buffer);
      (c as Buffer).fill(0xee);
    }
    const r = await ls.done;
    assert.ok(Buffer.concat(parts).equals(gz));
    assert.equal(r.digest, sha256(gz));
    assert.equal(r.diffId, sha256(raw));
    assert.equal(verifiedDiffIds.misses, 1, 'the diffID was computed from the bytes, not a record');
  });
});
