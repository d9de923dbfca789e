import { BlobIndex } from './blobs';
import {
  createConnection,
  waitReady,
  type ConnectionRole,
  type RedisConnection,
  type RedisTarget,
} from './connection';
import { hashTag } from './keys';
import { Lease } from './lease';
import { Metrics } from './metrics';
import { PushStore } from './push-store';
import { createQueues, type FerryQueues } from './queues';
import { Semaphore } from './semaphore';
import { SigningStore } from './signing-store';

/** The config fields the queue package needs (a subset of @ferry/config's FerryConfig). */
export interface QueueConfig {
  /** One node, a Cluster or a Sentinel-watched master (@ferry/config's `redis`). */
  redis: RedisTarget;
  queuePrefix: string;
  stateTtl: number;
  lookupConcurrency: number;
}

/** Everything a role needs from Redis, on one connection (workers make their own blocking ones). */
export interface QueueContext {
  readonly connection: RedisConnection;
  readonly queues: FerryQueues;
  readonly store: PushStore;
  readonly metrics: Metrics;
  readonly blobs: BlobIndex;
  /** One upload of a blob per registry at a time: key = `${registry}/${digest}`. */
  readonly uploadLease: Lease;
  /** FERRY_LOOKUP_CONCURRENCY existence checks per registry: key = registry host[:port]. */
  readonly lookupSemaphore: Semaphore;
  /** Published verification keys, lookaside signatures, signature-tag locks. */
  readonly signing: SigningStore;
  close(): Promise<void>;
}

export interface QueueContextOptions {
  role: ConnectionRole;
  name?: string;
  /** Wait for Redis before returning (default true). */
  waitReady?: boolean;
  readyTimeoutMs?: number;
}

/** Opens a connection and builds the queues, store, metrics, blob index, lease and semaphore on it. */
export async function openQueueContext(
  config: QueueConfig,
  opts: QueueContextOptions,
): Promise<QueueContext> {
  const prefix = config.queuePrefix;
  if (config.redis.mode === 'cluster' && hashTag(prefix) === undefined) {
    // BullMQ's scripts and Ferry's touch several keys at once: on a Cluster they must share a slot.
    throw new Error(
      `queue prefix ${JSON.stringify(prefix)} has no {hash tag}; Redis Cluster needs one, e.g. {ferry}`,
    );
  }
  const connection = createConnection(config.redis, { role: opts.role, name: opts.name });
  try {
    if (opts.waitReady !== false) await waitReady(connection, opts.readyTimeoutMs ?? 10_000);
  } catch (err) {
    connection.disconnect();
    throw err;
  }
  const metrics = new Metrics(connection, prefix);
  const queues = createQueues({ connection, prefix });
  const store = new PushStore(connection, { prefix, ttlSeconds: config.stateTtl, metrics });
  return {
    connection,
    queues,
    metrics,
    store,
    blobs: new BlobIndex(connection, { prefix }),
    uploadLease: new Lease(connection, { prefix }),
    signing: new SigningStore(connection, { prefix }),
    lookupSemaphore: new Semaphore(connection, {
      prefix,
      name: 'lookup',
      limit: config.lookupConcurrency,
    }),
    async close() {
      store.close();
      await queues.close();
      connection.disconnect();
    },
  };
}
