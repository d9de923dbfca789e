/**
 * Issue 14, benchmark 3: a `dir:` image of 4 layers (600 MB by default:
 * half text, a quarter machine code, a quarter incompressible, in a few
 * files per layer) pushed into a FRESH docker-registry per measurement by
 *   - ferry, REST submit → succeeded (compiled `ferry serve`, all roles,
 *     FERRY_GZIP_LEVEL default 6);
 *   - containerify 4.1 (npm; each layer a --customContent / --extraContent
 *     folder onto a one-layer base image pushed first; it copies the folders
 *     to a temp dir and gzips on its main thread at level 6);
 *   - skopeo copying the equivalent OCI layout (the very blobs ferry made,
 *     read back with skopeo: upload only, no compression);
 * and the CPU limit: raw zlib (createGzip at level 6) over the same files, two
 * streams at once (two cores). Interleaved, medians with min–max.
 *
 * containerify is taken from BENCH_CONTAINERIFY (its cli.js or bin), else
 * installed once with npm into $TMPDIR/ferry-bench-tools.
 *
 * Env: BENCH_DIR_MB (total, default 600), BENCH_RUNS (3), BENCH_FERRY_ONLY=1
 * (profiling: containerify, skopeo and zlib skipped, reported as NaN); see
 * ferry-serve.ts.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  createReadStream,
  createWriteStream,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import { once } from 'node:events';
import { report, type BenchRow } from './common';
import {
  build,
  fmt,
  helpers,
  restPush,
  skopeoCopy,
  startServe,
  stats,
  threadCpu,
  timedRun,
  plainEnv,
  type Serve,
} from './ferry-serve';
import { makeManySmall, textSource } from './oci-fixture';

const MB = 1e6;
const TOTAL_MB = Number(process.env.BENCH_DIR_MB ?? 600);
const LAYERS = 4;
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const LEVEL = 6;
/** Profiling runs: ferry only, the peers skipped and reported as NaN. */
const FERRY_ONLY = process.env.BENCH_FERRY_ONLY === '1';

async function writeFile(path: string, size: number, gen: (n: number) => Buffer): Promise<void> {
  const ws = createWriteStream(path);
  for (let off = 0; off < size; off += 1 << 20) {
    if (!ws.write(gen(Math.min(1 << 20, size - off)))) await once(ws, 'drain');
  }
  ws.end();
  await once(ws, 'finish');
}

function cycle(src: Buffer): (n: number) => Buffer {
  let off = randomBytes(4).readUInt32LE() % src.length;
  return (n) => {
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

/** PATH/layers/<i>/…: per layer two text files, one binary, one random; PATH/config.json. */
async function makeDirImage(path: string, totalBytes: number): Promise<string[]> {
  const per = Math.floor(totalBytes / LAYERS);
  const text = cycle(textSource());
  const bin = cycle(readFileSync(process.execPath));
  const dirs: string[] = [];
  for (let i = 0; i < LAYERS; i++) {
    const d = join(path, 'layers', `l${i}`);
    mkdirSync(join(d, 'app'), { recursive: true });
    await writeFile(join(d, 'app', 'main.js'), Math.floor(per / 4), text);
    await writeFile(join(d, 'app', 'data.json'), Math.floor(per / 4), text);
    await writeFile(join(d, 'app', 'lib.so'), Math.floor(per / 4), bin);
    await writeFile(join(d, 'app', 'media.bin'), Math.floor(per / 4), (n) => randomBytes(n));
    dirs.push(`layers/l${i}`);
  }
  writeFileSync(
    join(path, 'config.json'),
    JSON.stringify({ architecture: 'amd64', os: 'linux', config: { WorkingDir: '/app' } }),
  );
  return dirs;
}

/** Raw zlib at LEVEL over every layer's files, two streams at once; seconds. */
async function zlibLimit(path: string, dirs: string[]): Promise<number> {
  const files = dirs.flatMap((d) =>
    readdirSync(join(path, d, 'app')).map((f) => join(path, d, 'app', f)),
  );
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    [0, 1].map(async () => {
      while (next < files.length) {
        const f = files[next++]!;
        await pipeline(
          createReadStream(f, { highWaterMark: 1 << 20 }),
          zlib.createGzip({ level: LEVEL }),
          new Writable({ write: (_c, _e, cb) => cb() }),
        );
      }
    }),
  );
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function containerifyBin(): string {
  const given = process.env.BENCH_CONTAINERIFY;
  if (given) return given;
  const prefix = join(tmpdir(), 'ferry-bench-tools');
  const cli = join(prefix, 'node_modules', 'containerify', 'lib', 'cli.js');
  if (!existsSync(cli)) {
    process.stderr.write(`installing containerify@4.1.0 into ${prefix} …\n`);
    execFileSync(
      'npm',
      ['install', '--no-audit', '--no-fund', '--prefix', prefix, 'containerify@4.1.0'],
      {
        stdio: 'inherit',
      },
    );
  }
  return cli;
}

async function main(): Promise<void> {
  const { startRedis, startRegistry, tmpDir } = helpers();
  build();
  const cfy = FERRY_ONLY ? '' : containerifyBin();
  const root = tmpDir('bench-dir');
  const img = join(root, 'img');
  process.stderr.write(`making a ${LAYERS}-layer dir: image, ${TOTAL_MB} MB …\n`);
  const dirs = await makeDirImage(img, TOTAL_MB * MB);
  const baseLayout = join(root, 'base');
  const [baseSource] = await makeManySmall(baseLayout, 1);
  const ociLayout = join(root, 'oci-equivalent');

  const redis = await startRedis();
  let serve: Serve | undefined;
  const rows: BenchRow[] = [
    {
      metric: 'ferry serve settings (BENCH_FERRY_ENV)',
      value: process.env.BENCH_FERRY_ENV || 'defaults',
    },
  ];
  try {
    serve = await startServe(redis, root, 'dir-push');
    // Warm-up, and the equivalent OCI layout: what ferry pushed, read back by skopeo.
    {
      const reg = await startRegistry();
      await restPush(serve, `dir:${img}`, `${reg.host}/warm:1`);
      await timedRun('skopeo', [
        'copy',
        '--quiet',
        '--insecure-policy',
        '--src-tls-verify=false',
        `docker://${reg.host}/warm:1`,
        `oci:${ociLayout}:latest`,
      ]);
      await reg.stop();
    }
    const t = {
      ferry: [] as number[],
      cfy: [] as number[],
      skopeo: [] as number[],
      zlib: [] as number[],
    };
    const ferryCpu = { main: [] as number[], other: [] as number[] };
    const elds: { p99: number; max: number }[] = [];
    for (let i = 0; i < RUNS; i++) {
      {
        const reg = await startRegistry();
        const c0 = threadCpu(serve.pid);
        await serve.eld();
        t.ferry.push((await restPush(serve, `dir:${img}`, `${reg.host}/app:f${i}`)).s);
        const e = await serve.eld();
        if (e) elds.push(e);
        const c1 = threadCpu(serve.pid);
        ferryCpu.main.push(c1.main - c0.main);
        ferryCpu.other.push(c1.other - c0.other);
        await reg.stop();
      }
      if (FERRY_ONLY) {
        t.cfy.push(NaN);
        t.skopeo.push(NaN);
        t.zlib.push(NaN);
        process.stderr.write(`run ${i}: ferry ${t.ferry[i]!.toFixed(2)}\n`);
        continue;
      }
      {
        const reg = await startRegistry();
        await skopeoCopy(baseSource!, `${reg.host}/base:1`);
        const regUrl = `http://${reg.host}/v2/`;
        const args = [
          cfy,
          '--fromImage',
          'base:1',
          '--fromRegistry',
          regUrl,
          '--toImage',
          `app:c${i}`,
          '--toRegistry',
          regUrl,
          '--allowNoPushAuth',
          '--folder',
          img,
          '--setTimeStamp',
          new Date(Date.UTC(2020, 0, 1 + i)).toISOString(),
          '--customContent',
          `${dirs[0]}:/${dirs[0]}`,
          ...dirs.slice(1).flatMap((d) => ['--extraContent', `${d}:/${d}`]),
        ];
        t.cfy.push((await timedRun(process.execPath, args, plainEnv())).s);
        if (i === 0) {
          // The comparison holds only if containerify pushed the 4 layers onto the base.
          const m = (await helpers().skopeoInspect(`docker://${reg.host}/app:c${i}`, [
            '--raw',
          ])) as {
            layers?: unknown[];
          };
          if (m.layers?.length !== LAYERS + 1)
            throw new Error(
              `containerify pushed ${m.layers?.length} layers, expected ${LAYERS + 1}`,
            );
        }
        await reg.stop();
      }
      {
        const reg = await startRegistry();
        t.skopeo.push((await skopeoCopy(`oci:${ociLayout}:latest`, `${reg.host}/app:s${i}`)).s);
        await reg.stop();
      }
      t.zlib.push(await zlibLimit(img, dirs));
      process.stderr.write(
        `run ${i}: ferry ${t.ferry[i]!.toFixed(2)} containerify ${t.cfy[i]!.toFixed(2)} skopeo(oci) ${t.skopeo[i]!.toFixed(2)} zlib×2 ${t.zlib[i]!.toFixed(2)}\n`,
      );
    }
    const med = (xs: number[]) => stats(xs).median;
    const vsCfy = med(t.ferry) / med(t.cfy);
    const ofZlib = med(t.zlib) / med(t.ferry);
    rows.push(
      { metric: `dir: ${LAYERS} layers, raw`, value: TOTAL_MB, unit: 'MB' },
      {
        metric: `ferry push dir:, REST submit → succeeded, median (min–max) of ${RUNS}`,
        value: fmt(t.ferry),
        unit: 's',
      },
      { metric: 'containerify 4.1 (same folders, fresh registry)', value: fmt(t.cfy), unit: 's' },
      {
        metric: 'skopeo copy of the equivalent OCI layout (upload only)',
        value: fmt(t.skopeo),
        unit: 's',
      },
      { metric: `raw zlib level ${LEVEL}, two streams (CPU limit)`, value: fmt(t.zlib), unit: 's' },
      {
        metric: 'ferry ÷ containerify',
        value: vsCfy,
        unit: '×',
        target: '≤ 0.3×',
        pass: vsCfy <= 0.3,
      },
      {
        metric: 'ferry throughput as a fraction of the zlib limit (zlib time ÷ ferry time)',
        value: ofZlib,
        target: '≥ 0.8',
        pass: ofZlib >= 0.8,
      },
      { metric: 'ferry MB/s (raw input)', value: TOTAL_MB / med(t.ferry), unit: 'MB/s' },
      {
        metric: 'ferry serve CPU per push: main thread / other threads (info)',
        value: `${med(ferryCpu.main).toFixed(2)} / ${med(ferryCpu.other).toFixed(2)}`,
        unit: 's',
      },
    );
    if (elds.length)
      rows.push({
        metric:
          'ferry serve event-loop delay p99 / max, beyond the 10 ms tick (info, profiled run)',
        value: `${med(elds.map((e) => e.p99)).toFixed(1)} / ${Math.max(...elds.map((e) => e.max)).toFixed(1)}`,
        unit: 'ms',
      });
  } finally {
    await serve?.stop();
    await redis.stop();
  }
  report('dir-push', rows);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
