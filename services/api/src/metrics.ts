import { createMetricsEndpoint, type MetricsEndpoint } from '@ferry/runtime';
import type { FerryQueues, PushStore } from '@ferry/queue';

/**
 * /metrics: this process' runtime metrics (prefix ferry_api_), ferry_redis_up,
 * and — while Redis answers — the cluster-wide counters every role adds to
 * Redis, pushes by current status and queue depths. With Redis down the scrape
 * still answers 200 without the Redis-backed series and with ferry_redis_up 0.
 */
export function createApiMetrics(store: PushStore, queues: FerryQueues): MetricsEndpoint {
  return createMetricsEndpoint({
    prefix: 'ferry_api_',
    cluster: () => store.metrics.clusterSnapshot([queues.lookup, queues.upload, queues.assemble]),
  });
}
