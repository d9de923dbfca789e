import { Registry, collectDefaultMetrics } from 'prom-client';
import { PUSH_STATUSES, type FerryQueues, type MetricSnapshot, type PushStore } from '@ferry/queue';

/**
 * /metrics: the cluster-wide counters every role adds to Redis (PushStore's
 * Metrics), pushes by current status, queue depths, and this process' own
 * runtime metrics.
 */
export function createMetricsRegistry(store: PushStore, queues: FerryQueues): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'ferry_api_' });

  // One Redis read per scrape, shared by the cluster metrics.
  let pending: Promise<MetricSnapshot[]> | undefined;
  const snapshot = () => {
    pending ??= store.metrics.snapshot().finally(() => setTimeout(() => (pending = undefined), 0));
    return pending;
  };
  for (const name of [
    'ferry_pushes_total',
    'ferry_blobs_total',
    'ferry_bytes_uploaded_total',
    'ferry_push_duration_seconds',
    'ferry_blob_upload_duration_seconds',
  ]) {
    registry.registerMetric(
      external(name, async () => (await snapshot()).find((m) => m.name === name)) as never,
    );
  }
  registry.registerMetric(
    external('ferry_pushes', async () => {
      const values = await Promise.all(
        PUSH_STATUSES.map(async (status) => ({
          value: await store.redis.zcard(store.keys.index(status)),
          labels: { status },
        })),
      );
      return {
        name: 'ferry_pushes',
        help: 'Pushes in Redis (within FERRY_STATE_TTL) by status',
        type: 'gauge',
        aggregator: 'sum',
        values,
      };
    }) as never,
  );
  registry.registerMetric(
    external('ferry_queue_jobs', async () => {
      const values: MetricSnapshot['values'] = [];
      for (const q of [queues.lookup, queues.upload, queues.assemble]) {
        const counts = await q.getJobCounts(
          'waiting',
          'active',
          'delayed',
          'waiting-children',
          'failed',
          'completed',
          'prioritized',
        );
        for (const [state, n] of Object.entries(counts))
          values.push({ value: n, labels: { queue: q.name, state } });
      }
      return {
        name: 'ferry_queue_jobs',
        help: 'Jobs per queue and state',
        type: 'gauge',
        aggregator: 'sum',
        values,
      };
    }) as never,
  );
  return registry;
}

/** A metric whose values come from elsewhere (Redis), in the shape prom-client's Registry reads. */
function external(name: string, get: () => Promise<unknown>) {
  return {
    name,
    help: name,
    type: 'gauge',
    aggregator: 'sum',
    get: async () =>
      (await get()) ?? { name, help: name, type: 'gauge', aggregator: 'sum', values: [] },
    reset: () => undefined,
  };
}
