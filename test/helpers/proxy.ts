import { createServer, connect, type Socket } from 'node:net';

export interface ProxyHandle {
  /** "127.0.0.1:PORT" — use it in place of the target's host. */
  host: string;
  port: number;
  /** Total bytes client → target so far (since start or resetCounters). */
  readonly bytesUp: number;
  /** Total bytes target → client so far. */
  readonly bytesDown: number;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Connections destroyed by cutOnceAfter so far. */
  readonly cuts: number;
  /**
   * Arms a one-shot fault: the first connection whose client → target bytes,
   * counted from this call (so a kept-alive connection's earlier requests do not
   * count), pass `bytes` gets exactly `bytes` through and is then destroyed with a
   * TCP reset on both sides; after that everything flows again.
   */
  cutOnceAfter(bytes: number): void;
  /**
   * Arms a one-shot hold: the next request whose first bytes are `METHOD ` (e.g.
   * 'PATCH') is held before a byte of it reaches the target, with its connection
   * paused. Resolves once a request is held; release() lets it through.
   * `skip`: let that many such requests through first, and hold the one after.
   */
  holdNext(method: string, opts?: { skip?: number }): Promise<void>;
  /** Forwards the held request (if any) and everything its client sent after it. */
  release(): void;
  /**
   * Drops the held request without forwarding a byte of it: its client
   * connection is reset and the upstream connection (idle between requests)
   * is closed. Nothing of the held request reaches the target.
   */
  dropHeld(): void;
  /**
   * Requests seen so far (forwarded or held) that start with `METHOD ` at the
   * beginning of a chunk from the client — how HTTP/1.1 clients write a new
   * request on a connection (after the previous response).
   */
  requests(method: string): number;
  /** Requests held by holdNext so far. */
  readonly holds: number;
  resetCounters(): void;
  /**
   * Random faults on every new request (a chunk starting with `METHOD /`), drawn
   * from `rng` (seed it so a failure replays): with probability `reset` the
   * connection is reset after a random 0..resetWithin further client bytes
   * (mid-body for an upload); with `error500` / `error429` the proxy answers the
   * request itself (`Connection: close`, 429 with `Retry-After: 1`) and forwards
   * none of it. `methods` limits which requests are faulted. Pass undefined to stop.
   */
  chaos(opts: ChaosOptions | undefined): void;
  /** Faults injected by chaos() so far, by kind. */
  readonly injected: { reset: number; error500: number; error429: number; refused: number };
  /**
   * While on, every connection (new or open) is reset at once: the target looks
   * unreachable. Off lets connections through again.
   */
  refuse(on: boolean): void;
  stop(): Promise<void>;
}

export interface ChaosOptions {
  rng: () => number;
  reset?: number;
  error500?: number;
  error429?: number;
  /** Bytes after the request start within which a reset happens; default 256 KiB. */
  resetWithin?: number;
  methods?: string[];
}

/**
 * A TCP proxy on 127.0.0.1 (free port) in front of target, counting raw bytes
 * both ways and able to cut one connection after N upstream bytes.
 */
export async function startProxy(target: { host: string; port: number }): Promise<ProxyHandle> {
  if (!target || typeof target.host !== 'string' || !Number.isInteger(target.port)) {
    throw new Error('startProxy: target must be { host: string; port: number }');
  }
  let bytesUp = 0;
  let bytesDown = 0;
  let connections = 0;
  let cuts = 0;
  let cutAt: number | undefined;
  let armed = 0; // bumped by every cutOnceAfter; a connection counts toward the cut from then on
  let holdMethod: Buffer | undefined;
  let holdSkip = 0;
  const seen = new Map<string, number>();
  let onHeld: (() => void) | undefined;
  let releaseHeld: (() => void) | undefined;
  let dropHeldNow: (() => void) | undefined;
  let holds = 0;
  const sockets = new Set<Socket>();
  let chaos: ChaosOptions | undefined;
  let refusing = false;
  const injected = { reset: 0, error500: 0, error429: 0, refused: 0 };

  const server = createServer((client) => {
    connections++;
    if (refusing) {
      injected.refused++;
      client.on('error', () => undefined);
      client.resetAndDestroy();
      return;
    }
    let localCut: number | undefined; // a chaos reset armed on this connection: cut once up passes it
    let up = 0; // client → target bytes of this connection since the last arming
    let seenArm = armed;
    const upstream = connect({ host: target.host, port: target.port });
    sockets.add(client);
    sockets.add(upstream);
    const cut = () => {
      // resetAndDestroy sends RST, like a dropped network path, not a clean FIN.
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    };
    let held: Buffer[] | undefined;
    const forward = (chunk: Buffer) => {
      up += chunk.length;
      bytesUp += chunk.length;
      if (!upstream.write(chunk)) {
        client.pause();
        upstream.once('drain', () => client.resume());
      }
    };
    client.on('data', (chunk: Buffer) => {
      if (held) {
        held.push(chunk);
        return;
      }
      const start = /^([A-Z]+) \//.exec(chunk.subarray(0, 16).toString('latin1'));
      if (start) seen.set(start[1], (seen.get(start[1]) ?? 0) + 1);
      if (start && chaos && (!chaos.methods || chaos.methods.includes(start[1]))) {
        const roll = chaos.rng();
        const pReset = chaos.reset ?? 0;
        const p500 = chaos.error500 ?? 0;
        const p429 = chaos.error429 ?? 0;
        if (roll < pReset) {
          injected.reset++;
          localCut = up + Math.floor(chaos.rng() * (chaos.resetWithin ?? 256 * 1024));
        } else if (roll < pReset + p500 + p429) {
          const is500 = roll < pReset + p500;
          if (is500) injected.error500++;
          else injected.error429++;
          const status = is500 ? '500 Internal Server Error' : '429 Too Many Requests';
          const body = '{"errors":[{"code":"UNAVAILABLE","message":"fault proxy"}]}';
          client.pause();
          client.end(
            `HTTP/1.1 ${status}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n` +
              (is500 ? '' : 'retry-after: 1\r\n') +
              `connection: close\r\n\r\n${body}`,
          );
          upstream.destroy();
          return;
        }
      }
      if (localCut !== undefined && up + chunk.length > localCut) {
        const keep = localCut - up;
        localCut = undefined;
        if (keep > 0) {
          up += keep;
          bytesUp += keep;
          upstream.write(chunk.subarray(0, keep), () => cut());
          client.pause();
        } else {
          cut();
        }
        return;
      }
      if (
        holdMethod &&
        chunk.subarray(0, holdMethod.length).equals(holdMethod) &&
        holdSkip-- <= 0
      ) {
        holdMethod = undefined;
        holds++;
        held = [chunk];
        client.pause();
        releaseHeld = () => {
          const chunks = held ?? [];
          held = undefined;
          for (const c of chunks) forward(c);
          client.resume();
        };
        dropHeldNow = () => {
          held = undefined;
          client.resetAndDestroy();
          upstream.destroy();
        };
        onHeld?.();
        return;
      }
      if (seenArm !== armed) {
        seenArm = armed;
        up = 0;
      }
      if (cutAt !== undefined && up + chunk.length > cutAt) {
        const keep = cutAt - up;
        cutAt = undefined;
        cuts++;
        if (keep > 0) {
          up += keep;
          bytesUp += keep;
          upstream.write(chunk.subarray(0, keep), () => cut());
          client.pause();
        } else {
          cut();
        }
        return;
      }
      forward(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      bytesDown += chunk.length;
      if (!client.write(chunk)) {
        upstream.pause();
        client.once('drain', () => upstream.resume());
      }
    });
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', close);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => resolve());
  });
  const address = server.address();
  if (address === null || typeof address === 'string')
    throw new Error('startProxy: no TCP address');
  const port = address.port;

  let stopped: Promise<void> | undefined;
  return {
    host: `127.0.0.1:${port}`,
    port,
    get bytesUp() {
      return bytesUp;
    },
    get bytesDown() {
      return bytesDown;
    },
    get connections() {
      return connections;
    },
    get cuts() {
      return cuts;
    },
    cutOnceAfter(bytes: number) {
      if (!Number.isInteger(bytes) || bytes < 0) {
        throw new Error(`cutOnceAfter: bytes must be a non-negative integer, got ${bytes}`);
      }
      cutAt = bytes;
      armed++;
    },
    get holds() {
      return holds;
    },
    holdNext(method: string, opts: { skip?: number } = {}) {
      if (!/^[A-Z]+$/.test(method)) throw new Error(`holdNext: bad method ${method}`);
      holdMethod = Buffer.from(`${method} `);
      holdSkip = opts.skip ?? 0;
      return new Promise<void>((resolve) => {
        onHeld = () => {
          onHeld = undefined;
          resolve();
        };
      });
    },
    release() {
      const r = releaseHeld;
      releaseHeld = undefined;
      dropHeldNow = undefined;
      r?.();
    },
    dropHeld() {
      const d = dropHeldNow;
      releaseHeld = undefined;
      dropHeldNow = undefined;
      d?.();
    },
    requests(method: string) {
      return seen.get(method) ?? 0;
    },
    chaos(opts: ChaosOptions | undefined) {
      chaos = opts;
    },
    get injected() {
      return { ...injected };
    },
    refuse(on: boolean) {
      refusing = on;
      if (on) {
        for (const s of sockets) s.resetAndDestroy();
        sockets.clear();
      }
    },
    resetCounters() {
      bytesUp = 0;
      bytesDown = 0;
      connections = 0;
      cuts = 0;
      seen.clear();
    },
    stop() {
      stopped ??= new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        sockets.clear();
        server.close(() => resolve());
      });
      return stopped;
    },
  };
}
