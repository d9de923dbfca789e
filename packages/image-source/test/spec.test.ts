import assert from 'node:assert/strict';
import { mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import {
  compressedDigestCacheKey,
  parseSource,
  resolveInsideRoot,
  SourceError,
  ZLIB_VERSION,
  zlibIdentity,
  ADAPTIVE_GZIP_SCHEME,
  formatSource,
} from '@ferry/image-source';
import { tmpDir } from '../../../test/helpers/tmp';

const bad = (s: string, re: RegExp) =>
  assert.throws(
    () => parseSource(s),
    (e: unknown) => {
      assert.ok(e instanceof SourceError);
      assert.equal(e.code, 'FERRY_BAD_SOURCE');
      assert.equal(e.field, 'source');
      assert.match(e.message, re);
      return true;
    },
  );

describe('@ferry/image-source parseSource / resolveInsideRoot', () => {
  it('parses skopeo transport syntax', () => {
    assert.deepEqual(parseSource('oci:/srv/images/app:1.0'), {
      transport: 'oci',
      path: '/srv/images/app',
      ref: '1.0',
    });
    assert.deepEqual(parseSource('oci:/srv/images/app'), {
      transport: 'oci',
      path: '/srv/images/app',
    });
    assert.deepEqual(parseSource('oci:rel/app:my/name:tag'), {
      transport: 'oci',
      path: 'rel/app',
      ref: 'my/name:tag',
    });
    assert.deepEqual(parseSource('docker-archive:/x/a.tar:busybox:latest'), {
      transport: 'docker-archive',
      path: '/x/a.tar',
      ref: 'busybox:latest',
    });
    assert.deepEqual(parseSource('docker-archive:/x/a.tar:@1'), {
      transport: 'docker-archive',
      path: '/x/a.tar',
      ref: '@1',
    });
    assert.deepEqual(parseSource('dir:/x/with:colon'), { transport: 'dir', path: '/x/with:colon' });
    assert.equal(formatSource(parseSource('oci:/a:b')), 'oci:/a:b');
  });
  it('refuses malformed sources with clear errors', () => {
    bad('', /non-empty/);
    bad('/srv/images/app', /no transport/);
    bad('docker://busybox', /names no registry host/);
    bad('oci:', /needs a PATH/);
    bad('oci::ref', /needs a PATH/);
    bad('oci:/a:', /empty REF/);
    bad('oci:/a:bad ref', /not a valid oci reference/);
    bad('docker-archive:/a.tar:UPPER:tag', /not a valid docker-archive reference/);
    bad('dir:', /needs a PATH/);
    bad('dir:/a\0b', /NUL/);
  });
  it('resolveInsideRoot follows symlinks and refuses escapes', async () => {
    const root = tmpDir('spec-root');
    const out = tmpDir('spec-out');
    mkdirSync(join(root, 'in'));
    symlinkSync(out, join(root, 'escape'));
    symlinkSync(join(root, 'in'), join(root, 'inner-link'));
    assert.equal(await resolveInsideRoot(root, 'in'), join(root, 'in'));
    assert.equal(await resolveInsideRoot(root, join(root, 'inner-link')), join(root, 'in'));
    const code = (c: string) => (e: unknown) => e instanceof SourceError && e.code === c;
    await assert.rejects(resolveInsideRoot(root, 'escape'), code('FERRY_SOURCE_OUTSIDE_ROOT'));
    // a missing file behind an escaping symlink is "outside", not "missing": no probing outside the root
    await assert.rejects(resolveInsideRoot(root, 'escape/x'), code('FERRY_SOURCE_OUTSIDE_ROOT'));
    await assert.rejects(resolveInsideRoot(root, 'in/missing'), code('FERRY_SOURCE_NOT_FOUND'));
    await assert.rejects(resolveInsideRoot(root, '../'), code('FERRY_SOURCE_OUTSIDE_ROOT'));
    await assert.rejects(resolveInsideRoot(root, '/etc/passwd'), code('FERRY_SOURCE_OUTSIDE_ROOT'));
    await assert.rejects(
      resolveInsideRoot(join(root, 'missing-root'), 'x'),
      code('FERRY_SOURCE_NOT_FOUND'),
    );
    // a root that is itself a symlink works
    symlinkSync(root, join(out, 'root-link'));
    assert.equal(await resolveInsideRoot(join(out, 'root-link'), 'in'), join(root, 'in'));
  });
  it('the compressed-digest cache key names diffId, level and zlib version', () => {
    assert.equal(ZLIB_VERSION, process.versions.zlib);
    const k = compressedDigestCacheKey('sha256:' + 'a'.repeat(64), 1);
    assert.ok(k.includes('gzip-1') && k.includes(ZLIB_VERSION) && k.startsWith('sha256:aaa'));
    assert.notEqual(k, compressedDigestCacheKey('sha256:' + 'a'.repeat(64), 6));
    // the zlib identity fingerprints the deflate output and names the stored-block scheme:
    // stable, and level-specific
    assert.match(
      zlibIdentity(6),
      new RegExp(
        `^${ZLIB_VERSION.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\+[0-9a-f]{12}\\+${ADAPTIVE_GZIP_SCHEME}$`,
      ),
    );
    assert.equal(zlibIdentity(6), zlibIdentity(6));
    assert.notEqual(zlibIdentity(1), zlibIdentity(6));
    assert.ok(k.endsWith(zlibIdentity(1)));
  });
});
