/**
 * An HTTP-level fault proxy in front of a real registry: forwards every
 * request (Host header unchanged, so the registry's Locations point back at
 * the proxy) and answers chosen requests itself, once, without forwarding —
 * e.g. a 503 to the 2nd PATCH, which the registry then never saw.
 */
import { createServer, request, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ProxyFault {
  method: string;
  path: RegExp;
  /** Let this many matching requests through first. */
  skip?: number;
  status: number;
  headers?: Record<string, string>;
  body?: string;
  fired?: boolean;
}

export interface FaultProxy {
  host: string;
  port: number;
  log: { method: string; path: string; status: number; faulted: boolean; auth?: string }[];
  addFault(f: ProxyFault): void;
  stop(): Promise<void>;
}

export async function startFaultProxy(target: { host: string; port: number }): Promise<FaultProxy> {
  const faults: ProxyFault[] = [];
  const log: FaultProxy['log'] = [];
  const server = createServer((req: IncomingMessage, res) => {
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const entry = {
      method,
      path,
      status: 0,
      faulted: false,
      ...(req.headers.authorization ? { auth: req.headers.authorization } : {}),
    };
    log.push(entry);
    const fault = faults.find((f) => {
      if (f.fired || f.method !== method || !f.path.test(path)) return false;
      if ((f.skip ?? 0) > 0) {
        f.skip = (f.skip ?? 0) - 1;
        return false;
      }
      return true;
    });
    if (fault) {
      fault.fired = true;
      entry.faulted = true;
      entry.status = fault.status;
      req.resume();
      req.on('end', () => {
        const body = fault.body ?? '';
        res.writeHead(fault.status, {
          'content-length': Buffer.byteLength(body),
          ...(fault.headers ?? {}),
        });
        res.end(body);
      });
      return;
    }
    const up = request(
      { host: target.host, port: target.port, method, path: req.url, headers: req.headers },
      (ur) => {
        entry.status = ur.statusCode ?? 0;
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        ur.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.on('error', () => up.destroy());
    req.pipe(up);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    port,
    log,
    addFault: (f) => faults.push(f),
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
