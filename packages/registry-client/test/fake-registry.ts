/**
 * A small in-memory OCI registry on node:http for protocol corners a real
 * registry will not produce on demand: a 416, a 429 with Retry-After, a PATCH
 * cut at byte N with the session kept consistent (so the offset is
 * resumable), a wrong Docker-Content-Digest. Faults are one-shot rules.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface LoggedRequest {
  method: string;
  path: string;
  headers: IncomingMessage['headers'];
  at: number;
  status?: number;
}

export type FaultAction =
  | { status: number; headers?: Record<string, string>; body?: string }
  /** Read this many body bytes into the session, then destroy the socket. */
  | { cutAfter: number };

export interface Fault {
  method: string;
  /** Matched against the path (without query). */
  path: RegExp;
  /** Skip this many matching requests before firing. Default 0. */
  skip?: number;
  action: FaultAction;
  fired?: boolean;
}

export interface FakeOptions {
  /** Override the digest the fake reports for a manifest PUT. */
  manifestDigest?: (body: Buffer, contentType: string) => string;
  /** OCI-Chunk-Min-Length on the POST response. */
  minChunk?: number;
  /** Use absolute Locations (default: relative). */
  absoluteLocations?: boolean;
  /** Check each request; return a response to short-circuit (auth tests). */
  gate?: (req: IncomingMessage) => { status: number; headers?: Record<string, string> } | undefined;
}

export interface FakeRegistry {
  host: string;
  port: number;
  url: string;
  requests: LoggedRequest[];
  blobs: Map<string, Buffer>;
  manifests: Map<string, Buffer>;
  sessions: Map<string, Buffer[]>;
  faults: Fault[];
  addFault(f: Fault): void;
  stop(): Promise<void>;
}

function sha256(b: Buffer): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex');
}

function ociError(res: ServerResponse, status: number, code: string, message: string): void {
  const body = JSON.stringify({ errors: [{ code, message }] });
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => resolve(Buffer.concat(parts)));
    req.on('error', reject);
  });
}

function size(parts: Buffer[]): number {
  return parts.reduce((n, b) => n + b.length, 0);
}

export async function startFakeRegistry(opts: FakeOptions = {}): Promise<FakeRegistry> {
  const requests: LoggedRequest[] = [];
  const blobs = new Map<string, Buffer>();
  const manifests = new Map<string, Buffer>();
  const sessions = new Map<string, Buffer[]>();
  const faults: Fault[] = [];
  let base = '';

  const locationFor = (name: string, id: string): string =>
    (opts.absoluteLocations ? base : '') + `/v2/${name}/blobs/uploads/${id}`;

  const rangeOf = (parts: Buffer[]): string => `0-${Math.max(0, size(parts) - 1)}`;

  async function handle(
    req: IncomingMessage,
    res: ServerResponse,
    log: LoggedRequest,
  ): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const path = url.pathname;
    const method = req.method ?? 'GET';

    const gated = opts.gate?.(req);
    if (gated) {
      await readBody(req);
      res.writeHead(gated.status, gated.headers);
      res.end();
      return;
    }

    for (const f of faults) {
      if (f.fired || f.method !== method || !f.path.test(path)) continue;
      if ((f.skip ?? 0) > 0) {
        f.skip = (f.skip ?? 0) - 1;
        continue;
      }
      f.fired = true;
      if ('cutAfter' in f.action) {
        const limit = f.action.cutAfter;
        const m = /^\/v2\/(.+)\/blobs\/uploads\/([^/]+)$/.exec(path);
        const parts = m ? sessions.get(m[2]!) : undefined;
        let got = 0;
        await new Promise<void>((resolve) => {
          req.on('data', (c: Buffer) => {
            if (got >= limit) return;
            const keep = c.subarray(0, limit - got);
            got += keep.length;
            parts?.push(keep);
            if (got >= limit) {
              req.socket.destroy();
              resolve();
            }
          });
          req.on('end', resolve);
          req.on('close', resolve);
        });
        log.status = -1;
        return;
      }
      await readBody(req);
      const body = f.action.body ?? '';
      res.writeHead(f.action.status, {
        'content-length': Buffer.byteLength(body),
        ...(f.action.headers ?? {}),
      });
      res.end(body);
      log.status = f.action.status;
      return;
    }

    if (path === '/v2/' || path === '/v2') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
      return;
    }

    let m = /^\/v2\/(.+)\/blobs\/uploads\/?$/.exec(path);
    if (m && method === 'POST') {
      await readBody(req);
      const name = m[1]!;
      const mount = url.searchParams.get('mount');
      if (mount && blobs.has(mount)) {
        res.writeHead(201, {
          location: `/v2/${name}/blobs/${mount}`,
          'docker-content-digest': mount,
          'content-length': 0,
        });
        res.end();
        return;
      }
      const id = randomUUID();
      sessions.set(id, []);
      const headers: Record<string, string | number> = {
        location: locationFor(name, id),
        range: '0-0',
        'docker-upload-uuid': id,
        'content-length': 0,
      };
      if (opts.minChunk) headers['oci-chunk-min-length'] = opts.minChunk;
      res.writeHead(202, headers);
      res.end();
      return;
    }

    m = /^\/v2\/(.+)\/blobs\/uploads\/([^/]+)$/.exec(path);
    if (m) {
      const [, name, id] = m as unknown as [string, string, string];
      const parts = sessions.get(id);
      if (!parts) {
        await readBody(req);
        return ociError(res, 404, 'BLOB_UPLOAD_UNKNOWN', 'blob upload unknown to registry');
      }
      if (method === 'GET') {
        res.writeHead(204, {
          location: locationFor(name, id),
          range: rangeOf(parts),
          'docker-upload-uuid': id,
        });
        res.end();
        return;
      }
      if (method === 'DELETE') {
        sessions.delete(id);
        res.writeHead(204);
        res.end();
        return;
      }
      if (method === 'PATCH') {
        const cr = req.headers['content-range'];
        if (cr) {
          const r = /^(\d+)-(\d+)$/.exec(String(cr));
          if (!r || Number(r[1]) !== size(parts)) {
            await readBody(req);
            res.writeHead(416, {
              location: locationFor(name, id),
              range: rangeOf(parts),
              'content-length': 0,
            });
            res.end();
            return;
          }
        }
        const body = await readBody(req);
        parts.push(body);
        res.writeHead(202, {
          location: locationFor(name, id),
          range: rangeOf(parts),
          'content-length': 0,
        });
        res.end();
        return;
      }
      if (method === 'PUT') {
        const body = await readBody(req);
        if (body.length) parts.push(body);
        const all = Buffer.concat(parts);
        const want = url.searchParams.get('digest') ?? '';
        if (sha256(all) !== want)
          return ociError(
            res,
            400,
            'DIGEST_INVALID',
            'provided digest did not match uploaded content',
          );
        blobs.set(want, all);
        sessions.delete(id);
        res.writeHead(201, {
          location: `/v2/${name}/blobs/${want}`,
          'docker-content-digest': want,
          'content-length': 0,
        });
        res.end();
        return;
      }
    }

    m = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64})$/.exec(path);
    if (m && (method === 'HEAD' || method === 'GET')) {
      const b = blobs.get(m[2]!);
      if (!b) {
        if (method === 'HEAD') {
          res.writeHead(404);
          res.end();
          return;
        }
        return ociError(res, 404, 'BLOB_UNKNOWN', 'blob unknown to registry');
      }
      res.writeHead(200, { 'content-length': b.length, 'docker-content-digest': m[2]! });
      res.end(method === 'GET' ? b : undefined);
      return;
    }

    m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(path);
    if (m) {
      const [, name, ref] = m as unknown as [string, string, string];
      if (method === 'PUT') {
        const body = await readBody(req);
        const ct = String(req.headers['content-type'] ?? '');
        const digest = opts.manifestDigest ? opts.manifestDigest(body, ct) : sha256(body);
        manifests.set(`${name}:${ref}`, body);
        res.writeHead(201, {
          'docker-content-digest': digest,
          location: `/v2/${name}/manifests/${digest}`,
          'content-length': 0,
        });
        res.end();
        return;
      }
      const body = manifests.get(`${name}:${ref}`);
      if (!body) return ociError(res, 404, 'MANIFEST_UNKNOWN', 'manifest unknown');
      res.writeHead(200, {
        'content-type': 'application/vnd.oci.image.manifest.v1+json',
        'content-length': body.length,
        'docker-content-digest': sha256(body),
      });
      res.end(method === 'GET' ? body : undefined);
      return;
    }

    await readBody(req);
    ociError(res, 404, 'NAME_UNKNOWN', `no route for ${method} ${path}`);
  }

  const server: Server = createServer((req, res) => {
    const log: LoggedRequest = {
      method: req.method ?? '',
      path: req.url ?? '',
      headers: req.headers,
      at: Date.now(),
    };
    requests.push(log);
    res.on('finish', () => {
      if (log.status === undefined) log.status = res.statusCode;
    });
    handle(req, res, log).catch((e: Error) => {
      if (!res.headersSent) {
        res.writeHead(500);
        res.end(String(e.message));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const host = `127.0.0.1:${port}`;
  base = `http://${host}`;
  return {
    host,
    port,
    url: base,
    requests,
    blobs,
    manifests,
    sessions,
    faults,
    addFault(f: Fault) {
      faults.push(f);
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A server that records whether anyone connected (for "refused target" checks). */
export async function startTrap(): Promise<{
  host: string;
  port: number;
  hits: number;
  stop(): Promise<void>;
}> {
  const state = { hits: 0 };
  const server = createServer((req, res) => {
    state.hits++;
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"token":"stolen"}');
  });
  server.on('connection', () => state.hits++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `localhost:${port}`,
    port,
    get hits() {
      return state.hits;
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
