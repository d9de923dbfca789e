/**
 * Accepting a push, with no web framework in sight: validate what a schema
 * cannot, check the target, open the source and pin it (the snapshot every job
 * reads it through), record the push, enqueue its flow. The Fastify handler in
 * app.ts only moves headers and bodies in and out.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { FerryConfig } from '@ferry/config';
import type { Logger } from '@ferry/log';
import {
  enqueuePush,
  type DirOptions,
  type FerryQueues,
  type PushLayout,
  type PushRequest,
  type PushStatus,
  type PushStore,
  type SignRequest,
  type SigningStore,
  type SourcePin,
} from '@ferry/queue';
import { formatSource, parseSource } from '@ferry/image-source';
import { isAllowed, normalizeHost } from '@ferry/registry-client';
import { patternCovers, type Principal } from './auth';
import { ApiError } from './errors';
import { SourceContentError, type Inspector } from './inspect';

export interface PushBody {
  source: string;
  target?: string;
  targets?: string[];
  allTags?: boolean;
  copySignatures?: boolean;
  tags?: string[];
  sign?: SignRequest | boolean;
  schema1?: boolean;
  format?: 'oci' | 'docker';
  platform?: string;
  dirOptions?: Partial<DirOptions>;
}

export interface PushDeps {
  config: FerryConfig;
  /** The keys the coordinators published (a push asking for a signature needs one). */
  signing: SigningStore;
  store: PushStore;
  queues: FerryQueues;
  inspector: Inspector;
  logger: Logger;
}

export interface Accepted {
  id: string;
  status: PushStatus;
  /** An earlier push with the same Idempotency-Key. */
  replayed: boolean;
}

const IDEMPOTENCY_KEY_RE = /^[\x21-\x7e]{1,255}$/;

/** Checks the Idempotency-Key header (undefined when absent). */
export function checkIdempotencyKey(header: unknown): string | undefined {
  if (header === undefined) return undefined;
  if (typeof header !== 'string' || !IDEMPOTENCY_KEY_RE.test(header)) {
    throw new ApiError(
      'FERRY_VALIDATION',
      'Idempotency-Key must be 1-255 visible ASCII characters',
      'Idempotency-Key',
    );
  }
  return header;
}

/** A docker:// copy keeps the source's bytes, so its digests: nothing that would rewrite them. */
function checkCopy(body: PushBody): void {
  const why: [keyof PushBody, string][] = [
    ['schema1', 'a schema1 manifest would rewrite the manifests'],
    ['format', "it keeps the source's manifest format; leave format out"],
    ['dirOptions', 'dirOptions apply to dir: sources only'],
  ];
  for (const [field, reason] of why) {
    if (body[field] !== undefined && body[field] !== false) {
      throw new ApiError(
        'FERRY_COPY_UNSUPPORTED',
        `a docker:// source is copied byte for byte (digests kept): ${reason}`,
        field,
      );
    }
  }
}

/**
 * A signature or a schema1 manifest needs a key on the coordinators: the API
 * holds none, but sees the public keys they published. Asking for one that no
 * coordinator has gets 422 before anything is enqueued (never pushed unsigned).
 */
async function checkSigning(signing: SigningStore, body: PushBody): Promise<void> {
  const sign = body.sign;
  const refuse = (what: string, field: 'sign' | 'schema1') => {
    throw new ApiError(
      'FERRY_SIGNING_NOT_CONFIGURED',
      `${what}: no coordinator has published such a key (FERRY_SIGNING_KEY / FERRY_PGP_KEY)`,
      field,
    );
  };
  if (sign === true) {
    const [cosign, pgp] = await Promise.all([signing.getKey('cosign'), signing.getKey('pgp')]);
    if (!cosign && !pgp)
      refuse('sign: true asks for every configured key, and there is none', 'sign');
  } else if (typeof sign === 'object' && sign !== null) {
    if (sign.cosign && !(await signing.getKey('cosign')))
      refuse('a cosign signature needs an EC P-256 key', 'sign');
    if (sign.pgp && !(await signing.getKey('pgp')))
      refuse('an OpenPGP signature needs an OpenPGP key', 'sign');
  }
  if (body.schema1 === true && !(await signing.getKey('schema1'))) {
    refuse('a schema1 manifest is signed (EC or RSA key)', 'schema1');
  }
}

/** The combinations a JSON schema cannot express. */
function checkCombinations(body: PushBody): void {
  if (body.schema1 === true && body.format === 'oci') {
    throw new ApiError(
      'FERRY_VALIDATION',
      'schema1 is a Docker format; use format "docker" or leave format out',
      'schema1',
    );
  }
  if (body.target === undefined && (body.targets ?? []).length === 0) {
    throw new ApiError('FERRY_VALIDATION', 'a push needs a target (or targets)', 'target');
  }
  if (body.source.startsWith('docker://')) checkCopy(body);
  if (body.dirOptions !== undefined && !body.source.startsWith('dir:')) {
    throw new ApiError('FERRY_VALIDATION', 'dirOptions apply to dir: sources only', 'dirOptions');
  }
  if (!body.source.startsWith('docker://')) {
    for (const f of ['allTags', 'copySignatures'] as const) {
      if (body[f] !== undefined) {
        throw new ApiError('FERRY_VALIDATION', `${f} applies to docker:// sources only`, f);
      }
    }
  }
}

/**
 * A token limited to patterns may push only to targets they cover (the
 * normalised target: host as the allowlist normalises it); 403 otherwise.
 */
export function checkTargetScope(principal: Principal | undefined, target: string): void {
  if (!principal || principal.patterns.length === 0) return;
  const hostMatches = (host: string, entry: string) => isAllowed(host, [entry]);
  if (principal.patterns.some((p) => patternCovers(p, target, hostMatches))) return;
  throw new ApiError(
    'FERRY_FORBIDDEN',
    `token ${principal.name ?? ''} may not push to ${target}; it may push to ${principal.patterns.join(', ')}`,
    'target',
  );
}

/** dir: options with the defaults filled in; undefined for other sources. */
function dirOptionsOf(body: PushBody): DirOptions | undefined {
  if (!body.source.startsWith('dir:')) return undefined;
  return { owners: body.dirOptions?.owners ?? 'root', mtime: body.dirOptions?.mtime ?? 'epoch' };
}

/** The source as opened now, or the content problem that will fail the push. */
async function pinSource(
  deps: PushDeps,
  body: PushBody,
  dirOptions: DirOptions | undefined,
): Promise<
  | { source: string; layout: PushLayout; pin: SourcePin; contentError?: undefined }
  | { source: string; contentError: SourceContentError; layout?: undefined; pin?: undefined }
> {
  try {
    return await deps.inspector.inspectSource(body.source, {
      root: deps.config.sourceRoot,
      platform: body.platform,
      gzipLevel: deps.config.gzipLevel,
      ...(dirOptions ? { dirOptions } : {}),
    });
  } catch (err) {
    if (err instanceof SourceContentError) return { source: body.source, contentError: err };
    throw toApiError(err, 'source');
  }
}

/** Same key and same request: the id of the first push; same key, other request: 422. */
async function claimIdempotencyKey(
  store: PushStore,
  key: string,
  id: string,
  request: PushRequest,
): Promise<{ id: string; existing?: PushStatus }> {
  // The pin is what the source was, not what was asked: a retry after the source changed
  // is still the same request.
  const { pin: _pin, ...asked } = request;
  const fingerprint = createHash('sha256').update(JSON.stringify(asked)).digest('hex');
  const r = await store.idempotent(key, id, fingerprint);
  if (!r.sameRequest) {
    throw new ApiError(
      'FERRY_IDEMPOTENCY_CONFLICT',
      'this Idempotency-Key was used with a different request',
      'Idempotency-Key',
    );
  }
  if (r.created) return { id: r.id };
  const existing = await store.status(r.id);
  return existing ? { id: r.id, existing } : { id: r.id };
}

/** Accepts a push: 202 with its id, or an ApiError naming the field that is wrong. Nothing is enqueued on error. */
export async function createPush(
  deps: PushDeps,
  body: PushBody,
  idempotencyKey: string | undefined,
  principal?: Principal,
): Promise<Accepted> {
  const { store, logger } = deps;
  checkCombinations(body);
  await checkSigning(deps.signing, body);
  // The targets (their registry allowlist, then the token's patterns) are checked before the source is touched.
  const targets = checkTargets(deps, body, principal);
  const target = targets[0];
  const dirOptions = dirOptionsOf(body);
  const pinned = body.source.startsWith('docker://')
    ? registrySource(deps, body)
    : await pinSource(deps, body, dirOptions);
  if (body.schema1 === true && pinned.layout && pinned.layout.images.length > 1) {
    throw new ApiError(
      'FERRY_SCHEMA1_UNSUPPORTED',
      'schema1 has no multi-platform form: name one platform, or leave schema1 out',
      'schema1',
    );
  }
  const request: PushRequest = {
    source: pinned.source,
    target,
    ...(targets.length > 1 ? { targets } : {}),
    ...(body.allTags ? { allTags: true } : {}),
    ...(body.copySignatures === false ? { copySignatures: false } : {}),
    tags: body.tags ?? [],
    format: body.format ?? (body.schema1 ? 'docker' : 'oci'),
    ...(body.sign !== undefined ? { sign: body.sign } : {}),
    ...(body.schema1 !== undefined ? { schema1: body.schema1 } : {}),
    ...(body.platform !== undefined ? { platform: body.platform } : {}),
    ...(dirOptions ? { dirOptions } : {}),
    ...(pinned.pin ? { pin: pinned.pin } : {}),
    // the token's name, never the token
    ...(principal?.name !== undefined ? { requestedBy: principal.name } : {}),
  };
  let id: string = randomUUID();
  if (idempotencyKey !== undefined) {
    const claimed = await claimIdempotencyKey(store, idempotencyKey, id, request);
    if (claimed.existing) return { id: claimed.id, status: claimed.existing, replayed: true };
    id = claimed.id;
  }
  // The state and the flow go out together, on one Redis connection: Redis records the state
  // before the jobs exist. Both are awaited.
  const created = store.create(id, request, pinned.layout ? { layout: pinned.layout } : {});
  if (pinned.contentError) {
    await created;
    const { code, message } = pinned.contentError;
    await store.finish(id, { error: { code, message } });
    return { id, status: 'failed', replayed: false };
  }
  // A docker:// source has no layout yet: its resolve job (a worker, with the registry
  // credentials) pins it.
  await Promise.all([created, enqueueOrFail(deps, id, request, pinned.layout)]);
  // Logged once the reply is on its way (the line is off the push's path).
  setImmediate(() =>
    logger.info('push accepted', {
      id,
      source: request.source,
      target,
      ...(targets.length > 1 ? { targets: targets.length } : {}),
      ...(request.requestedBy !== undefined ? { requestedBy: request.requestedBy } : {}),
      ...(pinned.layout ? { layers: pinned.layout.images.map((i) => i.layers) } : {}),
    }),
  );
  return { id, status: 'queued', replayed: false };
}

/** Enqueues the push's flow; a push that could not be queued is failed, never left queued. */
async function enqueueOrFail(
  deps: PushDeps,
  id: string,
  request: PushRequest,
  layout: PushLayout | undefined,
): Promise<void> {
  try {
    await enqueuePush(deps.queues, id, request, layout, { gzipLevel: deps.config.gzipLevel });
  } catch (err) {
    await deps.store
      .finish(id, { error: { code: 'FERRY_UNAVAILABLE', message: 'the push could not be queued' } })
      .catch(() => undefined);
    throw err;
  }
}

/** Every target (`target` first, then `targets`), each allowed and within the token's patterns. */
function checkTargets(deps: PushDeps, body: PushBody, principal?: Principal): string[] {
  const asked = [...(body.target !== undefined ? [body.target] : []), ...(body.targets ?? [])];
  const out: string[] = [];
  asked.forEach((t, i) => {
    const field = body.target !== undefined && i === 0 ? 'target' : 'targets';
    let target: string;
    try {
      target = deps.inspector.checkTarget(t, deps.config.registryAllow).target;
      checkTargetScope(principal, target);
    } catch (err) {
      if (err instanceof ApiError && field === 'targets') {
        throw new ApiError(err.code, `targets: ${err.message}`, 'targets');
      }
      throw err;
    }
    if (!out.includes(target)) out.push(target);
  });
  if (out.length > 16) throw new ApiError('FERRY_VALIDATION', 'at most 16 targets', 'targets');
  return out;
}

/**
 * A docker:// source: checked (syntax, registry allowlist) but not opened —
 * the API holds no registry credentials; the push's first job pins it.
 */
function registrySource(
  deps: PushDeps,
  body: PushBody,
): { source: string; layout?: undefined; pin?: undefined; contentError?: undefined } {
  let spec;
  try {
    spec = parseSource(body.source);
  } catch (err) {
    throw toApiError(err, 'source');
  }
  if (spec.transport !== 'docker')
    throw new ApiError('FERRY_BAD_SOURCE', 'not a docker:// source', 'source');
  if (!isAllowed(spec.registry, deps.config.registryAllow)) {
    throw new ApiError(
      'FERRY_REGISTRY_NOT_ALLOWED',
      `source registry ${spec.registry} is not in FERRY_REGISTRY_ALLOW`,
      'source',
    );
  }
  if (body.allTags && (body.tags ?? []).length > 0) {
    throw new ApiError(
      'FERRY_VALIDATION',
      'allTags copies each tag of the source under its own name; extra tags do not apply',
      'tags',
    );
  }
  if (body.allTags && (spec.tagGiven || spec.digest)) {
    throw new ApiError(
      'FERRY_VALIDATION',
      'allTags copies every tag of a repository: name the source without a tag or digest',
      'allTags',
    );
  }
  const registry = normalizeHost(spec.registry);
  return { source: formatSource({ ...spec, registry }) };
}

/** A thrown error from a source/target check as the API error to answer with. */
export function toApiError(err: unknown, field: string): unknown {
  if (err instanceof ApiError) return err;
  const e = err as { code?: unknown; message?: string; field?: string };
  if (typeof e?.code === 'string' && e.code.startsWith('FERRY_')) {
    return new ApiError(e.code, e.message ?? e.code, e.field ?? field);
  }
  return err;
}
