/**
 * dir: pipeline throughput (tar → gzip → sha256 ×2 via Layer.open(), drained
 * to a null sink) against raw zlib (zlib.createGzip at the same level on the
 * same files) in the same run; two layers at once against one; peak RSS of a
 * child process streaming a 2 GiB layer of incompressible data.
 *
 * `npm run bench -- dir-pipeline`. Env: BENCH_CORPUS_MB (default 256),
 * BENCH_BIG_MB (default 2048), BENCH_RUNS (default 3).
 */
import { spawn } from 'node:child_process';
import { randomBytes, randomFillSync } from 'node:crypto';
import {
  createReadStream,
  createWriteStream,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
} from 'node:fs';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import { openSource, type Layer } from '@ferry/image-source';
import { peakRss, report, type BenchRow } from './common';

const MB = 1024 * 1024;
const CORPUS_MB = Number(process.env.BENCH_CORPUS_MB ?? 256);
const BIG_MB = Number(process.env.BENCH_BIG_MB ?? 2048);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);

function nullSink(): Writable {
  return new Writable({
    highWaterMark: MB,
    write(_c, _e, cb) {
      cb();
    },
  });
}

/**
 * Text like a real image's: the JavaScript, TypeScript, JSON and Markdown of
 * this repository's node_modules, concatenated (falls back to generated text).
 */
async function collectText(limit: number): Promise<Buffer> {
  const out: Buffer[] = [];
  let n = 0;
  const walk = async (d: string): Promise<void> => {
    if (n >= limit) return;
    let ents;
    try {
      ents = await readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    ents.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of ents) {
      if (n >= limit) return;
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile() && /\.(js|ts|json|md|cjs|mjs)$/.test(e.name)) {
        const b = readFileSync(p);
        out.push(b);
        n += b.length;
      }
    }
  };
  await walk(join(__dirname, '..', '..', 'node_modules'));
  if (n < 1024 * 1024) out.push(Buffer.from('fallback text, '.repeat(1 << 16)));
  return Buffer.concat(out);
}

/** n bytes cycling through `src` (so any amount can be made from a smaller sample). */
function cycle(src: Buffer): (n: number) => Buffer {
  let off = 0;
  return (n: number) => {
    const b = Buffer.allocUnsafe(n);
    for (let w = 0; w < n;) {
      const k = Math.min(n - w, src.length - off);
      src.copy(b, w, off, off + k);
      w += k;
      off = (off + k) % src.length;
    }
    return b;
  };
}

async function writeFileChunks(
  path: string,
  size: number,
  gen: (n: number) => Buffer,
): Promise<void> {
  const ws = createWriteStream(path);
  const chunk = 4 * MB;
  for (let off = 0; off < size; off += chunk) {
    const n = Math.min(chunk, size - off);
    if (!ws.write(gen(n))) await new Promise<void>((r) => ws.once('drain', () => r()));
  }
  await new Promise<void>((res, rej) => {
    ws.on('error', rej);
    ws.end(() => res());
  });
}

/**
 * A realistic mix in a few files: half text (source code, JSON, docs), a
 * quarter machine code (the node binary), a quarter incompressible (media).
 */
async function makeCorpus(dir: string, totalMb: number): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const q = Math.floor((totalMb * MB) / 8);
  const text = cycle(await collectText(64 * MB));
  await writeFileChunks(join(dir, 'app.js'), 2 * q, text);
  await writeFileChunks(join(dir, 'vendor.js'), 2 * q, text);
  const bin = cycle(readFileSync(process.execPath));
  await writeFileChunks(join(dir, 'bin.so'), 2 * q, bin);
  await writeFileChunks(join(dir, 'media.jpg'), 2 * q, (n) => randomBytes(n));
}

interface Rate {
  /** input bytes per wall-clock second */
  wall: number;
  /** input bytes per CPU second of this process (all threads: main + libuv pool) */
  cpu: number;
}

/** Runs f (which returns the input bytes it processed) and measures wall and CPU time. */
async function timed(f: () => Promise<number>): Promise<Rate> {
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const bytes = await f();
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const c = process.cpuUsage(c0);
  return { wall: bytes / wall, cpu: bytes / ((c.user + c.system) / 1e6) };
}

/** Raw zlib on the corpus files, `copies` streams at once. */
function rawZlib(dir: string, level: number, copies = 1): Promise<Rate> {
  return timed(async () => {
    const files = (await readdir(dir)).sort();
    let bytes = 0;
    await Promise.all(
      Array.from({ length: copies }, async () => {
        for (const f of files) {
          const rs = createReadStream(join(dir, f), { highWaterMark: MB });
          rs.on('data', (c) => (bytes += c.length));
          await pipeline(rs, zlib.createGzip({ level }), nullSink());
        }
      }),
    );
    return bytes;
  });
}

async function drainLayer(layer: Layer): Promise<number> {
  const ls = await layer.open();
  await pipeline(ls.stream, nullSink());
  return (await ls.done).uncompressedSize;
}

function pipelineRate(layers: Layer[]): Promise<Rate> {
  return timed(async () => (await Promise.all(layers.map(drainLayer))).reduce((a, b) => a + b, 0));
}

/**
 * Best of `runs` for each measurement, the runs interleaved (a, b, a, b, ...)
 * so that load from other processes hits both sides alike.
 */
async function bestInterleaved(runs: number, fs: (() => Promise<Rate>)[]): Promise<Rate[]> {
  const bests = fs.map(() => ({ wall: 0, cpu: 0 }));
  for (let i = 0; i < runs; i++) {
    for (const [k, f] of fs.entries()) {
      const r = await f();
      bests[k] = { wall: Math.max(bests[k]!.wall, r.wall), cpu: Math.max(bests[k]!.cpu, r.cpu) };
    }
  }
  return bests;
}

/** Child mode: stream the one layer of dir:PATH, print VmHWM before and after. */
async function child(root: string): Promise<void> {
  const src = await openSource('dir:big', { root });
  const before = peakRss();
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const ls = await src.images[0]!.layers[0]!.open();
  await pipeline(ls.stream, nullSink());
  const r = await ls.done;
  loop.disable();
  console.log(
    JSON.stringify({
      before,
      after: peakRss(),
      size: r.uncompressedSize,
      digest: r.digest,
      loopP99Ms: loop.percentile(99) / 1e6,
      loopMaxMs: loop.max / 1e6,
    }),
  );
}

interface ChildResult {
  before: number;
  after: number;
  size: number;
  loopP99Ms: number;
  loopMaxMs: number;
}

async function bigLayerRss(base: string): Promise<ChildResult> {
  const root = join(base, 'big-root');
  const dir = join(root, 'big', 'layers', 'only');
  mkdirSync(dir, { recursive: true });
  // incompressible: random bytes (AES-quality), generated in 8 MiB chunks
  const buf = Buffer.allocUnsafe(8 * MB);
  await writeFileChunks(join(dir, 'random.bin'), BIG_MB * MB, (n) =>
    randomFillSync(buf.subarray(0, n)),
  );
  try {
    const out = await new Promise<string>((resolve, reject) => {
      const c = spawn(process.execPath, ['--import', 'tsx', __filename, '--child', root], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let s = '';
      c.stdout.on('data', (d: Buffer) => (s += d.toString()));
      c.on('error', reject);
      c.on('exit', (code) => (code === 0 ? resolve(s) : reject(new Error(`child exited ${code}`))));
    });
    return JSON.parse(out.trim().split('\n').pop()!) as ChildResult;
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const base = mkdtempSync(join(tmpdir(), 'ferry-bench-dir-'));
  try {
    const root = join(base, 'root');
    const l1 = join(root, 'img', 'layers', 'l1');
    process.stderr.write(`generating a ${CORPUS_MB} MB corpus in ${l1}\n`);
    await makeCorpus(l1, CORPUS_MB);
    // a second layer with the same files (hard links: separate layers, the same bytes)
    const l2 = join(root, 'img', 'layers', 'l2');
    mkdirSync(l2);
    for (const f of await readdir(l1)) linkSync(join(l1, f), join(l2, f));

    const rows: BenchRow[] = [];
    const mbs = (r: Rate): string =>
      `${(r.wall / MB).toFixed(1)} MB/s (${(r.cpu / MB).toFixed(1)} MB per CPU-s)`;
    for (const level of [6, 1]) {
      const src = await openSource('dir:img', { root, gzipLevel: level });
      const [a, b] = src.images[0]!.layers as [Layer, Layer];
      await drainLayer(a); // warm the page cache
      const [raw, one] = (await bestInterleaved(RUNS, [
        () => rawZlib(l1, level),
        () => pipelineRate([a]),
      ])) as [Rate, Rate];
      process.stderr.write(`level ${level}: raw zlib ${mbs(raw)}, pipeline ${mbs(one)}\n`);
      rows.push({ metric: `raw zlib gzip -${level}`, value: raw.wall / MB, unit: 'MB/s' });
      rows.push({
        metric: `dir: pipeline -${level} (tar+gzip+2×sha256)`,
        value: one.wall / MB,
        unit: 'MB/s',
      });
      rows.push({
        metric: `pipeline / raw zlib at level ${level} (wall clock)`,
        value: one.wall / raw.wall,
        ...(level === 6
          ? { target: '≥ 0.85', pass: one.wall / raw.wall >= 0.85 }
          : { target: 'reported' }),
      });
      rows.push({
        metric: `pipeline / raw zlib at level ${level} (bytes per CPU second, load-independent)`,
        value: one.cpu / raw.cpu,
        target: 'reported',
      });
      if (level === 6) {
        // Scaling: the one- and two-stream runs of the pipeline AND of raw zlib are measured in the
        // same interleaved loop with the same number of samples each. (A single-stream best taken
        // over more samples than the two-stream best — e.g. by also counting the runs above — is
        // biased upwards on a shared, noisy machine and understates the ratio; so is one run
        // outside the loop.)
        const [one2, two, rawOne2, rawTwo] = (await bestInterleaved(Math.max(3, RUNS), [
          () => pipelineRate([a]),
          () => pipelineRate([a, b]),
          () => rawZlib(l1, level),
          () => rawZlib(l1, level, 2),
        ])) as [Rate, Rate, Rate, Rate];
        const single = one2.wall;
        process.stderr.write(
          `level 6: one layer ${mbs(one2)}, two layers at once ${mbs(two)}; ` +
            `raw zlib one stream ${mbs(rawOne2)}, two streams ${mbs(rawTwo)}\n`,
        );
        rows.push({ metric: 'two layers at once, total', value: two.wall / MB, unit: 'MB/s' });
        rows.push({
          metric: 'two layers / one layer',
          value: two.wall / single,
          target: '≥ 1.6',
          pass: two.wall / single >= 1.6,
        });
        // what this machine allows right now: two raw zlib streams against one
        const rawSingle = rawOne2.wall;
        rows.push({
          metric: 'machine reference: raw zlib two streams / one',
          value: rawTwo.wall / rawSingle,
          target: 'reported',
        });
        rows.push({
          metric: 'pipeline scaling ÷ raw zlib scaling (1.0 = scales as well as zlib can here)',
          value: two.wall / single / (rawTwo.wall / rawSingle),
          target: 'reported',
        });
        rows.push({
          metric: 'CPU cores busy: two layers (pipeline) vs two raw zlib streams',
          value: `${(two.wall / two.cpu).toFixed(2)} vs ${(rawTwo.wall / rawTwo.cpu).toFixed(2)}`,
          target: 'reported',
        });
      }
    }
    rmSync(root, { recursive: true, force: true });

    if (BIG_MB > 0) {
      process.stderr.write(
        `writing a ${BIG_MB} MiB random file and streaming it in a child process\n`,
      );
      const r = await bigLayerRss(base);
      rows.push({
        metric: `child peak RSS (VmHWM) streaming a ${BIG_MB} MiB incompressible layer`,
        value: r.after / MB,
        unit: 'MB',
        target: '≤ 150',
        pass: r.after / MB <= 150,
      });
      rows.push({
        metric: 'child VmHWM before streaming (modules loaded)',
        value: r.before / MB,
        unit: 'MB',
      });
      rows.push({
        metric: 'event-loop delay while streaming it, p99 / max',
        value: `${r.loopP99Ms.toFixed(1)} / ${r.loopMaxMs.toFixed(1)}`,
        unit: 'ms',
        target: 'reported',
      });
      rows.push({
        metric: 'tar bytes streamed',
        value: r.size / MB,
        unit: 'MiB',
        target: `> ${BIG_MB}`,
        pass: r.size > BIG_MB * MB,
      });
    }
    report('dir-pipeline', rows);
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--child') {
  void child(process.argv[3]!).catch((e) => {
    console.error(e);
    process.exit(1);
  });
} else {
  void main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
