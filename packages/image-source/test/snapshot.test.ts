/**
 * A push is a snapshot: a source opened through the snapshot taken when the
 * push was accepted gives exactly that version, or fails FERRY_SOURCE_CHANGED
 * naming what changed — never a mix.
 */
import assert from 'node:assert/strict';
import { appendFileSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  openSource,
  snapshotKey,
  SourceError,
  type OpenedSource,
  type SourceSnapshot,
} from '@ferry/image-source';
import { skopeo } from '../../../test/helpers/skopeo';
import { tmpDir } from '../../../test/helpers/tmp';
import {
  drain,
  drainError,
  makeDirImage,
  randomBytesSeeded,
  sha256,
  writeOciImage,
  writeTree,
} from './support/images';

const changed =
  (re: RegExp) =>
  (e: unknown): boolean => {
    assert.ok(e instanceof SourceError, String(e));
    assert.equal(e.code, 'FERRY_SOURCE_CHANGED', e.message);
    assert.match(e.message, re);
    return true;
  };

async function digestsOf(src: OpenedSource): Promise<unknown> {
  const img = src.images[0]!;
  const layers = [];
  for (const l of img.layers) layers.push((await drain(await l.open())).result.digest);
  return {
    manifest: img.manifestDigest,
    config: img.configBytes ? sha256(img.configBytes) : undefined,
    layers,
  };
}

/** A JSON round trip, as the push state stores it. */
const stored = (s: SourceSnapshot): SourceSnapshot => JSON.parse(JSON.stringify(s));

describe('@ferry/image-source snapshots', function () {
  this.timeout(120_000);

  it('oci: a ref re-pointed after the accept — the old snapshot still gives the old image, a fresh open the new', async () => {
    const root = tmpDir('snap-oci');
    makeDirImage(join(root, 'a'));
    makeDirImage(join(root, 'b'), { big: 123_456 });
    const imgA = (await openSource('dir:a', { root })).images[0]!;
    const imgB = (await openSource('dir:b', { root })).images[0]!;
    const wa = await writeOciImage(join(root, 'layout'), imgA, { refName: 'app' });
    const first = await openSource('oci:layout:app', { root });
    const before = await digestsOf(first);
    assert.equal(first.images[0]!.manifestDigest, wa.manifest.digest);
    const snap = stored(first.snapshot);
    assert.equal(snap.kind, 'oci');

    // re-point "app" at another image (A's blobs stay in the layout, as in any OCI layout)
    const wb = await writeOciImage(join(root, 'layout'), imgB, { refName: 'app' });
    assert.notEqual(wb.manifest.digest, wa.manifest.digest);

    const old = await openSource('oci:layout:app', { root, snapshot: snap });
    assert.deepEqual(await digestsOf(old), before);
    assert.equal(old.images[0]!.manifestDigest, wa.manifest.digest);
    assert.equal(sha256(old.images[0]!.configBytes!), wa.config.digest);
    const fresh = await openSource('oci:layout:app', { root });
    assert.equal(fresh.images[0]!.manifestDigest, wb.manifest.digest);
    assert.deepEqual(
      fresh.images[0]!.layers.map((l) => l.digest),
      wb.layers.map((l) => l.digest),
    );
    assert.notEqual(snapshotKey(fresh.snapshot), snapshotKey(snap));
    assert.equal(snapshotKey(old.snapshot), snapshotKey(snap));
  });

  it('docker-archive: replaced by another archive (mv over it) — the old snapshot fails naming the archive, an open source never reads the new file', async () => {
    const root = tmpDir('snap-arch');
    makeDirImage(join(root, 'a'));
    makeDirImage(join(root, 'b'), { big: 99_999 });
    for (const n of ['a', 'b']) {
      const img = (await openSource(`dir:${n}`, { root })).images[0]!;
      await writeOciImage(join(root, `${n}-oci`), img, { refName: 'v1' });
      await skopeo([
        'copy',
        '--insecure-policy',
        `oci:${join(root, `${n}-oci`)}:v1`,
        `docker-archive:${join(root, `${n}.tar`)}:snap/${n}:v1`,
      ]);
    }
    renameSync(join(root, 'a.tar'), join(root, 'swap.tar'));
    const first = await openSource('docker-archive:swap.tar', { root });
    const snap = stored(first.snapshot);
    assert.equal(snap.kind, 'docker-archive');
    // unchanged: opens through the snapshot
    await openSource('docker-archive:swap.tar', { root, snapshot: snap });

    renameSync(join(root, 'b.tar'), join(root, 'swap.tar'));
    await assert.rejects(
      openSource('docker-archive:swap.tar', { root, snapshot: snap }),
      changed(/archive docker-archive:swap\.tar was replaced/),
    );
    // the source opened before the swap reads no byte of the new archive
    await assert.rejects(first.images[0]!.layers[0]!.open(), changed(/swap\.tar was replaced/));
    const fresh = await openSource('docker-archive:swap.tar', { root });
    assert.notEqual(snapshotKey(fresh.snapshot), snapshotKey(snap));
    assert.notEqual(fresh.images[0]!.layers[1]!.diffId, first.images[0]!.layers[1]!.diffId);
  });

  it('dir: config.json edited, a layer added or removed — the old snapshot fails naming what changed', async () => {
    const root = tmpDir('snap-dir');
    makeDirImage(join(root, 'img'), { config: { config: { Cmd: ['a'] } } });
    const snap = stored((await openSource('dir:img', { root })).snapshot);
    assert.equal(snap.kind, 'dir');
    await openSource('dir:img', { root, snapshot: snap }); // unchanged: fine

    writeFileSync(join(root, 'img', 'config.json'), JSON.stringify({ config: { Cmd: ['b'] } }));
    await assert.rejects(
      openSource('dir:img', { root, snapshot: snap }),
      changed(/config\.json changed since the push was accepted/),
    );
    writeFileSync(join(root, 'img', 'config.json'), JSON.stringify({ config: { Cmd: ['a'] } }));
    await openSource('dir:img', { root, snapshot: snap }); // same bytes again: fine

    writeTree(join(root, 'img', 'layers', '03-x'), { 'x.txt': 'x' });
    await assert.rejects(
      openSource('dir:img', { root, snapshot: snap }),
      changed(/layer list changed.*added 03-x/),
    );
    rmSync(join(root, 'img', 'layers', '03-x'), { recursive: true });
    rmSync(join(root, 'img', 'layers', '01-base'), { recursive: true });
    await assert.rejects(
      openSource('dir:img', { root, snapshot: snap }),
      changed(/layer list changed.*removed 01-base/),
    );
  });

  it('dir: a file changed after the open — that layer fails when opened, the others still read', async () => {
    const root = tmpDir('snap-dir-layer');
    makeDirImage(join(root, 'img'));
    const src = await openSource('dir:img', { root });
    const through = await openSource('dir:img', { root, snapshot: stored(src.snapshot) });
    writeFileSync(join(root, 'img', 'layers', '02-app', 'app', 'main.js'), 'console.log(2)\n');
    for (const s of [src, through]) {
      await assert.rejects(s.images[0]!.layers[1]!.open(), changed(/layers\/02-app changed/));
      await assert.rejects(s.images[0]!.layers[1]!.diffIdOnly(), changed(/layers\/02-app/));
      await drain(await s.images[0]!.layers[0]!.open()); // 01-base is unchanged
    }
  });

  describe('dir: a file changed WHILE its layer is read fails the stream, never a mixed layer', () => {
    /** Layer: a.txt (read first), m.bin (big, keeps the reader busy), z.bin (read last). */
    async function paused(tag: string) {
      const root = tmpDir(`snap-during-${tag}`);
      const layer = join(root, 'img', 'layers', 'l');
      writeTree(layer, {
        'a.txt': 'aaaa',
        'm.bin': randomBytesSeeded(24 * 1024 * 1024, 1),
        'z.bin': randomBytesSeeded(100_000, 2),
      });
      const src = await openSource('dir:img', { root, tarReadSize: 64 * 1024 });
      const ls = await src.images[0]!.layers[0]!.open();
      // take one chunk, then stop reading: backpressure holds the writer inside m.bin
      await new Promise<void>((r) => ls.stream.once('readable', () => r()));
      assert.ok(ls.stream.read() !== null);
      await new Promise((r) => setTimeout(r, 300));
      return { layer, ls };
    }

    it('a file already read is rewritten in place (same size)', async () => {
      const { layer, ls } = await paused('before');
      writeFileSync(join(layer, 'a.txt'), 'AAAA');
      const { error } = await drainError(ls);
      changed(/layers\/l changed while it was read/)(error);
      await assert.rejects(ls.done, changed(/changed while it was read/));
    });

    it('a file not yet read grows', async () => {
      const { layer, ls } = await paused('after');
      appendFileSync(join(layer, 'z.bin'), 'more');
      const { error } = await drainError(ls);
      changed(/z\.bin changed size after it was listed/)(error);
    });

    it('a file is added to the layer', async () => {
      const { layer, ls } = await paused('added');
      mkdirSync(join(layer, 'new'));
      const { error } = await drainError(ls);
      changed(/layers\/l changed while it was read/)(error);
    });
  });

  it('snapshotKey is the same for equal snapshots (any key order) and differs for dirOptions', async () => {
    const root = tmpDir('snap-key');
    makeDirImage(join(root, 'img'));
    const a = (await openSource('dir:img', { root })).snapshot;
    const b = (await openSource('dir:img', { root })).snapshot;
    const reordered = Object.fromEntries(Object.entries(a).reverse()) as unknown as SourceSnapshot;
    assert.equal(snapshotKey(a), snapshotKey(b));
    assert.equal(snapshotKey(a), snapshotKey(reordered));
    assert.match(snapshotKey(a), /^sha256:[0-9a-f]{64}$/);
    const keep = await openSource('dir:img', {
      root,
      dirOptions: { owners: 'keep', mtime: 'epoch' },
    });
    assert.notEqual(snapshotKey(keep.snapshot), snapshotKey(a));
    // reading through a snapshot with other options is refused, not silently mixed
    await assert.rejects(
      openSource('dir:img', {
        root,
        snapshot: a,
        dirOptions: { owners: 'keep', mtime: 'epoch' },
      }),
      (e: unknown) => e instanceof SourceError && e.field === 'dirOptions',
    );
    await assert.rejects(
      openSource('oci:img', { root, snapshot: a }),
      (e: unknown) => e instanceof SourceError && e.field === 'snapshot',
    );
  });
});
