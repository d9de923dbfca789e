/**
 * The diffID worker (diffid-worker.ts): gzip layers are gunzipped and hashed
 * on a worker thread; the main thread only posts chunks. Interleaved taps stay
 * apart, a blob that is not gzip answers its gzip error, a worker that dies
 * fails the open streams (never a silent pass) and the next stream starts a
 * new one, and a stream dropped by its reader leaves nothing open.
 */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { fromReadable, runPipeline } from '@ferry/image-source';
import {
  WorkerDiffIdTap,
  diffIdWorkerState,
  stopDiffIdWorker,
  type TapResult,
} from '../src/diffid-worker';
import { verifiedDiffIds } from '../src/pipeline-verify';
import { randomBytesSeeded, sha256 as sha, textBytes } from './support/images';

function tap(): {
  t: WorkerDiffIdTap;
  acked: () => number;
  result: Promise<TapResult>;
  failure: Promise<Error>;
} {
  let acked = 0;
  let resolveResult!: (r: TapResult) => void;
  let resolveFailure!: (e: Error) => void;
  const result = new Promise<TapResult>((r) => (resolveResult = r));
  const failure = new Promise<Error>((r) => (resolveFailure = r));
  const t = new WorkerDiffIdTap({
    onAck: (n) => (acked += n),
    onResult: resolveResult,
    onFailure: resolveFailure,
  });
  return { t, acked: () => acked, result, failure };
}

/** A new tap given `raw` gzipped in one piece answers its diffID and size. */
async function assertTapAnswers(raw: Buffer): Promise<void> {
  const t = tap();
  t.t.write(gzipSync(raw));
  t.t.end();
  assert.deepEqual(await t.result, { diffId: sha(raw), size: raw.length });
}

function chunks(b: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let o = 0; o < b.length; o += size) out.push(Buffer.from(b.subarray(o, o + size)));
  return out;
}

const waitFor = async (cond: () => boolean, what: string) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), what);
};

describe('@ferry/image-source: the diffID worker', function () {
  this.timeout(60_000);
  afterEach(() => verifiedDiffIds.clear());

  it('three taps written chunk by chunk, interleaved, each answer their own diffID and size; every byte is acknowledged', async () => {
    const raws = [textBytes(3_000_000, 1), randomBytesSeeded(2_000_000, 2), textBytes(500_000, 3)];
    const gz = raws.map((r) => gzipSync(r));
    const taps = raws.map(() => tap());
    const parts = gz.map((g) => chunks(g, 64 * 1024));
    for (let i = 0; parts.some((p) => i < p.length); i++) {
      parts.forEach((p, k) => p[i] && taps[k]!.t.write(p[i]!));
    }
    taps.forEach((x) => x.t.end());
    const results = await Promise.all(taps.map((x) => x.result));
    results.forEach((r, k) => {
      assert.deepEqual(r, { diffId: sha(raws[k]!), size: raws[k]!.length });
    });
    taps.forEach((x, k) => assert.equal(x.acked(), gz[k]!.length));
    assert.equal(diffIdWorkerState().openTaps, 0);
  });

  it('chunks of every size answer the same diffID: file-read-sized ones travel in buffers that come back, the caller keeps its own', async () => {
    const raw = Buffer.concat([textBytes(3_000_000, 11), randomBytesSeeded(2_000_000, 12)]);
    const gz = gzipSync(raw);
    // Small (cloned), 256 KiB - 1 MiB (transferred) and over 1 MiB (cloned) pieces, mixed.
    const sizes = [1000, 300 * 1024, 1024 * 1024, 1536 * 1024, 256 * 1024, 70_000];
    const parts: Buffer[] = [];
    for (let o = 0, i = 0; o < gz.length; i++) {
      const n = sizes[i % sizes.length]!;
      parts.push(Buffer.from(gz.subarray(o, o + n)));
      o += n;
    }
    const copies = parts.map((p) => Buffer.from(p));
    const t = tap();
    for (const p of parts) t.t.write(p);
    t.t.end();
    assert.deepEqual(await t.result, { diffId: sha(raw), size: raw.length });
    assert.equal(t.acked(), gz.length);
    parts.forEach((p, i) => assert.ok(p.equals(copies[i]!), `chunk ${i} is untouched`));
    assert.ok(diffIdWorkerState().spare > 0, 'transfer buffers came back for reuse');
    // A buffer that came back carries the next such chunk (taken, then given back again).
    const spare = diffIdWorkerState().spare;
    await assertTapAnswers(randomBytesSeeded(400_000, 13));
    assert.equal(diffIdWorkerState().spare, spare);
  });

  it('bytes that are not gzip answer the gzip error; chunks still on their way are ignored; the next tap works', async () => {
    const bad = tap();
    for (const c of chunks(randomBytesSeeded(300_000, 9), 50_000)) bad.t.write(c);
    bad.t.end();
    const r = await bad.result;
    assert.ok('gzipError' in r, JSON.stringify(r));
    assert.match(r.gzipError.message, /incorrect header check/);
    await assertTapAnswers(textBytes(100_000, 4));
  });

  it('a worker that dies fails every open tap with a clear error; the next tap starts a new worker', async () => {
    const open = [tap(), tap()];
    open[0]!.t.write(gzipSync(textBytes(200_000, 5)).subarray(0, 1000));
    await stopDiffIdWorker();
    for (const x of open) {
      assert.match((await x.failure).message, /diffID worker exited/);
    }
    assert.equal(diffIdWorkerState().openTaps, 0);
    await assertTapAnswers(textBytes(50_000, 6));
  });

  it('a layer stream whose worker dies fails (never passes unchecked)', async () => {
    const raw = textBytes(4_000_000, 7);
    const gz = gzipSync(raw);
    const src = new Readable({ read() {} });
    const ls = runPipeline({
      source: fromReadable(src),
      mode: { kind: 'passthrough', content: 'gzip' },
      description: 'test layer',
      expect: { digest: sha(gz), size: gz.length, diffId: sha(raw) },
    });
    ls.stream.on('error', () => undefined).resume();
    src.push(gz.subarray(0, 100_000));
    await waitFor(() => diffIdWorkerState().openTaps === 1, 'the stream opened a tap');
    await stopDiffIdWorker();
    src.push(gz.subarray(100_000));
    src.push(null);
    await assert.rejects(ls.done, /diffID worker exited/);
  });

  it('a layer stream dropped by its reader closes its tap', async () => {
    const gz = gzipSync(textBytes(2_000_000, 8));
    const src = new Readable({ read() {} });
    const ls = runPipeline({
      source: fromReadable(src),
      mode: { kind: 'passthrough', content: 'gzip' },
      description: 'test layer',
      expect: { digest: sha(gz), size: gz.length },
    });
    src.push(gz.subarray(0, 500_000));
    await waitFor(() => diffIdWorkerState().openTaps === 1, 'the stream opened a tap');
    ls.stream.destroy();
    await assert.rejects(ls.done, /closed by its reader/);
    assert.equal(diffIdWorkerState().openTaps, 0);
  });
});
