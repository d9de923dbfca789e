import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import {
  linkSync,
  mkdirSync,
  readdirSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { Parser, type ReadEntry } from 'tar';
import { buildConfig } from '@ferry/manifest';
import {
  openSource,
  SAFE_OPEN_INSTALLED,
  SourceError,
  tarSource,
  walkLayer,
  type OpenedSource,
} from '@ferry/image-source';
import { tmpDir } from '../../../test/helpers/tmp';
import { drain, makeDirImage, sha256, textBytes, writeTree } from './support/images';

interface ListedEntry {
  path: string;
  type: string;
  size: number;
  mode: number;
  uid?: number;
  gid?: number;
  uname?: string;
  mtime?: Date;
  linkpath?: string;
  body: number;
  atime?: Date;
  ctime?: Date;
}

/** Lists a tar with the tar package's parser. */
async function listTar(tar: Buffer): Promise<ListedEntry[]> {
  const out: ListedEntry[] = [];
  await new Promise<void>((resolve, reject) => {
    const p = new Parser({
      onReadEntry: (e: ReadEntry) => {
        const item: ListedEntry = {
          path: e.path,
          type: e.type,
          size: e.size,
          mode: e.mode ?? 0,
          uid: e.uid,
          gid: e.gid,
          uname: e.uname,
          mtime: e.mtime,
          linkpath: e.linkpath,
          atime: e.atime,
          ctime: e.ctime,
          body: 0,
        };
        e.on('data', (c: Buffer) => (item.body += c.length));
        out.push(item);
      },
    });
    p.on('end', () => resolve());
    p.on('error', reject);
    p.end(tar);
  });
  return out;
}

async function layerDigests(
  src: OpenedSource,
): Promise<{ digest: string; diffId: string; size: number }[]> {
  const out = [];
  for (const l of src.images[0]!.layers) {
    const { result } = await drain(await l.open());
    out.push({ digest: result.digest, diffId: result.diffId, size: result.size });
  }
  return out;
}

/** Copies a tree creating entries in reverse order with other mtimes (a different machine/checkout). */
function copyReversed(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  const names = readdirSync(from).sort().reverse();
  for (const n of names) {
    const s = join(from, n);
    const d = join(to, n);
    const st = fs.lstatSync(s);
    if (st.isSymbolicLink()) symlinkSync(fs.readlinkSync(s), d);
    else if (st.isDirectory()) copyReversed(s, d);
    else {
      fs.copyFileSync(s, d);
      fs.chmodSync(d, st.mode & 0o7777);
    }
    if (!st.isSymbolicLink())
      utimesSync(d, new Date('2001-02-03T04:05:06Z'), new Date(Date.now() - 12345678));
  }
  fs.chmodSync(to, fs.statSync(from).mode & 0o7777);
}

describe('@ferry/image-source dir:', function () {
  this.timeout(60_000);

  it('gives byte-identical layers and config on every run and from a copy with other mtimes and creation order', async () => {
    const root = tmpDir('dir-det');
    makeDirImage(join(root, 'a'), { config: { config: { Entrypoint: ['/app/main.js'] } } });
    // a long path forces a PAX header: it must be deterministic too
    writeTree(join(root, 'a', 'layers', '02-app'), {
      [`deep/${'x'.repeat(120)}/file.txt`]: 'long\n',
    });
    copyReversed(join(root, 'a'), join(root, 'b'));
    const a1 = await layerDigests(await openSource(`dir:${join(root, 'a')}`, { root }));
    const a2 = await layerDigests(await openSource(`dir:${join(root, 'a')}`, { root }));
    const b = await layerDigests(await openSource(`dir:${join(root, 'b')}`, { root }));
    assert.equal(a1.length, 2);
    assert.deepEqual(a2, a1);
    assert.deepEqual(b, a1);
    assert.notEqual(a1[0]!.digest, a1[1]!.digest);
    const srcA = await openSource(`dir:${join(root, 'a')}`, { root });
    const srcB = await openSource(`dir:${join(root, 'b')}`, { root });
    const cfgA = buildConfig(
      srcA.images[0]!.configFields,
      a1.map((x) => x.diffId),
    );
    const cfgB = buildConfig(
      srcB.images[0]!.configFields,
      b.map((x) => x.diffId),
    );
    assert.equal(cfgA.digest, cfgB.digest);
    assert.deepEqual(JSON.parse(cfgA.bytes.toString()).config.Entrypoint, ['/app/main.js']);
    // a content change changes the digest (the test could fail)
    writeFileSync(join(root, 'b', 'layers', '02-app', 'app', 'main.js'), 'console.log("bye")\n');
    const b2 = await layerDigests(await openSource(`dir:${join(root, 'b')}`, { root }));
    assert.equal(b2[0]!.digest, a1[0]!.digest);
    assert.notEqual(b2[1]!.digest, a1[1]!.digest);
  });

  it('one pass yields digest, size and diffId that match the bytes; diffIdOnly agrees; gzip header has no timestamp', async () => {
    const root = tmpDir('dir-hash');
    makeDirImage(join(root, 'img'));
    for (const level of [1, 6, 9]) {
      const src = await openSource(`dir:${join(root, 'img')}`, { root, gzipLevel: level });
      const layer = src.images[0]!.layers[1]!;
      assert.equal(layer.digest, undefined);
      assert.equal(layer.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
      const { bytes, result } = await drain(await layer.open());
      assert.equal(result.digest, sha256(bytes));
      assert.equal(result.size, bytes.length);
      const tar = gunzipSync(bytes);
      assert.equal(result.diffId, sha256(tar));
      assert.equal(result.uncompressedSize, tar.length);
      assert.deepEqual(await layer.diffIdOnly(), {
        diffId: result.diffId,
        uncompressedSize: tar.length,
      });
      assert.deepEqual([...bytes.subarray(0, 4)], [0x1f, 0x8b, 8, 0]); // magic, deflate, no flags (no name)
      assert.equal(bytes.readUInt32LE(4), 0, 'gzip MTIME must be 0');
      assert.equal(bytes[9], 3, 'gzip OS byte must be 3 (Unix) on every run');
    }
  });

  it('open(offset) emits exactly the tail and still reports the digests of all bytes', async () => {
    const root = tmpDir('dir-off');
    makeDirImage(join(root, 'img'), { big: 3_000_000 });
    const layer = (await openSource(`dir:${join(root, 'img')}`, { root })).images[0]!.layers[1]!;
    const full = await drain(await layer.open());
    assert.ok(full.bytes.length > 100_000);
    for (const off of [
      0,
      1,
      65_536,
      131_073,
      Math.floor(full.bytes.length / 2),
      full.bytes.length - 1,
      full.bytes.length,
    ]) {
      const part = await drain(await layer.open(off));
      assert.equal(part.bytes.length, full.bytes.length - off, `offset ${off}`);
      assert.ok(part.bytes.equals(full.bytes.subarray(off)), `tail bytes from ${off}`);
      assert.deepEqual(part.result, full.result);
    }
    const past = await layer.open(full.bytes.length + 1);
    await assert.rejects(
      (async () => {
        for await (const _ of past.stream) void _;
      })(),
      (e: unknown) => e instanceof SourceError && e.code === 'FERRY_OFFSET_OUT_OF_RANGE',
    );
    await assert.rejects(layer.open(-1), /offset/);
  });

  it('output does not depend on the read size (chunking) of the tar producer', async () => {
    const root = tmpDir('dir-chunk');
    makeDirImage(join(root, 'img'), { big: 2_000_000 });
    const a = await drain(
      await (
        await openSource(`dir:${join(root, 'img')}`, { root, tarReadSize: 4096 })
      ).images[0]!.layers[1]!.open(),
    );
    const b = await drain(
      await (
        await openSource(`dir:${join(root, 'img')}`, { root, tarReadSize: 8 * 1024 * 1024 })
      ).images[0]!.layers[1]!.open(),
    );
    assert.ok(a.bytes.equals(b.bytes));
  });

  it('tars with sorted entries, fixed mtime (directories too), uid/gid 0, no user names, atime or ctime', async () => {
    const root = tmpDir('dir-tar');
    const layer = join(root, 'img', 'layers', 'l1');
    writeTree(layer, {
      'b/z.txt': 'z',
      'a.txt': 'a',
      'b/a.txt': 'ba',
      'B.txt': 'B',
      'c/': { dir: true },
    });
    writeTree(layer, { [`${'d'.repeat(90)}/${'e'.repeat(90)}.txt`]: 'long' });
    fs.chmodSync(join(layer, 'a.txt'), 0o751);
    const { bytes } = await drain(
      await (await openSource(`dir:${join(root, 'img')}`, { root })).images[0]!.layers[0]!.open(),
    );
    const entries = await listTar(gunzipSync(bytes));
    assert.deepEqual(
      entries.map((e) => e.path),
      [
        'B.txt',
        'a.txt',
        'b/',
        'b/a.txt',
        'b/z.txt',
        'c/',
        `${'d'.repeat(90)}/`,
        `${'d'.repeat(90)}/${'e'.repeat(90)}.txt`,
      ],
    );
    for (const e of entries) {
      assert.equal(e.mtime?.getTime(), 0, `${e.path} mtime`);
      assert.equal(e.uid, 0, `${e.path} uid`);
      assert.equal(e.gid, 0, `${e.path} gid`);
      assert.ok(!e.uname, `${e.path} uname`);
      assert.equal(e.atime, undefined);
      assert.equal(e.ctime, undefined);
    }
    assert.equal(entries.find((e) => e.path === 'a.txt')!.mode & 0o777, 0o751);
    assert.equal(entries.find((e) => e.path === 'b/')!.type, 'Directory');
    // the raw headers: no PAX atime/ctime records, numeric uid fields are explicit zeros
    const tar = gunzipSync(bytes);
    assert.ok(!tar.includes(Buffer.from('atime=')) && !tar.includes(Buffer.from('ctime=')));
    assert.match(tar.subarray(108, 116).toString('latin1'), /^0+ ?\0?$/); // uid: explicit octal zero
    assert.match(tar.subarray(116, 124).toString('latin1'), /^0+ ?\0?$/); // gid
  });

  it('stores a symlink to /etc/passwd as a link and never opens its target', async () => {
    const root = tmpDir('dir-link');
    const outside = tmpDir('dir-link-outside');
    const fifo = join(outside, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const layer = join(root, 'img', 'layers', 'l1');
    writeTree(layer, {
      'etc/passwd': { symlink: '/etc/passwd' },
      // opening a FIFO without a writer blocks forever: following this link would hang the test
      'etc/fifo-link': { symlink: fifo },
      'etc/dangling': { symlink: '/nonexistent/target' },
      'etc/rel': { symlink: '../etc/passwd' },
      'etc/hosts.local': 'a real file\n',
    });
    // the CommonJS fs module object the tar package calls into (the ESM namespace is read-only)
    const fsMod = require('node:fs') as Record<string, unknown> & {
      promises: Record<string, unknown>;
    };
    const opened: string[] = [];
    const spied = ['open', 'openSync', 'readFile', 'readFileSync', 'createReadStream'] as const;
    const originals = spied.map((k) => fsMod[k]);
    const promOpen = fsMod.promises.open;
    spied.forEach((k, i) => {
      fsMod[k] = function (this: unknown, p: unknown, ...rest: unknown[]) {
        opened.push(String(p));
        return (originals[i] as (...a: unknown[]) => unknown).call(this, p, ...rest);
      };
    });
    fsMod.promises.open = (p: fs.PathLike, ...rest: unknown[]) => {
      opened.push(String(p));
      return (promOpen as (...a: unknown[]) => unknown)(p, ...rest);
    };
    let bytes: Buffer;
    try {
      const src = await openSource(`dir:${join(root, 'img')}`, { root });
      bytes = (await drain(await src.images[0]!.layers[0]!.open())).bytes;
    } finally {
      spied.forEach((k, i) => (fsMod[k] = originals[i]));
      fsMod.promises.open = promOpen;
    }
    // the spy works: regular files of other layers would show up (the layer has none, so nothing is opened)
    assert.ok(
      opened.some((p) => p.endsWith('etc/hosts.local')),
      `the spy saw no open at all: ${opened.join(', ')}`,
    );
    assert.ok(
      !opened.some((p) => p.includes('/etc/passwd') || p.includes('fifo')),
      `opened: ${opened.join(', ')}`,
    );
    const entries = await listTar(gunzipSync(bytes));
    const pw = entries.find((e) => e.path === 'etc/passwd')!;
    assert.equal(pw.type, 'SymbolicLink');
    assert.equal(pw.linkpath, '/etc/passwd');
    assert.equal(pw.size, 0);
    assert.equal(pw.body, 0);
    assert.equal(entries.find((e) => e.path === 'etc/fifo-link')!.linkpath, fifo);
    assert.equal(entries.find((e) => e.path === 'etc/dangling')!.type, 'SymbolicLink');
    assert.equal(entries.find((e) => e.path === 'etc/rel')!.linkpath, '../etc/passwd');
    // and the content of /etc/passwd is nowhere in the layer
    const passwd = fs.readFileSync('/etc/passwd');
    assert.ok(!gunzipSync(bytes).includes(passwd.subarray(0, Math.min(64, passwd.length))));
  });

  it('a file swapped for a symlink (or another file) after it was listed is refused, never followed', async () => {
    assert.ok(SAFE_OPEN_INSTALLED, 'the tar package open step must be replaceable');
    const root = tmpDir('dir-race');
    const outside = tmpDir('dir-race-out');
    const fifo = join(outside, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const layer = join(root, 'l');
    writeTree(layer, { 'a.txt': 'aaaa', 'b.txt': 'bbbb', 'c.txt': 'cccc', 'd.txt': 'dddd' });
    const run = async (): Promise<Error | undefined> => {
      const walk = await walkLayer(layer, 'l');
      // the race: swap after listing, before tar opens the file
      rmSync(join(layer, 'a.txt'));
      symlinkSync('/etc/passwd', join(layer, 'a.txt'));
      return new Promise((resolve) => {
        tarSource(layer, walk, 'l').start(
          () => undefined,
          () => resolve(undefined),
          (e) => resolve(e),
        );
      });
    };
    const e1 = await run();
    assert.ok(e1 instanceof SourceError, String(e1));
    assert.match(e1.message, /became a symlink after it was listed/);
    // a symlink to a FIFO: following it would block forever; refused at once
    rmSync(join(layer, 'a.txt'));
    writeFileSync(join(layer, 'a.txt'), 'aaaa');
    const walk2 = await walkLayer(layer, 'l');
    rmSync(join(layer, 'b.txt'));
    symlinkSync(fifo, join(layer, 'b.txt'));
    const e2 = await new Promise<Error | undefined>((resolve) =>
      tarSource(layer, walk2, 'l').start(
        () => undefined,
        () => resolve(undefined),
        resolve,
      ),
    );
    assert.match(String(e2), /became a symlink/);
    // a file replaced by another file (new inode) after listing
    rmSync(join(layer, 'b.txt'));
    writeFileSync(join(layer, 'b.txt'), 'bbbb');
    const walk3 = await walkLayer(layer, 'l');
    rmSync(join(layer, 'c.txt'));
    writeFileSync(join(layer, 'c.txt'), 'CCCC');
    const e3 = await new Promise<Error | undefined>((resolve) =>
      tarSource(layer, walk3, 'l').start(
        () => undefined,
        () => resolve(undefined),
        resolve,
      ),
    );
    // a new file may get the freed inode number back: then its ctime tells the change
    assert.ok(e3 instanceof SourceError && e3.code === 'FERRY_SOURCE_CHANGED', String(e3));
    assert.match(e3.message, /c\.txt (was replaced|changed) after it was listed/);
    // unchanged: fine
    const walk4 = await walkLayer(layer, 'l');
    const e4 = await new Promise<Error | undefined>((resolve) =>
      tarSource(layer, walk4, 'l').start(
        () => undefined,
        () => resolve(undefined),
        resolve,
      ),
    );
    assert.equal(e4, undefined);
  });

  it('a directory swapped for a symlink out of the root after listing: the opened descriptor is refused', async () => {
    const root = tmpDir('dir-race2');
    const outside = tmpDir('dir-race2-out');
    writeFileSync(join(outside, 'file'), 'secret outside the root');
    const layer = join(root, 'l');
    mkdirSync(join(layer, 'sub'), { recursive: true });
    // the same inode inside and outside: the inode check alone cannot tell them apart
    linkSync(join(outside, 'file'), join(layer, 'sub', 'file'));
    const walk = await walkLayer(layer, 'l');
    rmSync(join(layer, 'sub'), { recursive: true });
    symlinkSync(outside, join(layer, 'sub'));
    const realRoot = fs.realpathSync(root);
    const err = await new Promise<Error | undefined>((resolve) =>
      tarSource(layer, walk, 'l', { realRoot }).start(
        () => undefined,
        () => resolve(undefined),
        resolve,
      ),
    );
    assert.ok(err instanceof SourceError, String(err));
    assert.equal(err.code, 'FERRY_SOURCE_OUTSIDE_ROOT', err.message);
    assert.match(err.message, /outside the source root/);
  });

  it('stores hard links as links, skips sockets and FIFOs with a warning', async () => {
    const root = tmpDir('dir-special');
    const layer = join(root, 'img', 'layers', 'l1');
    writeTree(layer, { 'a/original': textBytes(5000) });
    linkSync(join(layer, 'a/original'), join(layer, 'z-hardlink'));
    execFileSync('mkfifo', [join(layer, 'a/pipe')]);
    const server = createServer();
    await new Promise<void>((r) => server.listen(join(layer, 'sock'), r));
    try {
      const warnings: string[] = [];
      const src = await openSource(`dir:${join(root, 'img')}`, {
        root,
        onWarning: (m) => warnings.push(m),
      });
      const { bytes } = await drain(await src.images[0]!.layers[0]!.open());
      const entries = await listTar(gunzipSync(bytes));
      assert.deepEqual(
        entries.map((e) => e.path),
        ['a/', 'a/original', 'z-hardlink'],
      );
      const link = entries.find((e) => e.path === 'z-hardlink')!;
      assert.equal(link.type, 'Link');
      assert.equal(link.linkpath, 'a/original');
      assert.equal(link.body, 0);
      assert.equal(entries.find((e) => e.path === 'a/original')!.body, 5000);
      assert.ok(
        warnings.some((w) => /FIFO a\/pipe/.test(w)),
        warnings.join('\n'),
      );
      assert.ok(
        warnings.some((w) => /socket sock/.test(w)),
        warnings.join('\n'),
      );
    } finally {
      server.close();
    }
  });

  it('refuses file names tar cannot represent (not UTF-8) with a clear error', async () => {
    const root = tmpDir('dir-name');
    const layer = join(root, 'img', 'layers', 'l1');
    mkdirSync(layer, { recursive: true });
    fs.writeFileSync(
      Buffer.concat([Buffer.from(layer + '/bad-'), Buffer.from([0xff, 0xfe]), Buffer.from('.txt')]),
      'x',
    );
    // refused when the source is opened (its listing is taken then), before any push is accepted
    await assert.rejects(openSource(`dir:${join(root, 'img')}`, { root }), (e: unknown) => {
      assert.ok(e instanceof SourceError);
      assert.equal(e.code, 'FERRY_UNSUPPORTED_FILE');
      assert.match(e.message, /bad-\\xff\\xfe\.txt.*not valid UTF-8/);
      return true;
    });
  });

  it('reads only below the root: sources and layer directories that escape are refused', async () => {
    const root = tmpDir('dir-root');
    const outside = tmpDir('dir-outside');
    makeDirImage(join(outside, 'img'));
    makeDirImage(join(root, 'img'));
    symlinkSync(join(outside, 'img', 'layers', '01-base'), join(root, 'img', 'layers', '03-evil'));
    symlinkSync(join(outside, 'img'), join(root, 'img-link'));
    const code = (c: string) => (e: unknown) => e instanceof SourceError && e.code === c;
    await assert.rejects(
      openSource(`dir:${join(root, 'img')}`, { root }),
      code('FERRY_SOURCE_OUTSIDE_ROOT'),
    );
    await assert.rejects(
      openSource(`dir:${join(root, 'img-link')}`, { root }),
      code('FERRY_SOURCE_OUTSIDE_ROOT'),
    );
    await assert.rejects(
      openSource(`dir:${join(outside, 'img')}`, { root }),
      code('FERRY_SOURCE_OUTSIDE_ROOT'),
    );
    await assert.rejects(
      openSource(`dir:${root}/../x`, { root }),
      code('FERRY_SOURCE_OUTSIDE_ROOT'),
    );
    await assert.rejects(
      openSource(`dir:${join(root, 'nope')}`, { root }),
      code('FERRY_SOURCE_NOT_FOUND'),
    );
    rmSync(join(root, 'img', 'layers', '03-evil'));
    // a relative path is taken from the root
    const ok = await openSource('dir:img', { root });
    assert.equal(ok.images[0]!.layers.length, 2);
    // a config.json symlinked outside the root is refused too
    symlinkSync('/etc/passwd', join(root, 'img', 'config.json'));
    await assert.rejects(openSource('dir:img', { root }), code('FERRY_SOURCE_OUTSIDE_ROOT'));
  });

  it('validates layout, config.json and platform', async () => {
    const root = tmpDir('dir-bad');
    mkdirSync(join(root, 'nolayers'));
    await assert.rejects(openSource('dir:nolayers', { root }), /no layers\/ directory/);
    mkdirSync(join(root, 'empty', 'layers'), { recursive: true });
    await assert.rejects(openSource('dir:empty', { root }), /no layer directories/);
    makeDirImage(join(root, 'cfg'));
    writeFileSync(join(root, 'cfg', 'config.json'), '{not json');
    await assert.rejects(openSource('dir:cfg', { root }), /config.json is not valid JSON/);
    writeFileSync(join(root, 'cfg', 'config.json'), JSON.stringify({ config: { Cmd: 'ls' } }));
    await assert.rejects(
      openSource('dir:cfg', { root }),
      (e: unknown) => e instanceof SourceError && /config\.Cmd/.test(e.message),
    );
    writeFileSync(
      join(root, 'cfg', 'config.json'),
      JSON.stringify({ architecture: 'arm64', os: 'linux' }),
    );
    const src = await openSource('dir:cfg', { root });
    assert.deepEqual(src.images[0]!.platform, { os: 'linux', architecture: 'arm64' });
    await assert.rejects(
      openSource('dir:cfg', { root, platform: 'linux/amd64' }),
      (e: unknown) => e instanceof SourceError && e.code === 'FERRY_PLATFORM_NOT_FOUND',
    );
    await assert.rejects(
      openSource('dir:cfg', { root, platform: 'nonsense' }),
      (e: unknown) => e instanceof SourceError && e.field === 'platform',
    );
    await assert.rejects(openSource('dir:cfg', { root, gzipLevel: 11 }), /gzip level/);
    writeFileSync(join(root, 'cfg', 'layers', 'stray-file'), 'x');
    await assert.rejects(openSource('dir:cfg', { root }), /layers\/stray-file is not a directory/);
  });

  it('an empty layer directory is a valid empty tar', async () => {
    const root = tmpDir('dir-empty');
    mkdirSync(join(root, 'img', 'layers', 'empty'), { recursive: true });
    const layer = (await openSource('dir:img', { root })).images[0]!.layers[0]!;
    const { bytes, result } = await drain(await layer.open());
    const tar = gunzipSync(bytes);
    assert.equal(tar.length, 1024);
    assert.ok(tar.every((b) => b === 0));
    assert.equal(result.diffId, sha256(tar));
    assert.deepEqual(await listTar(tar), []);
  });

  it('a reader that stops early: the rest of a big file is never read (files closed at once)', async () => {
    const root = tmpDir('dir-cancel');
    const size = 64 * 1024 * 1024;
    writeTree(join(root, 'img', 'layers', 'l'), { 'big.bin': randomBytes(size) });
    const rchar = (): number =>
      Number(/rchar:\s+(\d+)/.exec(fs.readFileSync('/proc/self/io', 'utf8'))![1]);
    const fds = () => readdirSync('/proc/self/fd').length;
    const layer = (await openSource('dir:img', { root })).images[0]!.layers[0]!;
    const before = fds();
    const read0 = rchar();
    const ls = await layer.open();
    let got = 0;
    for await (const c of ls.stream) {
      got += (c as Buffer).length;
      if (got > 1024 * 1024) break;
    }
    await assert.rejects(
      ls.done,
      (e: unknown) => e instanceof SourceError && e.code === 'FERRY_STREAM_ABORTED',
    );
    for (let i = 0; i < 100 && fds() > before; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(fds(), before, 'every file descriptor closed');
    await new Promise((r) => setTimeout(r, 200));
    const readBytes = rchar() - read0;
    assert.ok(
      readBytes < size / 2,
      `read ${readBytes} bytes of a ${size}-byte file after stopping at 1 MiB`,
    );
  });

  it('a reader that stops early gets a rejected done and no descriptor stays open', async () => {
    const root = tmpDir('dir-abort');
    makeDirImage(join(root, 'img'), { big: 20_000_000 });
    const fds = () => readdirSync('/proc/self/fd').length;
    const before = fds();
    const layer = (await openSource('dir:img', { root })).images[0]!.layers[1]!;
    const ls = await layer.open();
    let got = 0;
    for await (const c of ls.stream) {
      got += (c as Buffer).length;
      if (got > 100_000) break; // destroys the stream
    }
    await assert.rejects(
      ls.done,
      (e: unknown) => e instanceof SourceError && e.code === 'FERRY_STREAM_ABORTED',
    );
    for (let i = 0; i < 100 && fds() > before; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(fds(), before);
  });
});
