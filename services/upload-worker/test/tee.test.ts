import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { LayerTee, type TeeSourceStream } from '../src/tee';

function source(chunks: Buffer[]): TeeSourceStream {
  const stream = Readable.from(chunks);
  return { stream, done: Promise.resolve({ digest: 'sha256:x', size: 0 }) };
}

async function readAll(s: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

describe('upload-worker: LayerTee (one read of a layer for several targets)', () => {
  it('opens the layer once and gives every branch every byte', async () => {
    let opens = 0;
    const data = [Buffer.from('abc'), Buffer.from('def')];
    const tee = new LayerTee(async () => {
      opens++;
      return source(data);
    }, 2);
    const [a, b] = await Promise.all([tee.openBranch(0, 0), tee.openBranch(1, 0)]);
    // The branches get the same chunk objects: neither may give one back for reuse.
    assert.deepEqual([a.shared, b.shared], [true, true]);
    const [x, y] = await Promise.all([readAll(a.stream), readAll(b.stream)]);
    assert.equal(x.toString(), 'abcdef');
    assert.equal(y.toString(), 'abcdef');
    assert.equal(opens, 1);
  });

  it('a shared open that fails rejects every waiting branch and crashes nothing', async () => {
    const uncaught: unknown[] = [];
    const onUncaught = (e: unknown) => uncaught.push(e);
    process.on('uncaughtException', onUncaught);
    try {
      const tee = new LayerTee<TeeSourceStream>(async () => {
        throw new Error('source unavailable');
      }, 2);
      const results = await Promise.allSettled([tee.openBranch(0, 0), tee.openBranch(1, 0)]);
      assert.deepEqual(
        results.map((r) => r.status),
        ['rejected', 'rejected'],
      );
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(uncaught, []);
    } finally {
      process.off('uncaughtException', onUncaught);
    }
  });

  it('a branch that leaves before opening does not hold the others; a retry reads on its own', async () => {
    let opens = 0;
    const tee = new LayerTee(async () => {
      opens++;
      return source([Buffer.from('xyz')]);
    }, 2);
    tee.leave(1);
    const a = await tee.openBranch(0, 0);
    assert.equal((await readAll(a.stream)).toString(), 'xyz');
    const again = await tee.openBranch(0, 0);
    assert.equal((await readAll(again.stream)).toString(), 'xyz');
    assert.equal(opens, 2);
    // A read of its own: the stream is the layer's, its chunks may be given back.
    assert.equal(again.shared, false);
    assert.equal(again.stream, again.s.stream);
  });
});
