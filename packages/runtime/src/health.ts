import { createServer, type Server } from 'node:http';
import { collectDefaultMetrics, Gauge, Registry } from 'prom-client';
import type { MetricSnapshot } from '@ferry/queue';

export interface HealthServerOptions {
  port: number;
  host?: string;
  /** /readyz answers 200 when this resolves true (e.g. Redis answers PING). */
  ready: () => Promise<boolean>;
  /** /metrics body in Prometheus text format, if the role has any. */
  metrics?: () => Promise<string>;
  /** Content-Type of the /metrics body (default Prometheus text 0.0.4). */
  metricsContentType?: string;
}

export interface HealthServer {
  server: Server;
  port: number;
  close(): Promise<void>;
}

const TEXT_0_0_4 = 'text/plain; version=0.0.4; charset=utf-8';

/** /healthz, /readyz and /metrics for a worker role (FERRY_HEALTH_PORT). */
export async function startHealthServer(opts: HealthServerOptions): Promise<HealthServer> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const send = (status: number, body: string, type = 'application/json') => {
      res.writeHead(status, { 'content-type': type });
      res.end(body);
    };
    if (path === '/healthz') return send(200, '{"status":"ok"}');
    if (path === '/readyz') {
      opts.ready().then(
        (ok) => send(ok ? 200 : 503, JSON.stringify({ status: ok ? 'ready' : 'not ready' })),
        () => send(503, '{"status":"not ready"}'),
      );
      return;
    }
    if (path === '/metrics' && opts.metrics) {
      opts.metrics().then(
        (text) => send(200, text, opts.metricsContentType ?? TEXT_0_0_4),
        (e: Error) => send(500, JSON.stringify({ error: e.message })),
      );
      return;
    }
    send(404, '{"error":{"code":"FERRY_NOT_FOUND","message":"no such route"}}');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host ?? '0.0.0.0', () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.port;
  return {
    server,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      }),
  };
}

export interface MetricsEndpointOptions {
  /** Prefix of this process' prom-client default metrics (`ferry_api_`, `ferry_worker_`). */
  prefix: string;
  /**
   * The Redis-backed (cluster) metrics. When it rejects or takes longer than
   * timeoutMs, the scrape leaves them out and ferry_redis_up is 0.
   */
  cluster?: () => Promise<MetricSnapshot[]>;
  /** Default 2 000 ms: well inside Prometheus' default 10 s scrape timeout. */
  timeoutMs?: number;
}

export interface MetricsEndpoint {
  readonly contentType: string;
  /** The whole exposition; never rejects because Redis is down. */
  metrics(): Promise<string>;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
    timer.unref();
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

/** A metric whose values were read already (from Redis), in the shape prom-client's Registry reads. */
function readMetric(snap: MetricSnapshot) {
  const values = snap.values.filter((v) => Number.isFinite(v.value));
  return {
    name: snap.name,
    help: snap.help,
    type: snap.type,
    aggregator: snap.aggregator,
    get: async () => ({ ...snap, values }),
    reset: () => undefined,
  };
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(\s+-?\d+)?$/;

/**
 * prom-client's default metrics as `promtool check metrics` accepts them:
 * a gauge named `…_total` — a suffix only counters may have — is left out
 * when it sums a family of the same name without it
 * (nodejs_active_handles_total = sum of nodejs_active_handles{type}), else it
 * loses the suffix; and samples that are not a number yet (the
 * event-loop lag's mean before any sample: prom-client prints `Nan`) are left
 * out rather than exposed as NaN.
 */
export function promtoolClean(text: string): string {
  const families = new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));
  const renamed = new Map<string, string>();
  const dropped = new Set<string>();
  for (const m of text.matchAll(/^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) gauge$/gm)) {
    const name = m[1]!;
    if (!name.endsWith('_total')) continue;
    const bare = name.slice(0, -'_total'.length);
    // nodejs_active_handles_total is the sum of nodejs_active_handles{type}: redundant
    if (families.has(bare)) dropped.add(name);
    else renamed.set(name, bare);
  }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*)( .*)?$/.exec(line);
    if (meta) {
      if (dropped.has(meta[2]!)) continue;
      const name = renamed.get(meta[2]!) ?? meta[2]!;
      out.push(`# ${meta[1]} ${name}${meta[3] ?? ''}`);
      continue;
    }
    const sample = SAMPLE.exec(line);
    if (sample) {
      if (dropped.has(sample[1]!)) continue;
      if (!Number.isFinite(Number(sample[3])) && !/^[+-]Inf$/.test(sample[3]!)) continue;
      const name = renamed.get(sample[1]!) ?? sample[1]!;
      out.push(name + line.slice(sample[1]!.length));
      continue;
    }
    out.push(line);
  }
  return out.join('\n');
}

/**
 * /metrics of a Ferry process (the API's, a worker's health port): this
 * process' own prom-client default metrics, `ferry_redis_up`, and — when Redis
 * answers — the cluster metrics read from it. With Redis down the scrape still
 * succeeds: the process' own metrics, `ferry_redis_up 0`, and no Redis-backed
 * series (never a 503, never NaN).
 */
export function createMetricsEndpoint(opts: MetricsEndpointOptions): MetricsEndpoint {
  const own = new Registry();
  collectDefaultMetrics({ register: own, prefix: opts.prefix });
  const redisUp = new Gauge({
    name: 'ferry_redis_up',
    help: '1 when Redis answered this scrape (the cluster metrics are included), 0 when not (they are left out)',
    registers: [own],
  });
  const timeoutMs = opts.timeoutMs ?? 2_000;
  return {
    contentType: own.contentType,
    async metrics() {
      let cluster: MetricSnapshot[] | undefined;
      if (opts.cluster) {
        try {
          cluster = await withTimeout(opts.cluster(), timeoutMs);
        } catch {
          cluster = undefined;
        }
      }
      redisUp.set(cluster ? 1 : 0);
      const text = promtoolClean(await own.metrics());
      if (!cluster) return text;
      // A registry per scrape: concurrent scrapes never see each other's reading.
      const read = new Registry();
      for (const snap of cluster) read.registerMetric(readMetric(snap) as never);
      return text + (await read.metrics());
    },
  };
}
