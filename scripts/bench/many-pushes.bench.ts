/**
 * Issue 14, benchmark 4: many small pushes. N one-tiny-layer images (one OCI
 * layout each; every layer distinct) queued at once through REST into
 * one compiled `ferry serve` (all roles): pushes per second from the first
 * submit to the last push's finishedAt — against `skopeo copy` run 4 at a
 * time on the same images. Each side gets a fresh registry; the registry's
 * CPU per push (utime + stime from /proc) is reported for both, with the
 * serve process's CPU and its Redis commands per push.
 *
 * Env: BENCH_SMALL_PUSHES (default 200; the figure is 1000),
 * BENCH_RUNS (default 2), BENCH_SUBMIT_CONCURRENCY (default 32),
 * BENCH_FERRY_ONLY=1 (profiling: skopeo skipped); see
 * ferry-serve.ts for BENCH_PROFILE_DIR and BENCH_FERRY_ENV.
 */
import { join } from 'node:path';
import { report, type BenchRow } from './common';
import {
  build,
  commandStats,
  cpuSeconds,
  diffStats,
  fmt,
  helpers,
  restPush,
  skopeoCopy,
  startServe,
  stats,
  threadCpu,
  type Serve,
} from './ferry-serve';
import { ferryMany as ferryManyAt, pollCost, pool } from './many';
import { makeManySmall } from './oci-fixture';

const N = Number(process.env.BENCH_SMALL_PUSHES ?? 200);
const RUNS = Number(process.env.BENCH_RUNS ?? 2);
const SUBMITS = Number(process.env.BENCH_SUBMIT_CONCURRENCY ?? 32);
/** Profiling runs: ferry only, skopeo skipped and reported as NaN. */
const FERRY_ONLY = process.env.BENCH_FERRY_ONLY === '1';

const ferryMany = (serve: Serve, sources: string[], host: string, run: number) =>
  ferryManyAt(serve, sources, host, run, SUBMITS);

async function skopeoMany(sources: string[], host: string, run: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  await pool([...sources.keys()], 4, async (i) => {
    await skopeoCopy(sources[i]!, `${host}/small:img${i}-s${run}`);
  });
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function main(): Promise<void> {
  const { startRedis, startRegistry, startProxy, tmpDir } = helpers();
  build();
  const root = tmpDir('bench-many');
  process.stderr.write(`making ${N} one-layer images …\n`);
  const sources = await makeManySmall(join(root, 'many'), N);
  const redis = await startRedis();
  let serve: Serve | undefined;
  const rows: BenchRow[] = [
    {
      metric: 'ferry serve settings (BENCH_FERRY_ENV)',
      value: process.env.BENCH_FERRY_ENV || 'defaults',
    },
  ];
  try {
    serve = await startServe(redis, root, 'many-pushes');
    {
      const reg = await startRegistry();
      await ferryMany(serve, sources.slice(0, Math.min(20, N)), reg.host, -1);
      await reg.stop();
    }
    const rate = { ferry: [] as number[], skopeo: [] as number[] };
    const regCpu = { ferry: [] as number[], skopeo: [] as number[] };
    const serveCpu: number[] = [];
    const redisCpu: number[] = [];
    const mainCpu: number[] = [];
    let cmds: Record<string, number> = {};
    const elds: { p99: number; max: number; mean: number }[] = [];
    for (let i = 0; i < RUNS; i++) {
      {
        const reg = await startRegistry();
        const r0 = cpuSeconds(reg.pid!);
        const c0 = cpuSeconds(serve.pid);
        const rc0 = cpuSeconds(redis.pid!);
        const m0 = threadCpu(serve.pid).main;
        const s0 = commandStats(redis);
        await serve.eld();
        pollCost.polls = 0;
        pollCost.rows = 0;
        pollCost.zcards = 0;
        const s = await ferryMany(serve, sources, reg.host, i);
        const e = await serve.eld();
        if (e) elds.push(e);
        cmds = diffStats(s0, commandStats(redis));
        // GET /v1/pushes?status=…: ZREMRANGEBYSCORE + ZREVRANGE + one HMGET a row.
        for (const [k, v] of [
          ['hmget', pollCost.rows],
          ['zrevrange', pollCost.polls],
          ['zremrangebyscore', pollCost.polls],
          ['zcard', pollCost.zcards],
        ] as const)
          if (cmds[k] !== undefined) cmds[k] = Math.max(0, cmds[k]! - v);
        serveCpu.push((cpuSeconds(serve.pid) - c0) / N);
        redisCpu.push((cpuSeconds(redis.pid!) - rc0) / N);
        mainCpu.push((threadCpu(serve.pid).main - m0) / N);
        regCpu.ferry.push((cpuSeconds(reg.pid!) - r0) / N);
        rate.ferry.push(N / s);
        await reg.stop();
      }
      if (FERRY_ONLY) {
        regCpu.skopeo.push(NaN);
        rate.skopeo.push(NaN);
      } else {
        const reg = await startRegistry();
        const r0 = cpuSeconds(reg.pid!);
        const s = await skopeoMany(sources, reg.host, i);
        regCpu.skopeo.push((cpuSeconds(reg.pid!) - r0) / N);
        rate.skopeo.push(N / s);
        await reg.stop();
      }
      process.stderr.write(
        `run ${i}: ferry ${rate.ferry[i]!.toFixed(1)}/s, skopeo×4 ${rate.skopeo[i]!.toFixed(1)}/s\n`,
      );
    }
    const med = (xs: number[]) => stats(xs).median;
    const ratio = med(rate.ferry) / med(rate.skopeo);
    const total = Object.values(cmds).reduce((a, b) => a + b, 0);
    rows.push(
      {
        metric: `${N} one-tiny-layer pushes queued at once, ferry REST, median (min–max) of ${RUNS}`,
        value: fmt(rate.ferry, 1),
        unit: 'pushes/s',
      },
      {
        metric: 'the same images, skopeo copy 4 at a time',
        value: fmt(rate.skopeo, 1),
        unit: 'pushes/s',
      },
      {
        metric: 'ferry ÷ skopeo (pushes/s)',
        value: ratio,
        unit: '×',
        target: '≥ 1.5×',
        pass: ratio >= 1.5,
      },
      { metric: 'registry CPU per push, ferry', value: med(regCpu.ferry) * 1000, unit: 'ms' },
      { metric: 'registry CPU per push, skopeo', value: med(regCpu.skopeo) * 1000, unit: 'ms' },
      {
        metric: 'ferry serve CPU per push, all threads / main thread (info)',
        value: `${(med(serveCpu) * 1000).toFixed(1)} / ${(med(mainCpu) * 1000).toFixed(1)}`,
        unit: 'ms',
      },
      { metric: 'redis-server CPU per push (info)', value: med(redisCpu) * 1000, unit: 'ms' },
      {
        metric:
          'Redis commands per push, the harness polls excluded (info; top: ' +
          Object.entries(cmds)
            .sort((a, b) => b[1] - a[1])
            .slice(0, 8)
            .map(([k, v]) => `${k} ${(v / N).toFixed(1)}`)
            .join(', ') +
          ')',
        value: total / N,
      },
    );
    if (elds.length)
      rows.push({
        metric:
          'serve event-loop delay mean / p99 / max, beyond the 10 ms tick (info, profiled run)',
        value: `${med(elds.map((e) => e.mean)).toFixed(1)} / ${med(elds.map((e) => e.p99)).toFixed(1)} / ${Math.max(...elds.map((e) => e.max)).toFixed(1)}`,
        unit: 'ms',
      });

    // Registry requests of one tiny push, by method, through the counting proxy (not timed).
    {
      const reg = await startRegistry();
      const proxy = await startProxy({ host: '127.0.0.1', port: reg.port });
      const methods = ['GET', 'HEAD', 'POST', 'PATCH', 'PUT', 'DELETE'];
      const count = () =>
        methods
          .map((m) => [m, proxy.requests(m)] as const)
          .filter(([, n]) => n > 0)
          .map(([m, n]) => `${m} ${n}`)
          .join(', ');
      try {
        proxy.resetCounters();
        await restPush(serve, sources[0]!, `${proxy.host}/count:ferry`);
        const ferry = count();
        proxy.resetCounters();
        if (!FERRY_ONLY) await skopeoCopy(sources[1 % N]!, `${proxy.host}/count:skopeo`);
        rows.push({
          metric: `registry requests of one tiny push (info): ferry ${ferry}; skopeo ${FERRY_ONLY ? '-' : count()}`,
          value: '',
        });
      } finally {
        await proxy.stop();
        await reg.stop();
      }
    }
  } finally {
    await serve?.stop();
    await redis.stop();
  }
  report('many-pushes', rows);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
