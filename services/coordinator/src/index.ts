/**
 * coordinator: the parent job of a push's flow. Runs once every layer is in
 * the registry. Writes the config blob (as stated by the source, or built from
 * the diffIDs of the bytes pushed), each image manifest by digest, the index
 * when a multi-platform source is pushed whole, then signs (cosign, OpenPGP
 * simple signing; signer.ts) and only then tags, so a tag never points at an
 * unsigned image. schema1 pushes one signed manifest per tag (schema1.ts).
 * The registry's Docker-Content-Digest is checked against the bytes sent
 * (registry-client does that on every manifest PUT). This is the only role
 * that reads private keys.
 */
import type { Job } from 'bullmq';
import type { FerryConfig } from '@ferry/config';
import type { OpenedSource } from '@ferry/image-source';
import type { Logger } from '@ferry/log';
import type { Canonical, ManifestFormat } from '@ferry/manifest';
import {
  openQueueContext,
  QUEUE_NAMES,
  type AssembleJob,
  type PushRequest,
  type TargetResult,
  type PushResult,
  type QueueContext,
  type SignatureRecord,
  type TaggedManifest,
} from '@ferry/queue';
import { parseReference, type RegistryClient, type RepoRef } from '@ferry/registry-client';
import {
  createRegistryClient,
  finishPush,
  isPermanent,
  PermanentError,
  SourceCache,
  sharedSourceCache,
  startWorker,
  type LayerOutcome,
  type OpenedImages,
  type RoleHandle,
} from '@ferry/runtime';
import { copySignatures, signatureTag } from './copy-signatures';
import {
  MANIFEST_FAMILY,
  layerResults,
  manifestEvent,
  pushImages,
  pushTop,
  type PushedImage,
} from './images';
import { pushSchema1 } from './schema1';
import { loadSigner, publishKeys, signPushed, wanted, type Signer } from './signer';

export interface CoordinatorDeps {
  ctx: QueueContext;
  client: RegistryClient;
  sources: SourceCache;
  logger: Logger;
  /** FERRY_GZIP_LEVEL, for version-1 payloads that did not carry the push's level. */
  gzipLevel?: number;
  /** The keys this coordinator signs with (none: a push asking for a signature fails, unsigned never). */
  signer?: Signer;
}

/**
 * A push asking for what this coordinator cannot sign fails (never pushed
 * unsigned): the API checks the published keys first, so this is a race with
 * a reconfigured cluster.
 */
function refuseUnsignable(request: PushRequest, signer: Signer): void {
  const want = wanted(request.sign, signer);
  const sign = request.sign;
  const asked = sign === true || (typeof sign === 'object' && (sign.cosign || sign.pgp));
  const missing =
    (want.cosign && signer.key?.type !== 'ec') ||
    (want.pgp && !signer.pgp) ||
    (asked && !want.cosign && !want.pgp) ||
    (request.schema1 === true && !signer.key);
  if (missing) {
    throw new PermanentError(
      'FERRY_SIGNING_NOT_CONFIGURED',
      'this push asks for a signature (or a signed schema1 manifest) that the coordinator has no key for',
    );
  }
}

/** The family (oci / docker) of a copied docker:// source: its manifests are kept as they are. */
function sourceFormat(opened: OpenedSource): ManifestFormat | undefined {
  if (!opened.registrySource) return undefined;
  const mt = opened.indexMediaType ?? opened.images[0]?.manifestMediaType;
  return mt ? MANIFEST_FAMILY[mt] : undefined;
}

/** One tag's images of an --all-tags copy see the layer results from their own position. */
function shifted(results: Map<string, LayerOutcome>, first: number): Map<string, LayerOutcome> {
  if (first === 0) return results;
  const out = new Map<string, LayerOutcome>();
  for (const [k, v] of results) {
    const [img, rest] = k.split('/');
    // `rest`: a layer index, or `config` (configKey)
    if (Number(img) >= first) out.set(`${Number(img) - first}/${rest}`, v);
  }
  return out;
}

/** One image (or index) of a target: config blobs, manifests by digest, copied signatures. */
async function pushOne(
  deps: CoordinatorDeps,
  pushId: string,
  request: PushRequest,
  repo: RepoRef,
  opened: OpenedSource,
  results: Map<string, LayerOutcome>,
  tags: string[],
): Promise<Omit<Pushed, 'tags'>> {
  const { ctx, client } = deps;
  const format: ManifestFormat = sourceFormat(opened) ?? request.format ?? 'oci';
  const src = opened.registrySource;
  const copying = src !== undefined && request.copySignatures !== false;
  const signing = deps.signer ? wanted(request.sign, deps.signer) : undefined;
  // Nothing happens between the manifest and its tags: the tag PUTs store it.
  const byTag = !copying && !signing?.cosign && !signing?.pgp;
  const images = await pushImages(deps, pushId, repo, opened, results, format, byTag);
  const pushed = await pushTop(deps, pushId, repo, opened, images, format);
  const { top } = pushed;
  const { unstored } = images;
  // A copy brings the source's cosign signatures of that digest along (they sign the same bytes).
  if (src && copying) {
    // Under the lock signers of this tag take: a concurrent signature is merged, never lost.
    const tag = signatureTag(top.digest);
    const n = await ctx.signing
      .withLock(`${repo.registry}/${repo.repository}/${tag}`, () =>
        copySignatures(client, src, repo, top.digest),
      )
      .catch(async (err: unknown) => {
        // An extra: a signature that cannot be copied (gone, too large) does not fail the image.
        if (!isPermanent(err)) throw err;
        await ctx.store.appendEvent(pushId, {
          type: 'log',
          level: 'warn',
          message: `the source's cosign signatures of ${top.digest} were not copied: ${(err as Error).message}`,
        });
        return 0;
      });
    if (n > 0) {
      await ctx.store.appendEvent(pushId, {
        type: 'log',
        level: 'info',
        message: `copied ${n} cosign signature(s) of ${top.digest} (${signatureTag(top.digest)}) to ${repo.registry}/${repo.repository}`,
      });
    }
  }

  // Signed before any tag names it.
  const signatures = deps.signer
    ? await signPushed(ctx, client, deps.signer, request.sign, pushId, {
        repo,
        digest: top.digest,
        tags,
      })
    : [];
  return { ...pushed, signatures, ...(unstored ? { unstored } : {}) };
}

/** A top manifest of a target with the tags that will name it and its signatures. */
export interface Pushed {
  tags: string[];
  top: Canonical;
  manifests: TaggedManifest[];
  signatures: SignatureRecord[];
  /** Not yet in the registry: the first tag PUT stores it (its manifest event goes then). */
  unstored?: PushedImage;
}

/**
 * One target: every image pushed and signed first, then the tags — the
 * target's tag and the extra tags, or for an --all-tags copy each source tag
 * on its own image.
 */
async function pushToTarget(
  deps: CoordinatorDeps,
  pushId: string,
  request: PushRequest,
  target: string,
  opened: OpenedImages,
  results: Map<string, LayerOutcome>,
): Promise<{ result: PushResult; written: Promise<unknown> } | { cancelled: true }> {
  const { ctx, client, logger } = deps;
  const ref = parseReference(target);
  const repo = { registry: ref.registry, repository: ref.repository };
  const parts = opened.parts ?? [{ tag: undefined, opened, first: 0 }];
  const tops: Pushed[] = [];
  for (const part of parts) {
    const main = ref.tag ?? 'latest';
    const tags = [
      ...new Set(
        part.tag !== undefined ? [part.tag] : [main, ...request.tags.filter((t) => t !== main)],
      ),
    ];
    const results1 = shifted(results, part.first);
    if (request.schema1) {
      // One signed manifest per tag (the payload names it): each tag is its own top.
      const s1 = await pushSchema1(deps, pushId, request, repo, part.opened, results1, tags);
      tops.push(...s1);
      continue;
    }
    const one = await pushOne(deps, pushId, request, repo, part.opened, results1, tags);
    tops.push({ tags, ...one });
  }
  if (await ctx.store.isCancelled(pushId)) return { cancelled: true };
  // Each tag's event is written while the next tag is PUT; all are written before the push ends.
  const events: Promise<unknown>[] = [];
  for (const { tags, top, unstored } of tops) {
    for (const [i, tag] of tags.entries()) {
      await client.putManifest(repo, tag, top.bytes, top.mediaType);
      if (i === 0 && unstored) {
        events.push(manifestEvent(deps, pushId, unstored.manifest, unstored.platform));
      }
      events.push(ctx.store.appendEvent(pushId, { type: 'tag', tag, digest: top.digest }));
    }
  }
  // Sent already; the caller waits for them (the last target's alongside the push's end).
  const written = Promise.all(events);
  written.catch(() => undefined);
  const { top } = tops[0];
  const line = `push ${pushId}: ${target} is ${top.digest}${tops.length > 1 ? ` (+${tops.length - 1} tags)` : ''}`;
  // Written once the push's end is on its way (the line is off the push's path).
  setImmediate(() => logger.info(line));
  const manifests =
    opened.parts || request.schema1
      ? tops.map((t) => ({
          tag: t.tags[0],
          digest: t.top.digest,
          mediaType: t.top.mediaType,
          size: t.top.size,
        }))
      : tops[0].manifests;
  const signatures = tops.flatMap((t) => t.signatures);
  return {
    result: {
      manifest: { digest: top.digest, mediaType: top.mediaType, size: top.size },
      ...(manifests.length ? { manifests } : {}),
      ...(signatures.length ? { signatures } : {}),
    },
    written,
  };
}

/** The request with its pin: a docker:// push's is recorded by its resolve job, after the enqueue. */
async function pinnedRequest(ctx: QueueContext, data: AssembleJob): Promise<PushRequest> {
  if (data.request.pin) return data.request;
  const state = await ctx.store.get(data.pushId);
  return state?.request ?? data.request;
}

export { layerResults } from './images';

export function assembleProcessor(deps: CoordinatorDeps) {
  const { ctx, sources, logger } = deps;
  const defaultGzipLevel = deps.gzipLevel ?? 6;
  return async (job: Job<AssembleJob>): Promise<PushResult | undefined> => {
    const { pushId } = job.data;
    // Both reads at once (one round trip).
    const [status, values] = await Promise.all([
      ctx.store.status(pushId),
      job.getChildrenValues<LayerOutcome>(),
    ]);
    if (status !== 'queued' && status !== 'running') {
      logger.info(`push ${pushId} is ${status ?? 'gone'}; nothing assembled`);
      return undefined;
    }
    const request = await pinnedRequest(ctx, job.data);
    refuseUnsignable(request, deps.signer ?? {});
    // Read through the pin: a source that changed since the accept fails FERRY_SOURCE_CHANGED.
    const opened = await sources.open({
      source: request.source,
      gzipLevel: job.data.gzipLevel ?? defaultGzipLevel, // version-1 payloads carried none
      ...(request.pin ? { pin: request.pin } : {}),
      ...(request.platform !== undefined ? { platform: request.platform } : {}),
      ...(request.dirOptions ? { dirOptions: request.dirOptions } : {}),
    });
    const children = values as Record<string, LayerOutcome>;
    const targets = request.targets?.length ? request.targets : [request.target];
    const fanOut = targets.length > 1;
    const done: TargetResult[] = [];
    const signatures: SignatureRecord[] = [];
    let first: PushResult | undefined;
    // The last target's manifest and tag events: on the same Redis connection as the push's end,
    // so they are in the stream before it; waited for after it is sent, not before.
    let lastEvents: Promise<unknown> | undefined;
    for (const [t, target] of targets.entries()) {
      try {
        const r = await pushToTarget(
          deps,
          pushId,
          request,
          target,
          opened,
          layerResults(children, fanOut ? target : undefined),
        );
        if ('cancelled' in r) {
          logger.info(`push ${pushId} was cancelled before tagging ${target}; no tag written`);
          return undefined;
        }
        if (t === targets.length - 1) lastEvents = r.written;
        else await r.written;
        first ??= r.result;
        signatures.push(...(r.result.signatures ?? []));
        done.push({ target, status: 'succeeded', manifest: r.result.manifest });
      } catch (err) {
        // One target's permanent failure is its own: the others are still pushed and tagged.
        if (!fanOut || !isPermanent(err)) throw err;
        const e = err as { code?: string; message: string };
        logger.warn(`push ${pushId}: target ${target} failed: ${e.message}`);
        done.push({
          target,
          status: 'failed',
          error: { code: e.code ?? 'FERRY_PUSH_FAILED', message: e.message },
        });
      }
    }
    const failed = done.filter((t) => t.status === 'failed');
    if (failed.length > 0) {
      const error = {
        code: failed[0].error?.code ?? 'FERRY_PUSH_FAILED',
        message: `${failed.length} of ${targets.length} targets failed: ${failed.map((t) => `${t.target}: ${t.error?.message ?? ''}`).join('; ')}`,
      };
      await finishPush(ctx, pushId, { error, targets: done }, logger);
      await eventsWritten(lastEvents, pushId, logger);
      return undefined;
    }
    const result: PushResult = {
      ...(first as PushResult),
      ...(signatures.length ? { signatures } : {}),
      ...(fanOut ? { targets: done } : {}),
    };
    await finishPush(ctx, pushId, result, logger);
    await eventsWritten(lastEvents, pushId, logger);
    return result;
  };
}

/** The last target's events, sent before the push's end: a lost one is logged (the push has ended). */
async function eventsWritten(
  written: Promise<unknown> | undefined,
  pushId: string,
  logger: Logger,
): Promise<void> {
  try {
    await written;
  } catch (err) {
    logger.warn(
      `push ${pushId}: a manifest or tag event was not recorded: ${(err as Error).message}`,
    );
  }
}

/**
 * Starts the coordinator role: loads the signing keys (this role only),
 * publishes their public halves — refusing to start when the cluster has
 * published a different key — then takes assemble jobs.
 */
export async function start(config: FerryConfig, logger: Logger): Promise<RoleHandle> {
  const log = logger.child({ role: 'coordinator' });
  const signer = await loadSigner(config);
  if (signer.key || signer.pgp) {
    const ctx = await openQueueContext(config, {
      role: 'producer',
      name: 'ferry-coordinator-keys',
    });
    try {
      await publishKeys(ctx, signer, log);
    } finally {
      await ctx.close();
    }
  }
  const client = createRegistryClient(config, log);
  const sources = sharedSourceCache(config, log);
  return startWorker<AssembleJob, PushResult | undefined>({
    role: 'coordinator',
    queueName: QUEUE_NAMES.assemble,
    concurrency: 4,
    config,
    logger: log,
    processor: (ctx) =>
      assembleProcessor({
        ctx,
        client,
        sources,
        logger: log,
        gzipLevel: config.gzipLevel,
        signer,
      }),
    closables: [{ name: 'registry client', close: () => client.close() }],
  });
}
