/**
 * The API's opening of a pinned source handed to the workers of the same
 * process (`ferry serve`): offerOpenedSource seeds the shared SourceCache, so
 * a worker's open of that pin takes it without reading the source again; a
 * process without worker roles keeps nothing.
 */
import assert from 'node:assert/strict';
import { renameSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig } from '@ferry/config';
import { openSource, snapshotKey } from '@ferry/image-source';
import { offerOpenedSource, sharedSourceCache, type SourceRef } from '../src';
import { makeDirImage } from '../../image-source/test/support/images';
import { tmpDir } from '../../../test/helpers/tmp';

describe('runtime: the API offers its opening of a pinned source to the workers of its process', () => {
  it("a worker's open of the pin takes the offered opening (the source is not read again)", async () => {
    const root = tmpDir('offer');
    makeDirImage(join(root, 'img'));
    const config = loadConfig({ FERRY_SOURCE_ROOT: root, FERRY_REGISTRY_ALLOW: '127.0.0.1' });
    const dirOptions = { owners: 'root', mtime: 'epoch' } as const;
    const opened = await openSource('dir:img', { root, gzipLevel: 6, dirOptions });
    const ref: SourceRef = {
      source: `dir:${opened.realPath}`,
      pin: {
        key: snapshotKey(opened.snapshot),
        snapshot: opened.snapshot as unknown as Record<string, unknown>,
      },
      gzipLevel: 6,
      dirOptions,
    };

    // No worker role in this process yet: nothing is kept.
    offerOpenedSource(config, ref, opened);
    const cache = sharedSourceCache(config);
    // The source moves away: only a kept opening can still answer for the pin.
    renameSync(join(root, 'img'), join(root, 'gone'));
    await assert.rejects(cache.open(ref), /does not exist|FERRY_SOURCE/);

    // With a worker's cache in this process, the offered opening is what the worker gets.
    renameSync(join(root, 'gone'), join(root, 'img'));
    offerOpenedSource(config, ref, opened);
    renameSync(join(root, 'img'), join(root, 'gone'));
    assert.equal(await cache.open(ref), opened);
    // Another pin (other options) is not served from it.
    await assert.rejects(cache.open({ ...ref, gzipLevel: 1 }), /does not exist|FERRY_SOURCE/);
  });
});
