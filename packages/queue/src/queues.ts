import { FlowProducer, Queue, type Job, type JobsOptions } from 'bullmq';
import type { RedisConnection } from './connection';
import {
  JOB_NAMES,
  JOB_VERSION,
  QUEUE_NAMES,
  type AssembleJob,
  type LookupJob,
  type PushLayout,
  type PushRequest,
  type UploadJob,
} from './types';

/**
 * Attempts, backoff and retention of every Ferry job. A push fails on its
 * retry budget (FERRY_RETRY_BUDGET seconds without progress) or a permanent
 * error, never on a count: attempts are effectively unlimited. The worker
 * wrapper delays a transiently failed job itself (FERRY_BACKOFF_TYPE, growing
 * waits up to 30 s); BullMQ's own retry, with the same strategy, is only the
 * fallback when that fails (Redis unreachable).
 */
export interface JobPolicy {
  attempts: number;
  /** First retry delay of BullMQ's fallback retry ('ferry' backoff: doubles, capped, jittered). */
  backoffMs: number;
  /** Completed jobs kept (Bull Board shows recent pushes). */
  keepCompleted: { count: number; age: number };
  /** Failed jobs kept longer, for diagnosis. */
  keepFailed: { count: number; age: number };
}

/** The custom backoff type of Ferry's jobs; every Ferry worker registers its strategy (runtime). */
export const FERRY_BACKOFF_TYPE = 'ferry';

/** "Unlimited" attempts: the retry budget, not a count, ends a push. */
export const UNLIMITED_ATTEMPTS = 1_000_000_000;

/**
 * The wait before try `attempt + 1` after `attempt` transient failures in a
 * row: 1 s, 2 s, 4 s … capped at 30 s, ±20 % jitter so retries spread out.
 */
export function ferryBackoffMs(attempt: number, baseMs = 1_000, maxMs = 30_000): number {
  const n = Math.max(1, Math.floor(attempt));
  const exp = Math.min(maxMs, baseMs * 2 ** Math.min(n - 1, 30));
  return Math.round(exp * (0.8 + Math.random() * 0.4));
}

export const DEFAULT_JOB_POLICY: JobPolicy = {
  attempts: UNLIMITED_ATTEMPTS,
  backoffMs: 1_000,
  keepCompleted: { count: 1_000, age: 24 * 3600 },
  keepFailed: { count: 5_000, age: 7 * 24 * 3600 },
};

export interface FerryQueues {
  readonly prefix: string;
  readonly lookup: Queue<LookupJob>;
  readonly upload: Queue<UploadJob>;
  readonly assemble: Queue<AssembleJob>;
  readonly flow: FlowProducer;
  readonly policy: JobPolicy;
  close(): Promise<void>;
}

export interface CreateQueuesOptions {
  /** A 'producer' connection (createConnection) shared by the queues and the flow producer. */
  connection: RedisConnection;
  /** FERRY_QUEUE_PREFIX, e.g. '{ferry}'. */
  prefix: string;
  policy?: Partial<JobPolicy>;
}

/** The three queues and the flow producer, on one connection, under the prefix. */
export function createQueues(opts: CreateQueuesOptions): FerryQueues {
  if (opts.prefix.includes(':')) {
    throw new Error(`queue prefix ${JSON.stringify(opts.prefix)} may not contain ":"`);
  }
  const policy = { ...DEFAULT_JOB_POLICY, ...opts.policy };
  const common = { connection: opts.connection, prefix: opts.prefix };
  const lookup = new Queue<LookupJob>(QUEUE_NAMES.lookup, common);
  const upload = new Queue<UploadJob>(QUEUE_NAMES.upload, common);
  const assemble = new Queue<AssembleJob>(QUEUE_NAMES.assemble, common);
  const flow = new FlowProducer(common);
  for (const emitter of [lookup, upload, assemble, flow]) {
    // Errors surface on the calls that fail; a listener keeps them off stderr.
    (emitter as { on(e: 'error', f: () => void): unknown }).on('error', () => undefined);
  }
  return {
    prefix: opts.prefix,
    lookup,
    upload,
    assemble,
    flow,
    policy,
    async close() {
      // The connection is the caller's: Queue.close() does not close a passed-in ioredis instance.
      await Promise.allSettled([lookup.close(), upload.close(), assemble.close(), flow.close()]);
    },
  };
}

const ID_PATTERN = /^[A-Za-z0-9_-]{1,100}$/;

/** Throws unless the push id is usable inside job ids and Redis keys (no ':'). */
export function assertPushId(pushId: string): void {
  if (!ID_PATTERN.test(pushId)) {
    throw new Error(`push id ${JSON.stringify(pushId)} must be 1-100 letters, digits, "_" or "-"`);
  }
}

/** The assemble (parent) job id of a push. */
export function assembleJobId(pushId: string): string {
  return `push-${pushId}`;
}

/** The lookup job id of one layer of a push: scoped to the push, so a job has exactly one parent. */
export function lookupJobId(pushId: string, imageIndex: number, layerIndex: number): string {
  return `${pushId}-i${imageIndex}-l${layerIndex}`;
}

/** The lookup job id of every layer of one image of a push (PushLayout.lookupPerImage). */
export function imageLookupJobId(pushId: string, imageIndex: number): string {
  return `${pushId}-i${imageIndex}-layers`;
}

/** The upload job id of one layer of a push. */
export function uploadJobId(pushId: string, imageIndex: number, layerIndex: number): string {
  return `${pushId}-i${imageIndex}-l${layerIndex}-up`;
}

function childOptions(policy: JobPolicy, jobId: string): JobsOptions {
  return {
    jobId,
    attempts: policy.attempts,
    backoff: { type: FERRY_BACKOFF_TYPE, delay: policy.backoffMs },
    removeOnComplete: policy.keepCompleted,
    removeOnFail: policy.keepFailed,
    failParentOnFailure: true,
  };
}

export interface EnqueuePushOptions {
  /** FERRY_GZIP_LEVEL, copied into every lookup job. */
  gzipLevel: number;
}

/** What of a push request its layer jobs carry. */
export type LayerRequest = Pick<
  PushRequest,
  'source' | 'target' | 'targets' | 'platform' | 'dirOptions' | 'pin'
>;

function lookupData(
  pushId: string,
  request: LayerRequest,
  img: number,
  l: number,
  gzipLevel: number,
  layers?: number,
): LookupJob {
  return {
    v: JOB_VERSION,
    pushId,
    imageIndex: img,
    layerIndex: l,
    ...(layers !== undefined ? { layers } : {}),
    source: request.source,
    target: request.target,
    gzipLevel,
    ...(request.platform !== undefined ? { platform: request.platform } : {}),
    ...(request.dirOptions !== undefined ? { dirOptions: request.dirOptions } : {}),
    ...(request.pin !== undefined ? { pin: request.pin } : {}),
    ...(request.targets && request.targets.length > 1 ? { targets: request.targets } : {}),
  };
}

/**
 * The lookup jobs of a layout (id and payload): one per image that has layers
 * when every layer states its digest (lookupPerImage), else one per layer.
 */
function lookupSpecs(
  pushId: string,
  request: LayerRequest,
  layout: PushLayout,
  gzipLevel: number,
): { id: string; data: LookupJob }[] {
  if (layout.images.length === 0) throw new Error('push layout has no image');
  const specs: { id: string; data: LookupJob }[] = [];
  layout.images.forEach(({ layers: n }, img) => {
    if (!Number.isInteger(n) || n < 0) throw new Error(`image ${img}: bad layer count ${n}`);
    if (layout.lookupPerImage && n > 0) {
      const data = lookupData(pushId, request, img, 0, gzipLevel, n);
      specs.push({ id: imageLookupJobId(pushId, img), data });
      return;
    }
    for (let l = 0; l < n; l++) {
      const data = lookupData(pushId, request, img, l, gzipLevel);
      specs.push({ id: lookupJobId(pushId, img, l), data });
    }
  });
  return specs;
}

/** The job id of a docker:// push's resolve job (its first child). */
export function resolveJobId(pushId: string): string {
  return `${pushId}-resolve`;
}

/**
 * Adds a push as one BullMQ flow: the assemble job (`push-<id>`) is the parent,
 * the lookup jobs its children — one per image (`<id>-i<img>-layers`) when
 * every layer states its digest, else one per layer (`<id>-i<img>-l<n>`) —
 * each failing the parent when it fails for good. A push whose layout is not
 * known yet (a docker:// source: the API cannot read the registry) gets one
 * `resolve` child instead, which adds the layer jobs once it has pinned the
 * source (addLayerChildren). Enqueuing the same push id again adds nothing (the ids
 * collapse). Returns the parent job.
 */
export async function enqueuePush(
  queues: FerryQueues,
  pushId: string,
  request: PushRequest,
  layout: PushLayout | undefined,
  opts: EnqueuePushOptions,
): Promise<Job<AssembleJob>> {
  assertPushId(pushId);
  const children = [];
  if (layout === undefined) {
    children.push({
      name: JOB_NAMES.lookup,
      queueName: QUEUE_NAMES.lookup,
      data: { ...lookupData(pushId, request, 0, 0, opts.gzipLevel), resolve: true },
      opts: childOptions(queues.policy, resolveJobId(pushId)),
    });
  } else {
    for (const { id, data } of lookupSpecs(pushId, request, layout, opts.gzipLevel)) {
      children.push({
        name: JOB_NAMES.lookup,
        queueName: QUEUE_NAMES.lookup,
        data,
        opts: childOptions(queues.policy, id),
      });
    }
  }
  const node = await queues.flow.add({
    name: JOB_NAMES.assemble,
    queueName: QUEUE_NAMES.assemble,
    data: { v: JOB_VERSION, pushId, request, gzipLevel: opts.gzipLevel } satisfies AssembleJob,
    opts: {
      jobId: assembleJobId(pushId),
      attempts: queues.policy.attempts,
      backoff: { type: FERRY_BACKOFF_TYPE, delay: queues.policy.backoffMs },
      removeOnComplete: queues.policy.keepCompleted,
      removeOnFail: queues.policy.keepFailed,
    },
    children,
  });
  return node.job as Job<AssembleJob>;
}

/**
 * Called by a docker:// push's resolve job (before it completes) once the
 * source is pinned: the lookup jobs of the layout, added to the same flow (the
 * parent, already waiting, waits for them too). `request` carries the pin.
 * Running it again (a retried resolve) adds nothing: the ids collapse.
 */
export async function addLayerChildren(
  queues: FerryQueues,
  pushId: string,
  request: LayerRequest,
  layout: PushLayout,
  gzipLevel: number,
): Promise<void> {
  assertPushId(pushId);
  const parent = { id: assembleJobId(pushId), queue: queues.assemble.qualifiedName };
  const jobs = lookupSpecs(pushId, request, layout, gzipLevel).map(({ id, data }) => ({
    name: JOB_NAMES.lookup,
    data,
    opts: { ...childOptions(queues.policy, id), parent },
  }));
  await queues.lookup.addBulk(jobs);
}

/**
 * Called by a lookup worker (before its job completes) when the blob is
 * missing: adds the layer's upload job to the same flow, as another child of
 * the push's assemble job, so the parent waits for it too. The parent is taken
 * from the lookup job (job.parent); it must be the push's assemble job.
 * Adding the same upload twice (a retried lookup) collapses on the job id.
 */
export async function addUploadChild(
  queues: FerryQueues,
  lookupJob: Pick<Job, 'parent' | 'id'> | null,
  data: UploadJob,
): Promise<Job<UploadJob>> {
  assertPushId(data.pushId);
  const parentId = assembleJobId(data.pushId);
  const parentQueue = queues.assemble.qualifiedName;
  if (lookupJob?.parent) {
    const { id, queueKey } = lookupJob.parent;
    if (id !== parentId || queueKey !== parentQueue) {
      throw new Error(
        `lookup job ${lookupJob.id} belongs to ${queueKey}/${id}, not to push ${data.pushId}`,
      );
    }
  }
  return queues.upload.add(JOB_NAMES.upload, data, {
    ...childOptions(queues.policy, uploadJobId(data.pushId, data.imageIndex, data.layerIndex)),
    parent: { id: parentId, queue: parentQueue },
  });
}

/**
 * Best-effort removal of a push's jobs that no worker holds yet (cancel).
 * Jobs a worker is running stay; their worker sees PushStore.isCancelled and stops.
 * A delayed upload job is promoted instead (its worker cancels the registry
 * session it kept for its retry), and then the parent stays until it fails.
 * Returns how many jobs were removed.
 */
export async function removePushJobs(
  queues: FerryQueues,
  pushId: string,
  layout?: PushLayout,
): Promise<number> {
  assertPushId(pushId);
  let removed = 0;
  let promoted = 0;
  const tryRemove = async (
    queue: Queue<never> | Queue<LookupJob> | Queue<UploadJob>,
    id: string,
  ) => {
    try {
      const job = await (queue as Queue).getJob(id);
      if (!job) return;
      const state = await job.getState();
      if (state === 'active' || state === 'completed' || state === 'failed') return;
      if (state === 'delayed' && queue === queues.upload) {
        // A waiting upload may have kept its registry session for the retry: run it now, so
        // its worker sees the cancel and cancels the session (removing it would orphan it).
        await job.promote();
        promoted++;
        return;
      }
      await job.remove();
      removed++;
    } catch {
      // locked by a worker meanwhile, or already gone
    }
  };
  // Children first, so the parent is not left waiting on removed dependencies.
  const parent = await queues.assemble.getJob(assembleJobId(pushId));
  const ids = new Set<string>();
  if (parent) {
    const deps = await parent.getDependencies({ unprocessed: { count: 10_000 } });
    for (const key of deps.unprocessed ?? []) ids.add(key);
  }
  if (layout) {
    layout.images.forEach((img, i) => {
      ids.add(`${queues.lookup.qualifiedName}:${imageLookupJobId(pushId, i)}`);
      for (let l = 0; l < img.layers; l++) {
        ids.add(`${queues.lookup.qualifiedName}:${lookupJobId(pushId, i, l)}`);
        ids.add(`${queues.upload.qualifiedName}:${uploadJobId(pushId, i, l)}`);
      }
    });
  }
  for (const key of ids) {
    if (key.startsWith(queues.lookup.qualifiedName + ':')) {
      await tryRemove(queues.lookup, key.slice(queues.lookup.qualifiedName.length + 1));
    } else if (key.startsWith(queues.upload.qualifiedName + ':')) {
      await tryRemove(queues.upload, key.slice(queues.upload.qualifiedName.length + 1));
    }
  }
  // Removing the parent would remove a promoted upload with it; it fails when that upload stops.
  if (parent && promoted === 0) {
    await tryRemove(queues.assemble as unknown as Queue<never>, parent.id as string);
  }
  return removed;
}
