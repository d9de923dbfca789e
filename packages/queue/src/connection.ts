import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import type { RedisNode, RedisTarget } from '@ferry/config';

export type ConnectionRole = 'worker' | 'producer';

/** A connection Ferry uses: one Redis node (direct or found through Sentinel) or a Redis Cluster. */
export type RedisConnection = Redis | Cluster;

// Where Redis is: the config package's type, one definition for both.
export type { RedisNode, RedisTarget };

export interface ConnectionOptions {
  /**
   * 'worker': blocking BullMQ connections — commands wait through a reconnect
   * (maxRetriesPerRequest: null, as BullMQ requires for Workers).
   * 'producer': the API and other callers that must fail fast when Redis is
   * gone (enableOfflineQueue: false, a few retries).
   */
  role: ConnectionRole;
  /** Shown in CLIENT LIST. */
  name?: string;
  /** Extra ioredis options (tests); for a Cluster they apply to each node's connection. */
  extra?: RedisOptions;
}

/** Reconnect forever with a capped delay: the role stays up and /readyz says why. */
const reconnectDelay = (times: number): number => Math.min(100 * 2 ** Math.min(times, 6), 5_000);

function roleOptions(role: ConnectionRole): RedisOptions {
  return role === 'worker'
    ? { maxRetriesPerRequest: null, enableReadyCheck: true }
    : { maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 5_000 };
}

/** True for an ioredis Cluster client. */
export function isCluster(client: RedisConnection): client is Cluster {
  return (client as { isCluster?: boolean }).isCluster === true;
}

/**
 * The one factory for every connection Ferry makes: an ioredis Redis for a URL
 * or a Sentinel-watched master, an ioredis Cluster for FERRY_REDIS_CLUSTER,
 * set up for its role. Never logs the target (a URL may hold a password).
 */
export function createConnection(url: string, opts: ConnectionOptions): Redis;
export function createConnection(target: RedisTarget, opts: ConnectionOptions): RedisConnection;
export function createConnection(
  target: RedisTarget | string,
  opts: ConnectionOptions,
): RedisConnection {
  const t: RedisTarget = typeof target === 'string' ? { mode: 'standalone', url: target } : target;
  const base = roleOptions(opts.role);
  let client: RedisConnection;
  switch (t.mode) {
    case 'standalone':
      client = new Redis(t.url, {
        ...base,
        connectionName: opts.name,
        retryStrategy: reconnectDelay,
        ...opts.extra,
      });
      break;
    case 'sentinel':
      client = new Redis({
        ...base,
        sentinels: t.sentinels.map((n) => ({ host: n.host, port: n.port })),
        name: t.name,
        role: 'master',
        connectionName: opts.name,
        retryStrategy: reconnectDelay,
        sentinelRetryStrategy: reconnectDelay,
        ...opts.extra,
      });
      break;
    case 'cluster': {
      // ioredis keeps each node's connection queueing while it (re)connects; the
      // Cluster-wide offline queue is what decides whether a caller waits.
      const { enableOfflineQueue = true, ...nodeOptions } = {
        ...base,
        connectionName: opts.name,
        ...opts.extra,
      };
      const options: ClusterOptions = {
        redisOptions: nodeOptions,
        enableOfflineQueue,
        enableReadyCheck: true,
        clusterRetryStrategy: reconnectDelay,
      };
      client = new Cluster(
        t.nodes.map((n) => ({ host: n.host, port: n.port })),
        options,
      );
      break;
    }
  }
  // Without a listener ioredis prints every connection error; callers watch status instead.
  client.on('error', () => undefined);
  return client;
}

/**
 * A second connection to the same Redis for blocking reads (XREAD BLOCK): it
 * waits through reconnects instead of failing a blocked read.
 */
export function blockingDuplicate(client: RedisConnection): RedisConnection {
  let dup: RedisConnection;
  if (isCluster(client)) {
    // Cluster.duplicate merges options shallowly: carry the node options over.
    dup = client.duplicate([], {
      enableOfflineQueue: true,
      redisOptions: { ...client.options.redisOptions, maxRetriesPerRequest: null },
    });
  } else {
    dup = client.duplicate({
      maxRetriesPerRequest: null,
      enableOfflineQueue: true,
      lazyConnect: false,
    });
  }
  dup.on('error', () => undefined);
  return dup;
}

/**
 * The connection to the master that serves `key`: the client itself for one
 * node, the Cluster's connection to the slot's master otherwise (undefined
 * while the Cluster has not loaded its slot table). For commands that name no
 * key but must reach that node (CLIENT ID, CLIENT UNBLOCK).
 */
export function nodeFor(client: RedisConnection, slot: number): Redis | undefined {
  if (!isCluster(client)) return client;
  const nodeKey = client.slots[slot]?.[0];
  if (nodeKey === undefined) return undefined;
  return client
    .nodes('master')
    .find((n) => `${n.options.host ?? '127.0.0.1'}:${n.options.port ?? 6379}` === nodeKey);
}

/** Resolves once the connection is ready, or rejects after timeoutMs. */
export async function waitReady(client: RedisConnection, timeoutMs = 10_000): Promise<void> {
  if (client.status === 'ready') return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`redis not ready after ${timeoutMs} ms (status ${client.status})`));
    }, timeoutMs);
    const onReady = () => {
      cleanup();
      resolve();
    };
    const cleanup = () => {
      clearTimeout(timer);
      client.off('ready', onReady);
    };
    client.on('ready', onReady);
  });
}
