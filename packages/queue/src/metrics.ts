import type { RedisConnection } from './connection';
import { Keys } from './keys';
import { Script } from './script';
import { PUSH_STATUSES } from './types';

/** The queues whose job counts are shown (FerryQueues' lookup, upload and assemble). */
interface CountedQueue {
  readonly name: string;
  getJobCounts(...states: string[]): Promise<Record<string, number>>;
}

/** Job states shown per queue in ferry_queue_jobs. */
const QUEUE_STATES = [
  'waiting',
  'active',
  'delayed',
  'waiting-children',
  'failed',
  'completed',
  'prioritized',
];

/**
 * Cluster-wide metrics: every role adds to one Redis hash, and the API's
 * /metrics reads it, so Prometheus sees the whole cluster from one endpoint.
 *
 * Fields of the hash (JSON arrays): `[name, 'v', labels]` a counter;
 * `[name, 'h', labels, le]` observations of a histogram that fell in the
 * bucket `le` and in no smaller one; `[name, 's', labels]` a histogram's sum.
 * An observation is ONE command (the script below: its bucket and the sum,
 * atomically); /metrics adds the buckets up into Prometheus' cumulative ones.
 * Written by releases before this layout and still read (a rolling upgrade
 * loses nothing): `[name, 'b', labels, le]` cumulative buckets, one field per
 * bucket the value fitted, and `[name, 'c', labels]` the count — ~14
 * commands per observation.
 */
export const METRIC_DEFS = {
  ferry_pushes_total: {
    type: 'counter',
    help: 'Pushes finished, by final status',
    buckets: undefined,
  },
  ferry_blobs_total: {
    type: 'counter',
    help: 'Layer blobs by result: exists (HEAD found it), mounted (cross-repo mount), uploaded',
    buckets: undefined,
  },
  ferry_bytes_uploaded_total: {
    type: 'counter',
    help: 'Blob bytes sent to registries (compressed, as sent)',
    buckets: undefined,
  },
  ferry_push_duration_seconds: {
    type: 'histogram',
    help: 'Time from a push being accepted to its final status',
    buckets: [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600],
  },
  ferry_blob_upload_duration_seconds: {
    type: 'histogram',
    help: 'Time to upload one blob',
    buckets: [0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600],
  },
} as const;

export type MetricName = keyof typeof METRIC_DEFS;
export type CounterName = {
  [K in MetricName]: (typeof METRIC_DEFS)[K]['type'] extends 'counter' ? K : never;
}[MetricName];
export type HistogramName = Exclude<MetricName, CounterName>;
export type Labels = Record<string, string>;

/** prom-client's MetricObject shape (what a metric's get() returns). */
export interface MetricSnapshot {
  name: string;
  help: string;
  type: 'counter' | 'histogram' | 'gauge';
  aggregator: 'sum';
  values: { value: number; labels: Labels; metricName?: string }[];
}

/**
 * One histogram observation: KEYS[1] the metrics hash; ARGV: the bucket field,
 * the sum field, the value. The sum first: a value Redis refuses as a float
 * fails the script before anything is written.
 */
const observeScript = new Script(
  'ferryMetricsObserve',
  `redis.call('HINCRBYFLOAT', KEYS[1], ARGV[2], ARGV[3])
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)`,
);

function sortLabels(labels: Labels): Labels {
  return Object.fromEntries(Object.entries(labels).sort(([a], [b]) => a.localeCompare(b)));
}

export class Metrics {
  private readonly key: string;
  private readonly keys: Keys;
  constructor(
    private readonly redis: RedisConnection,
    prefix: string,
  ) {
    this.keys = new Keys(prefix);
    this.key = this.keys.metrics();
  }

  /** Adds `by` to a counter. */
  async inc(name: CounterName, labels: Labels = {}, by = 1): Promise<void> {
    if (!(by >= 0)) throw new Error(`${name}: counters only go up (got ${by})`);
    await this.redis.hincrbyfloat(this.key, JSON.stringify([name, 'v', sortLabels(labels)]), by);
  }

  /** Records one observation of a histogram: one Redis command (its bucket and the sum). */
  async observe(name: HistogramName, value: number, labels: Labels = {}): Promise<void> {
    if (!Number.isFinite(value)) throw new Error(`${name}: not a finite value (${value})`);
    const l = sortLabels(labels);
    const le = METRIC_DEFS[name].buckets.find((b) => value <= b);
    await observeScript.run(
      this.redis,
      [this.key],
      [
        JSON.stringify([name, 'h', l, le === undefined ? '+Inf' : String(le)]),
        JSON.stringify([name, 's', l]),
        String(value),
      ],
    );
  }

  /** Every metric, in prom-client's MetricObject shape, summed over the cluster. */
  async snapshot(): Promise<MetricSnapshot[]> {
    const raw = await this.redis.hgetall(this.key);
    const out = new Map<string, MetricSnapshot>();
    for (const [name, def] of Object.entries(METRIC_DEFS)) {
      out.set(name, { name, help: def.help, type: def.type, aggregator: 'sum', values: [] });
    }
    const histo = new Map<
      string,
      {
        labels: Labels;
        /** Cumulative buckets as the older layout wrote them ('b'). */
        buckets: Map<string, number>;
        /** Observations per bucket, not cumulative ('h'). */
        own: Map<string, number>;
        sum: number;
        count: number;
      }
    >();
    for (const [field, v] of Object.entries(raw)) {
      let parsed: [string, string, Labels, string?];
      try {
        parsed = JSON.parse(field);
      } catch {
        continue;
      }
      const [name, part, labels, le] = parsed;
      const snap = out.get(name);
      if (!snap) continue;
      const value = Number(v);
      if (!Number.isFinite(value)) continue; // never NaN or ±Inf in the exposition
      if (part === 'v') {
        snap.values.push({ value, labels });
        continue;
      }
      const hk = name + JSON.stringify(labels);
      let h = histo.get(hk);
      if (!h) {
        h = { labels, buckets: new Map(), own: new Map(), sum: 0, count: 0 };
        histo.set(hk, h);
      }
      if (part === 'h' && le) h.own.set(le, value);
      else if (part === 'b' && le) h.buckets.set(le, value);
      else if (part === 's') h.sum = value;
      else if (part === 'c') h.count = value;
    }
    for (const [hk, h] of histo) {
      const name = hk.slice(0, hk.indexOf('{')) as HistogramName;
      const snap = out.get(name);
      if (!snap) continue;
      // Cumulative: the older layout's bucket plus every newer observation at or below it
      // (by value, so a bucket bound that changed between releases still counts in +Inf).
      const own = [...h.own].map(([le, n]) => [le === '+Inf' ? Infinity : Number(le), n] as const);
      const upTo = (bound: number) => own.reduce((a, [le, n]) => (le <= bound ? a + n : a), 0);
      for (const le of [...METRIC_DEFS[name].buckets.map(String), '+Inf']) {
        snap.values.push({
          value: (h.buckets.get(le) ?? 0) + upTo(le === '+Inf' ? Infinity : Number(le)),
          labels: { ...h.labels, le },
          metricName: `${name}_bucket`,
        });
      }
      snap.values.push({ value: h.sum, labels: h.labels, metricName: `${name}_sum` });
      snap.values.push({
        value: h.count + upTo(Infinity),
        labels: h.labels,
        metricName: `${name}_count`,
      });
    }
    return [...out.values()];
  }

  /**
   * Everything a role can read about the cluster, in one go: the counters and
   * histograms above, pushes by current status, and (given the queues) jobs
   * per queue and state. Rejects when Redis does not answer; the caller leaves
   * these metrics out of that scrape.
   */
  async clusterSnapshot(queues?: readonly CountedQueue[]): Promise<MetricSnapshot[]> {
    const [counters, pushes, jobs] = await Promise.all([
      this.snapshot(),
      Promise.all(
        PUSH_STATUSES.map(async (status) => ({
          value: await this.redis.zcard(this.keys.index(status)),
          labels: { status } as Labels,
        })),
      ),
      Promise.all(
        (queues ?? []).map(async (q) => {
          const counts = await q.getJobCounts(...QUEUE_STATES);
          return Object.entries(counts).map(([state, n]) => ({
            value: Number(n) || 0,
            labels: { queue: q.name, state } as Labels,
          }));
        }),
      ),
    ]);
    const out: MetricSnapshot[] = [
      ...counters,
      {
        name: 'ferry_pushes',
        help: 'Pushes in Redis (within FERRY_STATE_TTL) by status',
        type: 'gauge',
        aggregator: 'sum',
        values: pushes,
      },
    ];
    if (queues) {
      out.push({
        name: 'ferry_queue_jobs',
        help: 'Jobs per queue and state',
        type: 'gauge',
        aggregator: 'sum',
        values: jobs.flat(),
      });
    }
    return out;
  }
}
