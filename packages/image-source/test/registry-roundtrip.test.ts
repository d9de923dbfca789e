/**
 * Round trips through a REAL docker-registry: images read by image-source are
 * pushed with @ferry/registry-client, copied back by skopeo with
 * --preserve-digests and read again, with identical digests.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chownSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  MediaTypes,
  buildConfig,
  buildIndex,
  buildManifest,
  convertLayerMediaType,
  descriptorOf,
  type Descriptor,
  type ManifestFormat,
} from '@ferry/manifest';
import { RegistryClient, bufferBlobSource, type RepoRef } from '@ferry/registry-client';
import { openSource, SourceError, type OpenedSource, type SourceImage } from '@ferry/image-source';
import { startRegistry, type RegistryHandle } from '../../../test/helpers/registry';
import { skopeo, skopeoInspect } from '../../../test/helpers/skopeo';
import { tmpDir } from '../../../test/helpers/tmp';
import { SETCAP, capabilityOf, paxValue, requireSetcap } from './support/caps';
import { makeDirImage, sha256, writeOciImage, writeOciIndex, writeTree } from './support/images';
import { Parser, type ReadEntry } from 'tar';
import { gunzipSync } from 'node:zlib';

interface Pushed {
  manifest: Descriptor;
  layers: string[];
  diffIds: string[];
}

/** What the upload worker + coordinator do, in miniature. */
async function pushImage(
  client: RegistryClient,
  repo: RepoRef,
  img: SourceImage,
  format: ManifestFormat,
  tag?: string,
  opts: { asStored?: boolean } = {},
): Promise<Pushed> {
  const layers: Descriptor[] = [];
  const diffIds: string[] = [];
  for (const l of img.layers) {
    const r = await client.uploadBlob(
      repo,
      { open: (o) => l.open(o), ...(l.digest ? { digest: l.digest } : {}) },
      { chunkSize: 0 },
    );
    const done = await (await l.open(r.size)).done; // the layer's diffId from the same deterministic bytes
    assert.equal(done.digest, r.digest);
    layers.push({
      mediaType: convertLayerMediaType(l.mediaType, format),
      digest: r.digest,
      size: r.size,
    });
    diffIds.push(done.diffId);
  }
  let manifest: Descriptor;
  if (opts.asStored && img.manifestBytes) {
    const cfg = img.configBytes!;
    await client.uploadBlob(repo, bufferBlobSource(cfg, sha256(cfg)));
    const { digest } = await client.putManifest(
      repo,
      tag ?? img.manifestDigest!,
      img.manifestBytes,
      img.manifestMediaType!,
    );
    manifest = { mediaType: img.manifestMediaType!, digest, size: img.manifestBytes.length };
  } else {
    const config = img.configBytes
      ? {
          bytes: img.configBytes,
          digest: sha256(img.configBytes),
          size: img.configBytes.length,
          mediaType: format === 'oci' ? MediaTypes.ociConfig : MediaTypes.dockerConfig,
        }
      : buildConfig(img.configFields, diffIds, {
          history: img.layerNames?.map((n) => `ferry dir: layers/${n}`),
        });
    await client.uploadBlob(repo, bufferBlobSource(config.bytes, config.digest));
    const m = buildManifest(
      format,
      {
        ...descriptorOf(config),
        mediaType: format === 'oci' ? MediaTypes.ociConfig : MediaTypes.dockerConfig,
      },
      layers,
    );
    const { digest } = await client.putManifest(repo, tag ?? m.digest, m.bytes, m.mediaType);
    assert.equal(digest, m.digest);
    manifest = descriptorOf(m);
  }
  return { manifest, layers: layers.map((l) => l.digest), diffIds };
}

describe('@ferry/image-source round trip through a real registry', function () {
  this.timeout(180_000);
  let registry: RegistryHandle;
  let client: RegistryClient;
  let root: string;
  const repo = (repository: string): RepoRef => ({ registry: registry.host, repository });
  const tlsOff = ['--src-tls-verify=false'];

  before(async () => {
    registry = await startRegistry();
    client = new RegistryClient({
      allow: [registry.host],
      dockerConfigPath: registry.dockerConfigPath,
    });
    root = tmpDir('roundtrip');
  });
  after(async () => {
    await client?.close();
    await registry?.stop();
  });

  it('dir: pushed, copied back with skopeo --preserve-digests, read again: identical digests; a copy of the directory gives the same manifest digest', async () => {
    makeDirImage(join(root, 'app'), {
      config: { config: { Entrypoint: ['/app/main.js'], Env: ['A=1'] } },
    });
    const src = await openSource('dir:app', { root });
    const pushed = await pushImage(client, repo('rt/app'), src.images[0]!, 'oci', '1.0');

    const info = await skopeoInspect(`docker://${registry.host}/rt/app:1.0`);
    assert.equal(info.Digest, pushed.manifest.digest);
    assert.deepEqual(info.Layers, pushed.layers);
    const cfg = await skopeoInspect(`docker://${registry.host}/rt/app:1.0`, ['--config']);
    assert.deepEqual(cfg.rootfs.diff_ids, pushed.diffIds);
    assert.deepEqual(cfg.config.Entrypoint, ['/app/main.js']);

    const back = join(root, 'back');
    await skopeo([
      'copy',
      '--insecure-policy',
      '--preserve-digests',
      ...tlsOff,
      `docker://${registry.host}/rt/app:1.0`,
      `oci:${back}:1.0`,
    ]);
    const again = await openSource('oci:back:1.0', { root });
    assert.equal(again.images[0]!.manifestDigest, pushed.manifest.digest);
    assert.deepEqual(
      again.images[0]!.layers.map((l) => l.digest),
      pushed.layers,
    );
    assert.deepEqual(
      again.images[0]!.layers.map((l) => l.diffId),
      pushed.diffIds,
    );

    // the same directory copied elsewhere (other mtimes, other creation order) → the same manifest digest
    execFileSync('cp', ['-r', join(root, 'app'), join(root, 'app-copy')]); // cp -r: new mtimes
    execFileSync('touch', [
      '-d',
      '2030-01-01',
      join(root, 'app-copy', 'layers', '02-app', 'app', 'main.js'),
    ]);
    const copy = await openSource('dir:app-copy', { root });
    const pushed2 = await pushImage(client, repo('rt/app-copy'), copy.images[0]!, 'oci', '1.0');
    assert.equal(pushed2.manifest.digest, pushed.manifest.digest);
    const info2 = await skopeoInspect(`docker://${registry.host}/rt/app-copy:1.0`);
    assert.equal(info2.Digest, pushed.manifest.digest);

    // Docker schema2 from the same layers: skopeo reads it as well
    const asDocker = await pushImage(client, repo('rt/app-docker'), src.images[0]!, 'docker', 'v2');
    const raw = await skopeoInspect(`docker://${registry.host}/rt/app-docker:v2`, ['--raw']);
    assert.equal(raw.mediaType, MediaTypes.dockerManifest);
    assert.deepEqual(
      raw.layers.map((l: Descriptor) => l.digest),
      pushed.layers,
    );
    assert.notEqual(asDocker.manifest.digest, pushed.manifest.digest);
  });

  it('a symlink to /etc/passwd is pushed as a link: skopeo copies the image back and the layer holds a symlink entry, no content', async () => {
    writeTree(join(root, 'links', 'layers', '01'), {
      'etc/passwd': { symlink: '/etc/passwd' },
      'etc/motd': 'hello\n',
    });
    const src = await openSource('dir:links', { root });
    const pushed = await pushImage(client, repo('rt/links'), src.images[0]!, 'oci', 'v1');
    const back = join(root, 'links-back');
    await skopeo([
      'copy',
      '--insecure-policy',
      '--preserve-digests',
      ...tlsOff,
      `docker://${registry.host}/rt/links:v1`,
      `oci:${back}:v1`,
    ]);
    const blob = readFileSync(join(back, 'blobs', 'sha256', pushed.layers[0]!.slice(7)));
    const entries: { path: string; type: string; linkpath?: string; size: number }[] = [];
    await new Promise<void>((resolve, reject) => {
      const p = new Parser({
        onReadEntry: (e: ReadEntry) => {
          entries.push({ path: e.path, type: e.type, linkpath: e.linkpath, size: e.size });
          e.resume();
        },
      });
      p.on('end', () => resolve());
      p.on('error', reject);
      p.end(gunzipSync(blob));
    });
    const link = entries.find((e) => e.path === 'etc/passwd');
    assert.deepEqual(link, {
      path: 'etc/passwd',
      type: 'SymbolicLink',
      linkpath: '/etc/passwd',
      size: 0,
    });
    const passwd = readFileSync('/etc/passwd');
    assert.ok(!gunzipSync(blob).includes(passwd.subarray(0, Math.min(48, passwd.length))));
  });

  it('a dir: layer with a file capability and owners keep: skopeo copies it back and the layer tar still carries both', async function () {
    requireSetcap(this);
    writeTree(join(root, 'caps', 'layers', '01'), {
      'bin/ping': 'ping\n',
      'etc/shadow': 'secret\n',
    });
    const ping = join(root, 'caps', 'layers', '01', 'bin', 'ping');
    execFileSync(SETCAP, ['cap_net_raw+ep', ping]);
    chownSync(join(root, 'caps', 'layers', '01', 'etc', 'shadow'), 0, 42);
    const want = await capabilityOf(ping);
    const src = await openSource('dir:caps', {
      root,
      dirOptions: { owners: 'keep', mtime: 'epoch' },
    });
    const pushed = await pushImage(client, repo('rt/caps'), src.images[0]!, 'oci', 'v1');
    const back = join(root, 'caps-back');
    await skopeo([
      'copy',
      '--insecure-policy',
      '--preserve-digests',
      ...tlsOff,
      `docker://${registry.host}/rt/caps:v1`,
      `oci:${back}:v1`,
    ]);
    const tar = gunzipSync(readFileSync(join(back, 'blobs', 'sha256', pushed.layers[0]!.slice(7))));
    const got = paxValue(tar, 'SCHILY.xattr.security.capability');
    assert.ok(got?.equals(want), `capability ${got?.toString('hex')} vs ${want.toString('hex')}`);
    const owners: Record<string, [number?, number?]> = {};
    await new Promise<void>((resolve, reject) => {
      const p = new Parser({
        onReadEntry: (e: ReadEntry) => {
          owners[e.path] = [e.uid, e.gid];
          e.resume();
        },
      });
      p.on('end', () => resolve());
      p.on('error', reject);
      p.end(tar);
    });
    assert.deepEqual(owners['etc/shadow'], [0, 42]);
  });

  it('an OCI layout and a docker-archive made by skopeo push with the digests skopeo sees', async () => {
    makeDirImage(join(root, 'base'));
    const dirImg = (await openSource('dir:base', { root })).images[0]!;
    const mine = await writeOciImage(join(root, 'base-oci'), dirImg, { refName: 'v1' });
    await skopeo([
      'copy',
      '--insecure-policy',
      `oci:${join(root, 'base-oci')}:v1`,
      `oci:${join(root, 'sk-oci')}:v1`,
    ]);
    await skopeo([
      'copy',
      '--insecure-policy',
      `oci:${join(root, 'base-oci')}:v1`,
      `docker-archive:${join(root, 'sk.tar')}:rt/base:v1`,
    ]);

    const oci = await openSource('oci:sk-oci:v1', { root });
    const p1 = await pushImage(client, repo('rt/from-oci'), oci.images[0]!, 'oci', 'v1', {
      asStored: true,
    });
    assert.equal(p1.manifest.digest, oci.images[0]!.manifestDigest, 'stored manifest pushed as-is');
    assert.equal(p1.manifest.digest, mine.manifest.digest);
    assert.equal(
      (await skopeoInspect(`docker://${registry.host}/rt/from-oci:v1`)).Digest,
      p1.manifest.digest,
    );

    const arch = await openSource('docker-archive:sk.tar', { root });
    const p2 = await pushImage(client, repo('rt/from-archive'), arch.images[0]!, 'docker', 'v1');
    const info = await skopeoInspect(`docker://${registry.host}/rt/from-archive:v1`);
    assert.equal(info.Digest, p2.manifest.digest);
    assert.deepEqual(
      info.Layers,
      mine.layers.map((l) => l.digest),
      're-gzipped archive layers are the dir: layers',
    );
    const cfg = await skopeoInspect(`docker://${registry.host}/rt/from-archive:v1`, ['--config']);
    assert.deepEqual(
      cfg.rootfs.diff_ids,
      mine.layers.map((l) => l.diffId),
    );
  });

  it('a multi-platform OCI index is pushed as stored and skopeo lists both platforms', async () => {
    makeDirImage(join(root, 'mp'));
    const dirImg = (await openSource('dir:mp', { root })).images[0]!;
    const layout = join(root, 'mp-oci');
    const a = await writeOciImage(layout, dirImg, {
      platform: { os: 'linux', architecture: 'amd64' },
      writeIndex: false,
    });
    const b = await writeOciImage(layout, dirImg, {
      platform: { os: 'linux', architecture: 'arm64' },
      writeIndex: false,
    });
    const idx = await writeOciIndex(layout, [a.manifest, b.manifest], 'mp');
    const src: OpenedSource = await openSource('oci:mp-oci:mp', { root });
    for (const img of src.images)
      await pushImage(client, repo('rt/mp'), img, 'oci', undefined, { asStored: true });
    const { digest } = await client.putManifest(
      repo('rt/mp'),
      'mp',
      src.indexBytes!,
      src.indexMediaType!,
    );
    assert.equal(digest, idx.digest);
    const raw = await skopeoInspect(`docker://${registry.host}/rt/mp:mp`, ['--raw']);
    assert.deepEqual(
      raw.manifests.map((m: Descriptor) => m.platform!.architecture),
      ['amd64', 'arm64'],
    );
    const back = join(root, 'mp-back');
    await skopeo([
      'copy',
      '--all',
      '--insecure-policy',
      '--preserve-digests',
      ...tlsOff,
      `docker://${registry.host}/rt/mp:mp`,
      `oci:${back}:mp`,
    ]);
    const again = await openSource('oci:mp-back:mp', { root });
    assert.equal(again.indexDigest, idx.digest);
    assert.deepEqual(
      again.images.map((i) => i.manifestDigest),
      [a.manifest.digest, b.manifest.digest],
    );
    // a rebuilt index over the same manifests is canonical: same digest as the stored one
    assert.equal(buildIndex('oci', [a.manifest, b.manifest]).digest, idx.digest);
  });

  it('a tampered OCI blob fails the upload into a registry that does not hold it, and the registry never gets it', async () => {
    makeDirImage(join(root, 'tamper-src'), { big: 1_500_000 });
    const w = await writeOciImage(
      join(root, 'tamper'),
      (await openSource('dir:tamper-src', { root })).images[0]!,
      { refName: 't' },
    );
    const victim = w.layers[1]!;
    const p = join(root, 'tamper', 'blobs', 'sha256', victim.digest.slice(7));
    const bytes = readFileSync(p);
    bytes[bytes.length >> 1] ^= 0x40;
    writeFileSync(p, bytes);
    const src = await openSource('oci:tamper:t', { root });
    const layer = src.images[0]!.layers[1]!;
    assert.equal(await client.blobExists(repo('rt/tamper'), victim.digest), undefined);
    await assert.rejects(
      client.uploadBlob(
        repo('rt/tamper'),
        { open: (o) => layer.open(o), digest: layer.digest!, size: layer.size! },
        { chunkSize: 0 },
      ),
      (e: unknown) => {
        // the source's error reaches the caller as is: the stream failed before its end
        assert.ok(e instanceof SourceError, String(e));
        assert.equal(e.code, 'FERRY_BLOB_DIGEST_MISMATCH');
        assert.equal(e.field, victim.digest);
        return true;
      },
    );
    assert.equal(await client.blobExists(repo('rt/tamper'), victim.digest), undefined);
    // nor any blob with the tampered bytes' digest
    assert.equal(await client.blobExists(repo('rt/tamper'), sha256(bytes)), undefined);
  });
});
