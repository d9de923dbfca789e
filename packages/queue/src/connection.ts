import { Redis, type RedisOptions } from 'ioredis';

export type ConnectionRole = 'worker' | 'producer';

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
  /** Extra ioredis options (tests). */
  extra?: RedisOptions;
}

/** An ioredis connection set up for its role. Never logs the URL (it may hold a password). */
export function createConnection(url: string, opts: ConnectionOptions): Redis {
  const base: RedisOptions =
    opts.role === 'worker'
      ? { maxRetriesPerRequest: null, enableReadyCheck: true }
      : {
          maxRetriesPerRequest: 1,
          enableOfflineQueue: false,
          connectTimeout: 5_000,
        };
  const client = new Redis(url, {
    ...base,
    connectionName: opts.name,
    // Reconnect forever with a capped delay: the role stays up and /readyz says why.
    retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times, 6), 5_000),
    ...opts.extra,
  });
  // Without a listener ioredis prints every connection error; callers watch status instead.
  client.on('error', () => undefined);
  return client;
}

/** Resolves once the connection is ready, or rejects after timeoutMs. */
export async function waitReady(client: Redis, timeoutMs = 10_000): Promise<void> {
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
