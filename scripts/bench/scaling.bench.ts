/**
 * Issue 14, benchmark 5: scaling the upload role by processes. Each role runs
 * in its own compiled `ferry serve --role R` process, as deployed (api,
 * lookup and coordinator one each), with 1, 2 and 4 upload-worker processes
 * (each FERRY_UPLOAD_CONCURRENCY uploads at once), on this machine's cores.
 * The three set-ups run side by side (own queue prefixes on one redis-server)
 * and are measured in turn, A B C A B C, each into a fresh docker-registry:
 *   - scenario 1: the 8-layer OCI layout (400 MB raw), a layout of its own per
 *     measurement (blobs no process has seen: every layer gunzipped to check
 *     its diff_id), REST submit → succeeded;
 *   - scenario 4: N one-tiny-layer pushes queued at once, pushes/s.
 * Per measurement, CPU-seconds of the upload processes, the other Ferry
 * processes, the registry and redis-server, and their sum as a share of
 * wall time × cores: the curve flattens where that share nears 100 % (CPU)
 * or where one of them (registry, Redis) is the one busy.
 *
 * Env: BENCH_SCALE_PROCS (default "1,2,4"), BENCH_RUNS (default 2),
 * BENCH_OCI_MB (400), BENCH_OCI_LAYERS (8), BENCH_SMALL_PUSHES (200),
 * BENCH_SUBMIT_CONCURRENCY (32), BENCH_FERRY_ENV (every process).
 */
import { cpus } from 'node:os';
import { join } from 'node:path';
import { report, type BenchRow } from './common';
import {
  build,
  cpuSeconds,
  fmt,
  helpers,
  restPush,
  startSplit,
  stats,
  type Split,
} from './ferry-serve';
import { ferryMany } from './many';
import { makeManySmall, makeOciLayout } from './oci-fixture';

const MB = 1e6;
const PROCS = (process.env.BENCH_SCALE_PROCS ?? '1,2,4').split(',').map(Number);
const RUNS = Number(process.env.BENCH_RUNS ?? 2);
const TOTAL_MB = Number(process.env.BENCH_OCI_MB ?? 400);
const LAYERS = Number(process.env.BENCH_OCI_LAYERS ?? 8);
const N = Number(process.env.BENCH_SMALL_PUSHES ?? 200);
const SUBMITS = Number(process.env.BENCH_SUBMIT_CONCURRENCY ?? 32);
const CORES = cpus().length;

interface Sample {
  wall: number;
  upload: number;
  otherFerry: number;
  registry: number;
  redis: number;
}

const sum = (pids: number[]): number => pids.reduce((a, p) => a + cpuSeconds(p), 0);

/** Runs f against a fresh registry and measures wall and CPU of everyone involved. */
async function measure(
  split: Split,
  redisPid: number,
  f: (host: string) => Promise<number>,
): Promise<Sample> {
  const { startRegistry } = helpers();
  const reg = await startRegistry();
  try {
    const others = [split.pids.api, split.pids.lookup, split.pids.coordinator];
    const u0 = sum(split.pids.upload);
    const o0 = sum(others);
    const r0 = cpuSeconds(reg.pid!);
    const d0 = cpuSeconds(redisPid);
    const wall = await f(reg.host);
    return {
      wall,
      upload: sum(split.pids.upload) - u0,
      otherFerry: sum(others) - o0,
      registry: cpuSeconds(reg.pid!) - r0,
      redis: cpuSeconds(redisPid) - d0,
    };
  } finally {
    await reg.stop();
  }
}

function rowsFor(
  scenario: string,
  unit: string,
  value: (s: Sample) => number,
  samples: Map<number, Sample[]>,
): BenchRow[] {
  const rows: BenchRow[] = [];
  const med = (xs: number[]) => stats(xs).median;
  const base = med(samples.get(PROCS[0]!)!.map(value));
  for (const p of PROCS) {
    const ss = samples.get(p)!;
    const v = ss.map(value);
    const cpu = (k: keyof Sample) => med(ss.map((s) => s[k]));
    const busy =
      (cpu('upload') + cpu('otherFerry') + cpu('registry') + cpu('redis')) / (cpu('wall') * CORES);
    rows.push(
      {
        metric: `${scenario}, ${p} upload process${p > 1 ? 'es' : ''}: median (min–max) of ${ss.length}`,
        value: fmt(v, unit === 's' ? 3 : 1),
        unit,
      },
      {
        metric: `${scenario}, ${p} upload process${p > 1 ? 'es' : ''}: speed-up over ${PROCS[0]} (info)`,
        value: unit === 's' ? base / med(v) : med(v) / base,
        unit: '×',
      },
      {
        metric: `${scenario}, ${p} upload process${p > 1 ? 'es' : ''}: CPU-s upload / other ferry / registry / redis; all ÷ (wall × ${CORES} cores) (info)`,
        value: `${cpu('upload').toFixed(2)} / ${cpu('otherFerry').toFixed(2)} / ${cpu('registry').toFixed(2)} / ${cpu('redis').toFixed(2)}; ${(busy * 100).toFixed(0)} %`,
      },
    );
  }
  return rows;
}

async function main(): Promise<void> {
  const { startRedis, startRegistry, tmpDir } = helpers();
  build();
  const root = tmpDir('bench-scaling');
  const layerBytes = Math.floor((TOTAL_MB * MB) / LAYERS);
  process.stderr.write(
    `making ${RUNS * PROCS.length} ${LAYERS}-layer layouts and ${N} tiny images …\n`,
  );
  const layouts: string[] = [];
  for (let i = 0; i < RUNS * PROCS.length; i++) {
    const fx = await makeOciLayout(join(root, `oci-${i}`), LAYERS, layerBytes);
    layouts.push(`oci:${fx.layout}:latest`);
  }
  const warm = await makeOciLayout(join(root, 'warm'), 2, 4 * MB);
  const small = await makeManySmall(join(root, 'many'), N);
  const redis = await startRedis();
  const splits = new Map<number, Split>();
  const rows: BenchRow[] = [
    {
      metric: 'ferry settings (BENCH_FERRY_ENV)',
      value: process.env.BENCH_FERRY_ENV || 'defaults',
    },
  ];
  try {
    for (const p of PROCS) {
      const split = await startSplit(redis, root, p);
      splits.set(p, split);
      const reg = await startRegistry();
      await restPush(split, `oci:${warm.layout}:latest`, `${reg.host}/warm:1`);
      await ferryMany(split, small.slice(0, Math.min(20, N)), reg.host, -1, SUBMITS);
      await reg.stop();
    }
    const big = new Map<number, Sample[]>(PROCS.map((p) => [p, []]));
    const many = new Map<number, Sample[]>(PROCS.map((p) => [p, []]));
    let next = 0;
    for (let i = 0; i < RUNS; i++) {
      for (const p of PROCS) {
        const split = splits.get(p)!;
        const source = layouts[next++]!;
        const s = await measure(
          split,
          redis.pid!,
          async (host) => (await restPush(split, source, `${host}/app:p${p}r${i}`)).s,
        );
        big.get(p)!.push(s);
        process.stderr.write(`run ${i}, ${p} upload processes: 8 layers ${s.wall.toFixed(3)} s\n`);
      }
      for (const p of PROCS) {
        const split = splits.get(p)!;
        const s = await measure(split, redis.pid!, (host) =>
          ferryMany(split, small, host, i, SUBMITS),
        );
        many.get(p)!.push(s);
        process.stderr.write(
          `run ${i}, ${p} upload processes: ${N} tiny ${(N / s.wall).toFixed(1)}/s\n`,
        );
      }
    }
    rows.push(
      {
        metric: `machine: ${CORES} cores; every process (${PROCS.map((p) => p + 3).join(' / ')} Ferry processes, registry, redis) shares them`,
        value: '',
      },
      ...rowsFor(
        `1: ${LAYERS}-layer OCI layout, ${TOTAL_MB} MB raw, first push`,
        's',
        (s) => s.wall,
        big,
      ),
      ...rowsFor(`4: ${N} tiny pushes at once`, 'pushes/s', (s) => N / s.wall, many),
    );
  } finally {
    for (const s of splits.values()) await s.stop();
    await redis.stop();
  }
  report('scaling', rows);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
