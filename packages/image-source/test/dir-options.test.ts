/**
 * dir: layers keep what the files carry: file capabilities always (PAX
 * SCHILY.xattr.security.capability), owners and mtimes on request.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chownSync, mkdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { Parser, type ReadEntry } from 'tar';
import { openSource, SourceError, type DirOptions } from '@ferry/image-source';
import { tmpDir } from '../../../test/helpers/tmp';
import { SETCAP, capabilityOf, paxValue, requireSetcap } from './support/caps';
import { drain, writeTree } from './support/images';

interface Listed {
  path: string;
  uid?: number;
  gid?: number;
  mtime?: Date;
}

async function listTar(tar: Buffer): Promise<Listed[]> {
  const out: Listed[] = [];
  await new Promise<void>((resolve, reject) => {
    const p = new Parser({
      onReadEntry: (e: ReadEntry) => {
        out.push({ path: e.path, uid: e.uid, gid: e.gid, mtime: e.mtime });
        e.resume();
      },
    });
    p.on('end', () => resolve());
    p.on('error', reject);
    p.end(tar);
  });
  return out;
}

async function layerTar(root: string, dirOptions?: DirOptions): Promise<Buffer> {
  const src = await openSource('dir:img', { root, ...(dirOptions ? { dirOptions } : {}) });
  return gunzipSync((await drain(await src.images[0]!.layers[0]!.open())).bytes);
}

describe('@ferry/image-source dir: capabilities, owners, mtimes', function () {
  this.timeout(60_000);

  it('a file capability (setcap cap_net_raw+ep) is stored as PAX SCHILY.xattr.security.capability with the same bytes; GNU tar restores it', async function () {
    requireSetcap(this);
    const root = tmpDir('caps');
    const layer = join(root, 'img', 'layers', 'l');
    writeTree(layer, { 'bin/ping': 'not really ping\n', 'bin/plain': 'no caps\n' });
    execFileSync(SETCAP, ['cap_net_raw+ep', join(layer, 'bin/ping')]);
    const want = await capabilityOf(join(layer, 'bin/ping'));
    assert.ok(want.length >= 20, 'setcap wrote a capability');

    const tar = await layerTar(root);
    const got = paxValue(tar, 'SCHILY.xattr.security.capability');
    assert.ok(got, 'the layer tar has the capability record');
    assert.ok(got.equals(want), `${got.toString('hex')} vs ${want.toString('hex')}`);
    // exactly one: bin/plain has none
    const first = tar.indexOf('SCHILY.xattr.security.capability=');
    assert.equal(tar.indexOf('SCHILY.xattr.security.capability=', first + 1), -1);

    // a tool nobody here wrote: GNU tar extracts it with the capability
    const out = tmpDir('caps-x');
    writeFileSync(join(out, 'layer.tar'), tar);
    mkdirSync(join(out, 'x'));
    execFileSync('tar', [
      '--xattrs',
      '--xattrs-include=security.capability',
      '-xf',
      join(out, 'layer.tar'),
      '-C',
      join(out, 'x'),
    ]);
    const shown = execFileSync('/usr/sbin/getcap', [join(out, 'x', 'bin', 'ping')]).toString();
    assert.match(shown, /cap_net_raw[=+]ep/);
    assert.ok((await capabilityOf(join(out, 'x', 'bin', 'ping'))).equals(want));
    assert.equal(execFileSync('/usr/sbin/getcap', [join(out, 'x', 'bin', 'plain')]).toString(), '');
  });

  it('owners: 0:0 by default, each file its numeric uid/gid with owners keep', async () => {
    const root = tmpDir('owners');
    const layer = join(root, 'img', 'layers', 'l');
    writeTree(layer, { 'etc/shadow': 'x', 'etc/hosts': 'y' });
    chownSync(join(layer, 'etc/shadow'), 1234, 5678);
    chownSync(join(layer, 'etc'), 42, 43);
    const def = await listTar(await layerTar(root));
    for (const e of def) assert.deepEqual([e.uid, e.gid], [0, 0], e.path);
    const keep = await listTar(await layerTar(root, { owners: 'keep', mtime: 'epoch' }));
    const by = (p: string) => keep.find((e) => e.path === p)!;
    assert.deepEqual([by('etc/shadow').uid, by('etc/shadow').gid], [1234, 5678]);
    assert.deepEqual([by('etc/').uid, by('etc/').gid], [42, 43]);
    assert.deepEqual([by('etc/hosts').uid, by('etc/hosts').gid], [0, 0]); // we are root
    // and what GNU tar reads
    const dir = tmpDir('owners-x');
    writeFileSync(join(dir, 'l.tar'), await layerTar(root, { owners: 'keep', mtime: 'epoch' }));
    assert.match(
      execFileSync('tar', ['-tvf', join(dir, 'l.tar'), '--numeric-owner']).toString(),
      /1234\/5678 .* etc\/shadow/,
    );
  });

  it('mtime: epoch by default, each entry its own whole seconds with keep, a fixed second when given (directories too)', async () => {
    const root = tmpDir('mtimes');
    const layer = join(root, 'img', 'layers', 'l');
    writeTree(layer, { 'd/f.txt': 'f', 'g.txt': 'g' });
    utimesSync(join(layer, 'd/f.txt'), 1_600_000_000, 1_600_000_000.75);
    utimesSync(join(layer, 'g.txt'), 1_500_000_000, 1_500_000_000);
    utimesSync(join(layer, 'd'), 1_400_000_000, 1_400_000_000);
    const secs = (l: Listed[]) =>
      Object.fromEntries(l.map((e) => [e.path, e.mtime!.getTime() / 1000]));
    assert.deepEqual(secs(await listTar(await layerTar(root))), {
      'd/': 0,
      'd/f.txt': 0,
      'g.txt': 0,
    });
    assert.deepEqual(secs(await listTar(await layerTar(root, { owners: 'root', mtime: 'keep' }))), {
      'd/': 1_400_000_000,
      'd/f.txt': 1_600_000_000,
      'g.txt': 1_500_000_000,
    });
    assert.deepEqual(
      secs(await listTar(await layerTar(root, { owners: 'root', mtime: 1_700_000_000 }))),
      { 'd/': 1_700_000_000, 'd/f.txt': 1_700_000_000, 'g.txt': 1_700_000_000 },
    );
    await assert.rejects(
      openSource('dir:img', { root, dirOptions: { owners: 'root', mtime: -1 } }),
      (e: unknown) => e instanceof SourceError && e.field === 'dirOptions.mtime',
    );
    await assert.rejects(
      openSource('dir:img', {
        root,
        dirOptions: { owners: 'nobody', mtime: 'epoch' } as unknown as DirOptions,
      }),
      (e: unknown) => e instanceof SourceError && e.field === 'dirOptions.owners',
    );
  });
});
