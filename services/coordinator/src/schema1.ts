/**
 * schema1: the seed's format. A Docker schema1 manifest names its tag inside
 * the signed payload, so each tag gets its own manifest, signature and digest
 * (the digest of the canonical payload, as the registry computes it). Built
 * from the image's config and layer digests (fsLayers top to root, v1
 * history chained as Docker derived it — @ferry/signing), signed as libtrust
 * does with the coordinator's key (ES256 / RS256, `jwk` or the x5c chain of
 * FERRY_SIGNING_CERT), PUT by digest, signed with cosign / OpenPGP when asked,
 * and only then tagged (by the caller).
 */
import type { OpenedSource } from '@ferry/image-source';
import { canonicalOf, parseManifest } from '@ferry/manifest';
import type { PushRequest } from '@ferry/queue';
import { bufferBlobSource, type RepoRef } from '@ferry/registry-client';
import { PermanentError, type LayerOutcome } from '@ferry/runtime';
import { buildSchema1Manifest, signSchema1 } from '@ferry/signing';
import { assembleImage } from './images';
import type { CoordinatorDeps, Pushed } from './index';
import { signPushed } from './signer';

export async function pushSchema1(
  deps: CoordinatorDeps,
  pushId: string,
  request: PushRequest,
  repo: RepoRef,
  opened: OpenedSource,
  results: Map<string, LayerOutcome>,
  tags: string[],
): Promise<Pushed[]> {
  const { ctx, client } = deps;
  const key = deps.signer?.key;
  if (!key) {
    throw new PermanentError(
      'FERRY_SIGNING_NOT_CONFIGURED',
      'a schema1 manifest is signed: the coordinator has no FERRY_SIGNING_KEY',
    );
  }
  if (opened.images.length !== 1 || opened.indexBytes) {
    throw new PermanentError(
      'FERRY_SCHEMA1_UNSUPPORTED',
      'schema1 has no multi-platform form: push one platform (platform) or leave schema1 out',
    );
  }
  const { config, manifest } = assembleImage(opened.images[0], 0, results, 'docker');
  const layers = (parseManifest(manifest.bytes, manifest.mediaType).layers ?? []).map(
    (l) => l.digest,
  );
  const out: Pushed[] = [];
  for (const tag of tags) {
    const unsigned = buildSchema1Manifest({
      name: repo.repository,
      tag,
      config: config.bytes,
      layers,
    });
    for (const blob of unsigned.blobs) {
      if (await client.blobExists(repo, blob.digest)) continue;
      await client.uploadBlob(repo, bufferBlobSource(blob.bytes, blob.digest), {
        monolithic: true,
      });
    }
    const signed = signSchema1(unsigned.bytes, key, {
      ...(deps.signer?.certChain ? { certChain: deps.signer.certChain } : {}),
    });
    // By digest first (the registry verifies the JWS and answers the payload's digest), tag later.
    await client.putManifest(repo, signed.digest, signed.bytes, signed.mediaType);
    const top = { ...canonicalOf(signed.bytes, signed.mediaType), digest: signed.digest };
    await ctx.store.appendEvent(pushId, {
      type: 'manifest',
      digest: signed.digest,
      mediaType: signed.mediaType,
      size: signed.bytes.length,
    });
    await ctx.store.appendEvent(pushId, {
      type: 'signature',
      kind: 'schema1',
      digest: signed.digest,
    });
    const signatures = await signPushed(ctx, client, deps.signer ?? {}, request.sign, pushId, {
      repo,
      digest: signed.digest,
      tags: [tag],
    });
    signatures.unshift({ kind: 'schema1', digest: signed.digest, tag, key: key.fingerprint });
    out.push({
      tags: [tag],
      top,
      manifests: [],
      signatures,
    });
  }
  return out;
}
