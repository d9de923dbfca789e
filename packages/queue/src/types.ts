/**
 * Queue names, job payloads, push state and progress events.
 *
 * Job payloads and events hold references (paths, image references, digests),
 * never secrets: registry credentials stay with the workers.
 */

/** The three BullMQ queues of a push flow. Never reuse these words as other Redis key segments. */
export const QUEUE_NAMES = {
  lookup: 'lookup',
  upload: 'upload',
  assemble: 'assemble',
} as const;
export type QueueName = (typeof QUEUE_NAMES)[keyof typeof QUEUE_NAMES];

/** BullMQ job names (one per queue). */
export const JOB_NAMES = {
  lookup: 'lookup',
  upload: 'upload',
  assemble: 'assemble',
} as const;

export interface SignRequest {
  cosign?: boolean;
  pgp?: boolean;
}

/** How a `dir:` layer is tarred (REST `dirOptions`, CLI `--owners` / `--mtime`). */
export interface DirOptions {
  /** root: uid/gid 0 (default, reproducible); keep: each file's numeric uid/gid. */
  owners: 'root' | 'keep';
  /** epoch: 0 (default); keep: each file's mtime; a number: that fixed epoch second. */
  mtime: 'epoch' | 'keep' | number;
}

export const DEFAULT_DIR_OPTIONS: DirOptions = { owners: 'root', mtime: 'epoch' };

/**
 * What the source was when the push was accepted (image-source's
 * SourceSnapshot, opaque here) and its key. Every job opens the source
 * through it: a source that changed since fails the push with
 * FERRY_SOURCE_CHANGED, and caches of opened sources are keyed by `key`.
 */
export interface SourcePin {
  /** sha256 of the snapshot's canonical JSON. */
  key: string;
  snapshot: Record<string, unknown>;
}

/** What a client asked for (POST /v1/pushes body, after validation). */
export interface PushRequest {
  /** oci:PATH[:REF] | docker-archive:PATH[:REF] | dir:PATH — PATH absolute, inside the source root. */
  source: string;
  /** HOST[:PORT]/REPO[:TAG]: the first target (of `targets` when there are several). */
  target: string;
  /** Fan-out: every target, the first being `target`; absent for a single target. */
  targets?: string[];
  /** A docker:// source without a tag: copy every tag of the repository (one push). */
  allTags?: boolean;
  /** A docker:// copy: false skips copying the source's cosign signatures (default: copied). */
  copySignatures?: boolean;
  /** Extra tags. */
  tags: string[];
  /** true: every configured key. */
  sign?: SignRequest | boolean;
  schema1?: boolean;
  format: 'oci' | 'docker';
  /** os/arch[/variant]: push one image of an index. */
  platform?: string;
  /** dir: sources only; absent means DEFAULT_DIR_OPTIONS. */
  dirOptions?: DirOptions;
  /** Set by the API when it accepts the push: the source as it was then (kept in the push state). */
  pin?: SourcePin;
  /** Set by the API: the name of the token that asked (never the token itself). */
  requestedBy?: string;
}

/**
 * The version of the job payloads below. A worker runs only the versions it
 * knows (JOB_VERSIONS_KNOWN); a payload without `v` is version 1 (before
 * snapshots: no pin, platform read back from the push state). Version 3 adds
 * `targets` (fan-out) and the `resolve` job of a docker:// source; a version-2
 * payload is a version-3 one with one target. Version 4 adds a lookup job
 * covering several layers of an image (`layers`); a version-3 payload is a
 * version-4 one of one layer.
 */
export const JOB_VERSION = 4;
export const JOB_VERSIONS_KNOWN: readonly number[] = [1, 2, 3, 4];

/** The version of a job payload (1 when it has none). */
export function jobVersion(data: unknown): number {
  const v = (data as { v?: unknown } | null)?.v;
  return v === undefined ? 1 : typeof v === 'number' && Number.isInteger(v) ? v : NaN;
}

/** What every layer job (lookup and upload) carries. */
export interface LayerJob {
  /** Transient failures in a row (set by the worker wrapper; decides the next wait). */
  tries?: number;
  v: typeof JOB_VERSION;
  pushId: string;
  /** Which image of the source (0 for a single image; the platform's position in an index). */
  imageIndex: number;
  /** Position of the layer in that image's manifest (0 = base). */
  layerIndex: number;
  source: string;
  target: string;
  /** The gzip level the push was planned with (FERRY_GZIP_LEVEL at accept). */
  gzipLevel: number;
  /** os/arch[/variant] when one image of an index is pushed. */
  platform?: string;
  dirOptions?: DirOptions;
  /** The source as accepted (absent only in version-1 payloads and before a `resolve` job ran). */
  pin?: SourcePin;
  /**
   * Fan-out: every target this job serves (`target` first); absent means `[target]`. A lookup
   * job carries the push's targets, an upload job those that lack the blob.
   */
  targets?: string[];
}

/**
 * A lookup job: one layer of one image, or every layer of it (`layers`).
 * With `resolve`, the first job of a docker:// push instead: it pins the source (tag → digest, in a worker, which
 * holds the registry credentials), records the pin and layout in the push
 * state and adds the layer jobs to the flow (imageIndex and layerIndex are 0).
 */
export interface LookupJob extends LayerJob {
  resolve?: boolean;
  /**
   * Set on the job of a whole image (a source whose layers all state their
   * digests): its layer count, looked up side by side from `layerIndex` 0,
   * and the image's stated config blob with them. Absent: the one layer
   * `layerIndex`.
   */
  layers?: number;
}

/** One blob missing from the target: an upload job, added by the lookup worker. */
export interface UploadJob extends LayerJob {
  /** The uncompressed tar's digest the lookup computed (keys the upload lease of a layer Ferry compresses). */
  diffId?: string;
  /** How often this job has waited for another worker's upload of the same blob. */
  waits?: number;
}

/** The parent of the flow: runs once every lookup (and upload) child has completed. */
export interface AssembleJob {
  v: typeof JOB_VERSION;
  /** Transient failures in a row (set by the worker wrapper; decides the next wait). */
  tries?: number;
  pushId: string;
  /** Carries the pin (request.pin). */
  request: PushRequest;
  gzipLevel: number;
}

/** How many layers each image has, so the flow gets a lookup job for each. */
export interface PushLayout {
  images: { layers: number }[];
  /**
   * Every layer states its digest (nothing for a lookup to hash): one lookup
   * job per image. Otherwise (absent) one per layer, so the hashing of many
   * layers spreads over the lookup workers.
   */
  lookupPerImage?: boolean;
}

export const PUSH_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type PushStatus = (typeof PUSH_STATUSES)[number];
export const FINAL_STATUSES: readonly PushStatus[] = ['succeeded', 'failed', 'cancelled'];
export function isFinalStatus(s: string): boolean {
  return (FINAL_STATUSES as readonly string[]).includes(s);
}

export const LAYER_STATES = [
  'pending',
  'exists',
  'mounted',
  'uploading',
  'uploaded',
  'cancelled',
] as const;
export type LayerStateName = (typeof LAYER_STATES)[number];

/** Identifies a layer of a push: image position + layer position. */
export interface LayerKey {
  imageIndex: number;
  index: number;
}

export interface LayerState extends LayerKey {
  digest?: string;
  size?: number;
  state: LayerStateName;
  bytesSent: number;
  /** Repository a cross-repo mount came from (state 'mounted'). */
  mountedFrom?: string;
  /**
   * Layers Ferry compresses (dir:): bytes of the uncompressed tar, when known (from the
   * lookup's hash of it, or the layer's listing). The compressed `size` is known only at the end.
   */
  total?: number;
  /** Bytes of that uncompressed tar the current upload attempt has read (with `total`: a bar). */
  bytesRead?: number;
}

/** A patch a worker applies to one layer; every field optional. */
export type LayerPatch = Partial<Omit<LayerState, 'imageIndex' | 'index'>>;

export interface ManifestRef {
  digest: string;
  mediaType: string;
  size: number;
}

/** One pushed manifest per tag (schema1) and/or per platform (an index's images). */
export interface TaggedManifest extends ManifestRef {
  tag?: string;
  platform?: string;
}

export interface PushError {
  code: string;
  message: string;
}

/** A signature the coordinator made: kind (cosign, pgp, schema1), the signed digest, the key fingerprint, and where it is (tag, lookaside path). */
export type SignatureRecord = Record<string, unknown>;

/** How one target of a (fan-out) push ended. */
export interface TargetResult {
  target: string;
  status: 'succeeded' | 'failed';
  manifest?: ManifestRef;
  error?: PushError;
}

export interface PushState {
  id: string;
  status: PushStatus;
  source: string;
  target: string;
  /** Fan-out: each target's outcome (once the push ended). */
  targets?: TargetResult[];
  tags: string[];
  request: PushRequest;
  layers: LayerState[];
  manifest?: ManifestRef;
  manifests?: TaggedManifest[];
  signatures?: SignatureRecord[];
  error?: PushError;
  /** ISO-8601 times. */
  createdAt: string;
  /** Last progress (bytes the registry accepted, a job finished): the retry budget counts from here. */
  progressAt?: string;
  /** The last transient failure of any of the push's jobs (named when the retry budget is spent). */
  lastCause?: PushError;
  startedAt?: string;
  finishedAt?: string;
}

export interface PushSummary {
  id: string;
  status: PushStatus;
  source: string;
  target: string;
  createdAt: string;
  finishedAt?: string;
}

/** What the coordinator reports when a push succeeds. */
export interface PushResult {
  manifest: ManifestRef;
  /** Fan-out: every target's outcome (all succeeded). */
  targets?: TargetResult[];
  manifests?: TaggedManifest[];
  signatures?: SignatureRecord[];
}

/**
 * Progress events in a push's stream (SSE `data:`, CLI `--json` lines).
 * The store appends `status` and `layer` events itself (create, setStatus,
 * updateLayer, finish, cancel); workers append the others with appendEvent.
 * `at` (ISO time) is filled in by the store when missing.
 */
export type PushEvent =
  | {
      type: 'status';
      status: PushStatus;
      /** On succeeded. */
      manifest?: ManifestRef;
      manifests?: TaggedManifest[];
      /** On failed (and cancelled: FERRY_CANCELLED). */
      error?: PushError;
      /** Fan-out: each target's outcome, on succeeded and failed. */
      targets?: TargetResult[];
      at?: string;
    }
  | ({ type: 'layer'; at?: string } & LayerState)
  | {
      /** A manifest (or index) was PUT by digest. */
      type: 'manifest';
      digest: string;
      mediaType: string;
      size: number;
      platform?: string;
      at?: string;
    }
  | { type: 'tag'; tag: string; digest: string; at?: string }
  | { type: 'signature'; kind: 'cosign' | 'pgp' | 'schema1'; digest: string; at?: string }
  | { type: 'log'; level?: 'info' | 'warn'; message: string; at?: string }
  | WaitingEvent;

/**
 * A job of the push failed transiently (registry unreachable, 5xx, 429, a
 * stall, no permit) and waits — delayed, holding no worker slot — until
 * nextTryAt. The push fails FERRY_RETRY_BUDGET_SPENT once it has gone
 * FERRY_RETRY_BUDGET seconds without progress.
 */
export interface WaitingEvent {
  type: 'waiting';
  /** host[:port] the job was talking to. */
  registry: string;
  /** How many times this job has failed transiently in a row (1 on the first wait). */
  attempt: number;
  /** ISO-8601 time of the next try. */
  nextTryAt: string;
  /** Seconds of the retry budget left (FERRY_RETRY_BUDGET minus the time since the push's last progress). */
  budgetLeftSeconds: number;
  /** What the job failed with. */
  cause: PushError;
  /** The job that waits. */
  jobId?: string;
  at?: string;
}

export type PushEventType = PushEvent['type'];

/** An event as read back: the stream entry id is the SSE event id. */
export interface StoredEvent {
  id: string;
  event: PushEvent;
}
