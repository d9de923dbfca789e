/**
 * Gunzip-and-hash for diffIDs, on a worker thread of its own.
 *
 * Checking a gzip layer's diffID means gunzipping it only to hash the output:
 * 400 MB of layers make 400 MB of short-lived 1 MiB output buffers. On the
 * main thread every 64 MB of such external memory makes V8 run a full
 * mark-compact of the whole heap — an upload worker's heap (BullMQ, undici,
 * fastify, winston) — about twenty per 400 MB, which cost the serve process
 * ~0.4 CPU-s per push beside the gunzip itself (profiled: a 96 MB heap made
 * the same gunzip-and-hash cost 2.5 CPU-s instead of 1.5). Here the output
 * buffers live and die in an isolate that holds nothing else, so its
 * collections are cheap, and the uncompressed hashing runs beside the main
 * thread instead of on it.
 *
 * One worker per process, started on first use, held (ref) only while taps
 * are open. Each tap is a stream id: the main thread opens it, posts copies of the
 * blob's chunks; the worker gunzips them (on libuv's pool, as before) and
 * hashes the output, acknowledges each chunk once gunzip has consumed it
 * (the main side's backpressure), and answers the diffID and size at the end
 * — or the gzip error. If the worker dies, every open tap fails; the next tap
 * starts a new worker.
 *
 * A chunk of 256 KiB – 1 MiB (a file read) is copied into a 1 MiB buffer that
 * is transferred to the worker and comes back with the chunk's acknowledgement
 * (at most MAX_SPARE wait for reuse), so neither side allocates per chunk;
 * other chunks are posted as structured clones. With that and a minor
 * collection every 16 MB in the worker, six 40 MB gzip layers read from files
 * and checked at once took 0.82–0.92 CPU-s and peaked at 207–225 MB, against
 * 0.98–1.07 CPU-s and 226–239 MB with clones and a full collection every
 * 48 MB; the oci-push benchmark's first push: 0.92× the time, 2.41 vs 2.55 CPU-s.
 */
import { Worker } from 'node:worker_threads';

/** What a tap learns: the diffID and size, or why the blob is not gzip. */
export type TapResult = { diffId: string; size: number } | { gzipError: Error };

interface TapHandlers {
  /** n bytes of input were consumed by gunzip. */
  onAck(n: number): void;
  onResult(r: TapResult): void;
  /** The worker failed (not the blob): the stream must fail. */
  onFailure(err: Error): void;
}

type ToWorker =
  | { t: 'o'; id: number }
  /** x: buf's ArrayBuffer was transferred, send it back with the ack. */
  | { t: 'w'; id: number; buf: Uint8Array; x?: true }
  | { t: 'e'; id: number }
  | { t: 'x'; id: number };
type FromWorker =
  | { t: 'a'; id: number; n: number; back?: ArrayBuffer }
  | { t: 'd'; id: number; diffId: string; size: number }
  | { t: 'f'; id: number; message: string; code?: string };

/**
 * The worker's code, plain JavaScript with Node built-ins only: it is run from
 * this text (`eval`), so it is the same from compiled JavaScript and under tsx
 * (whose transform would add helpers to a stringified function). Messages are
 * ToWorker / FromWorker.
 */
const WORKER_SOURCE = `
'use strict';
const { parentPort: port } = require('node:worker_threads');
const zlib = require('node:zlib');
const { createHash } = require('node:crypto');
// Left to itself V8 lets spent buffers (posted copies, gunzip output) pile up: six layers
// checked at once peaked 80 MB above the main-thread gunzip. They die young (hashed, then
// dropped), so a minor collection (a scavenge: this isolate holds almost nothing else)
// every GC_EVERY bytes frees them (a full one every 48 MB cost more CPU and memory: see the top).
// Memory only: without gc the diffIDs are the same.
// (Once a worker set the flag, later isolates of the process have a global gc already.)
let collect = typeof globalThis.gc === 'function' ? globalThis.gc : () => undefined;
if (typeof globalThis.gc !== 'function') {
  try {
    require('node:v8').setFlagsFromString('--expose-gc');
    collect = require('node:vm').runInNewContext('gc');
  } catch {}
}
const GC_EVERY = 16 * 1024 * 1024;
let sinceGc = 0;
const spent = (n) => {
  sinceGc += n;
  if (sinceGc >= GC_EVERY) {
    sinceGc = 0;
    collect({ type: 'minor' });
  }
};
const taps = new Map();
port.on('message', (m) => {
  if (m.t === 'o') {
    const id = m.id;
    const hash = createHash('sha256');
    let size = 0;
    const entry = { z: zlib.createGunzip({ chunkSize: 1024 * 1024 }), failed: false };
    taps.set(id, entry);
    entry.z.on('data', (c) => {
      hash.update(c);
      size += c.length;
      spent(c.length);
    });
    entry.z.on('end', () => {
      taps.delete(id);
      port.postMessage({ t: 'd', id, diffId: 'sha256:' + hash.digest('hex'), size });
    });
    entry.z.on('error', (e) => {
      if (entry.failed) return;
      entry.failed = true;
      taps.delete(id);
      port.postMessage({ t: 'f', id, message: e.message, code: e.code });
    });
    return;
  }
  // A tap that failed or was dropped is gone: what was already on its way is ignored.
  const entry = taps.get(m.id);
  if (!entry) return;
  if (m.t === 'w') {
    const id = m.id;
    const n = m.buf.length;
    // A transferred buffer holds no garbage here: it goes back once gunzip has consumed it.
    if (!m.x) spent(n);
    entry.z.write(m.buf, () => {
      if (entry.failed) return;
      if (m.x) port.postMessage({ t: 'a', id, n, back: m.buf.buffer }, [m.buf.buffer]);
      else port.postMessage({ t: 'a', id, n });
    });
  } else if (m.t === 'e') {
    entry.z.end();
  } else {
    taps.delete(m.id);
    entry.failed = true;
    entry.z.destroy();
  }
});
`;

/** Chunks of this size range travel in a transferred buffer of TRANSFER_SIZE (see the top). */
const TRANSFER_MIN = 256 * 1024;
const TRANSFER_SIZE = 1024 * 1024;
const MAX_SPARE = 16;
/** Transfer buffers back from the worker, for the next chunks. */
const spare: ArrayBuffer[] = [];

let worker: Worker | undefined;
let nextId = 1;
const open = new Map<number, TapHandlers>();

function failAll(err: Error): void {
  const handlers = [...open.values()];
  open.clear();
  for (const h of handlers) h.onFailure(err);
}

function theWorker(): Worker {
  if (worker) return worker;
  const w = new Worker(WORKER_SOURCE, { eval: true });
  w.on('message', (m: FromWorker) => {
    const h = open.get(m.id);
    if (!h) return;
    if (m.t === 'a') {
      if (m.back && spare.length < MAX_SPARE) spare.push(m.back);
      h.onAck(m.n);
    } else {
      open.delete(m.id);
      if (open.size === 0) w.unref();
      if (m.t === 'd') h.onResult({ diffId: m.diffId, size: m.size });
      else h.onResult({ gzipError: Object.assign(new Error(m.message), { code: m.code }) });
    }
  });
  const gone = (err: Error): void => {
    if (worker === w) worker = undefined;
    failAll(err);
  };
  w.on('error', (e) => gone(new Error(`the diffID worker failed: ${e.message}`, { cause: e })));
  w.on('exit', (code) => gone(new Error(`the diffID worker exited (code ${code})`)));
  worker = w;
  return w;
}

/** One blob's gunzip-and-hash on the worker. */
export class WorkerDiffIdTap {
  private readonly id = nextId++;
  /** The worker this tap was opened on (a later one does not know it). */
  private readonly w = theWorker();
  private closed = false;

  constructor(handlers: TapHandlers) {
    open.set(this.id, handlers);
    this.w.ref();
    this.w.postMessage({ t: 'o', id: this.id } satisfies ToWorker);
  }

  /** Posts a copy of the chunk (the caller keeps its buffer). */
  write(chunk: Buffer): void {
    if (this.closed) return;
    if (chunk.length >= TRANSFER_MIN && chunk.length <= TRANSFER_SIZE) {
      const ab = spare.pop() ?? new ArrayBuffer(TRANSFER_SIZE);
      const buf = new Uint8Array(ab, 0, chunk.length);
      buf.set(chunk);
      this.w.postMessage({ t: 'w', id: this.id, buf, x: true } satisfies ToWorker, [ab]);
      return;
    }
    // A message copies a view's whole ArrayBuffer: a small view of a large one is copied first.
    const buf = chunk.byteLength * 2 < chunk.buffer.byteLength ? Buffer.from(chunk) : chunk;
    this.w.postMessage({ t: 'w', id: this.id, buf } satisfies ToWorker);
  }

  end(): void {
    if (this.closed) return;
    this.closed = true;
    this.w.postMessage({ t: 'e', id: this.id } satisfies ToWorker);
  }

  /** Drops the tap: no more callbacks. */
  destroy(): void {
    if (!open.delete(this.id)) return;
    this.closed = true;
    this.w.postMessage({ t: 'x', id: this.id } satisfies ToWorker);
    if (open.size === 0) this.w.unref();
  }
}

/** Tests and diagnostics: whether a worker runs, how many taps are open, transfer buffers back. */
export function diffIdWorkerState(): { running: boolean; openTaps: number; spare: number } {
  return { running: worker !== undefined, openTaps: open.size, spare: spare.length };
}

/** Tests: stops the worker (open taps fail); the next tap starts another. */
export async function stopDiffIdWorker(): Promise<void> {
  const w = worker;
  worker = undefined;
  if (w) await w.terminate();
}
