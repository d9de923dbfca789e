import { createServer, type Server } from 'node:http';

export interface HealthServerOptions {
  port: number;
  host?: string;
  /** /readyz answers 200 when this resolves true (e.g. Redis answers PING). */
  ready: () => Promise<boolean>;
  /** /metrics body in Prometheus text format, if the role has any. */
  metrics?: () => Promise<string>;
}

/** /healthz, /readyz and /metrics for a worker role (FERRY_HEALTH_PORT). */
export async function startHealthServer(
  opts: HealthServerOptions,
): Promise<{ server: Server; port: number; close(): Promise<void> }> {
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
        (text) => send(200, text, 'text/plain; version=0.0.4'),
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
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
