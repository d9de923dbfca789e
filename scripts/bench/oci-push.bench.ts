/**
 * Issue 14, benchmarks 1 and 2: an 8-layer OCI layout (400 MB raw, ~200 MB
 * gzip) pushed into a FRESH docker-registry per measurement by
 *   - ferry, REST submit → succeeded (all roles in one compiled `ferry serve`,
 *     started once);
 *   - ferry, the CLI end to end (`node bin/ferry.js push oci:… …`);
 *   - `skopeo copy oci:… docker://…`;
 *   - 8 parallel `curl` PUTs of the same blobs (the registry's ingest limit);
 *   - 8 parallel "checking PUTs" (verify-puts.child.js: each layer's digest
 *     and diff_id computed from the bytes sent, nothing else — the floor for
 *     a pusher that checks diff_ids, as Ferry does and skopeo does not);
 * interleaved A B C D E, A B C D E, …; medians with min–max. Each run pushes a
 * layout of its own (distinct random content), so ferry's REST push (A) is
 * the first time the serve process sees those blobs: it gunzips every layer
 * to check the config's diff_ids. Then ferry pushes the same layout again
 * into another fresh registry (REST, "known blobs": the diffIDs were verified
 * by the first push, see VerifiedDiffIds in image-source's
 * pipeline-verify.ts), and the CLI run also pushes blobs it knows. Then a
 * re-push with every blob present (through a counting proxy): REST submit →
 * succeeded vs skopeo copy, blob bytes sent, and the CLI end to end beside
 * `node -e 0`.
 *
 * Env: BENCH_OCI_MB (raw total, default 400), BENCH_OCI_LAYERS (8),
 * BENCH_RUNS (3), BENCH_REPUSH_RUNS (5), BENCH_FERRY_ONLY=1 (profiling: skip
 * the peers), BENCH_FERRY_ENV_B (a second serve process with these settings,
 * pushing layouts of its own in every run right after the first: settings
 * compared in one run); see ferry-serve.ts for BENCH_PROFILE_DIR and
 * BENCH_FERRY_ENV.
 */
import { join } from 'node:path';
import type { BenchRow } from './common';
import { childResult, report } from './common';
import {
  build,
  cliPush,
  commandStats,
  cpuSeconds,
  diffStats,
  extraFerryEnv,
  fmt,
  helpers,
  restPush,
  skopeoCopy,
  startServe,
  stats,
  threadCpu,
  timedRun,
  type EldWindow,
  type Serve,
} from './ferry-serve';
import { makeOciLayout, type OciFixture } from './oci-fixture';

const MB = 1e6;
const TOTAL_MB = Number(process.env.BENCH_OCI_MB ?? 400);
const LAYERS = Number(process.env.BENCH_OCI_LAYERS ?? 8);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const REPUSH_RUNS = Number(process.env.BENCH_REPUSH_RUNS ?? 5);
/** Profiling runs: ferry only, the peers (skopeo, CLI, PUTs) skipped and reported as NaN. */
const FERRY_ONLY = process.env.BENCH_FERRY_ONLY === '1';
/** A second serve process with these settings, measured beside the first in every run. */
const B_ENV = process.env.BENCH_FERRY_ENV_B ? extraFerryEnv('BENCH_FERRY_ENV_B') : undefined;

/** Ferry's two REST pushes of one run into fresh registries: new blobs, then the same again. */
async function ferryRound(
  serve: Serve,
  src: string,
  tag: string,
): Promise<{ cold: number; known: number; cpu: number; knownCpu: number }> {
  const { startRegistry } = helpers();
  const out = { cold: 0, known: 0, cpu: 0, knownCpu: 0 };
  for (const which of ['cold', 'known'] as const) {
    const reg = await startRegistry();
    const c0 = cpuSeconds(serve.pid);
    out[which] = (await restPush(serve, src, `${reg.host}/app:${tag}${which}`)).s;
    out[which === 'cold' ? 'cpu' : 'knownCpu'] = cpuSeconds(serve.pid) - c0;
    await reg.stop();
  }
  return out;
}

/** 8 parallel monolithic uploads (POST a session, then curl PUT ?digest= with the file). */
async function parallelPuts(fx: OciFixture, host: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  await Promise.all(
    fx.layers.map(async (l) => {
      const r = await fetch(`http://${host}/v2/limit/blobs/uploads/`, { method: 'POST' });
      await r.arrayBuffer();
      const loc = new URL(r.headers.get('location')!, `http://${host}`);
      loc.searchParams.set('digest', l.desc.digest);
      await timedRun('curl', [
        '-sf',
        '-X',
        'PUT',
        '-H',
        'content-type: application/octet-stream',
        '--data-binary',
        `@${l.path}`,
        loc.toString(),
      ]);
    }),
  );
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/**
 * The checking floor (verify-puts.child.js): every layer at once, one PUT each, its
 * digest and diff_id computed from the bytes sent (gunzip on libuv's pool), in a node
 * process of its own. Seconds, and that process' CPU seconds.
 */
async function checkingPuts(fx: OciFixture, host: string): Promise<{ s: number; cpu: number }> {
  const layers = fx.layers.map((l) => ({
    path: l.path,
    digest: l.desc.digest,
    size: l.desc.size,
    diffId: l.diffId,
  }));
  const { stdout } = await timedRun('node', [
    join(__dirname, 'verify-puts.child.js'),
    host,
    JSON.stringify(layers),
  ]);
  const result = childResult<{ s: number; cpu: number }>(stdout);
  if (!result) throw new Error(`verify-puts.child.js printed no result: ${stdout.slice(-400)}`);
  return result;
}

async function main(): Promise<void> {
  const { startRedis, startRegistry, startProxy, tmpDir } = helpers();
  build();
  const root = tmpDir('bench-oci');
  const layerBytes = Math.floor((TOTAL_MB * MB) / LAYERS);
  process.stderr.write(`making a ${LAYERS}-layer OCI layout, ${TOTAL_MB} MB raw …\n`);
  // One layout for the warm-up and re-push, one per measured run (blobs ferry has never seen).
  // (B: another RUNS layouts for the second serve process, so it too sees new blobs.)
  const fxs: OciFixture[] = [];
  const count = 1 + RUNS * (B_ENV ? 2 : 1);
  for (let i = 0; i < count; i++) {
    fxs.push(await makeOciLayout(join(root, `oci8-${i}`), LAYERS, layerBytes));
  }
  const fx = fxs[0]!;
  const source = `oci:${fx.layout}:latest`;
  const runSource = (i: number) => `oci:${fxs[i + 1]!.layout}:latest`;
  const runSourceB = (i: number) => `oci:${fxs[1 + RUNS + i]!.layout}:latest`;
  process.stderr.write(`  ${(fx.gzipBytes / MB).toFixed(1)} MB gzip, ${count} layouts\n`);

  const redis = await startRedis();
  let serve: Serve | undefined;
  let serveB: Serve | undefined;
  const rows: BenchRow[] = [
    {
      metric: 'ferry serve settings (BENCH_FERRY_ENV)',
      value: process.env.BENCH_FERRY_ENV || 'defaults',
    },
  ];
  if (B_ENV)
    rows.push({
      metric: 'B: a second serve with (BENCH_FERRY_ENV_B)',
      value: process.env.BENCH_FERRY_ENV_B!,
    });
  const b = {
    cold: [] as number[],
    known: [] as number[],
    cpu: [] as number[],
    knownCpu: [] as number[],
  };
  try {
    serve = await startServe(redis, root, 'oci-push');
    if (B_ENV) serveB = await startServe(redis, root, 'oci-push-b', B_ENV);
    // Warm-up: one push into a throw-away registry (JIT, connections, scripts loaded).
    for (const s of [serve, serveB]) {
      if (!s) continue;
      const reg = await startRegistry();
      await restPush(s, source, `${reg.host}/warm:1`);
      await reg.stop();
    }

    // ---- 1. first push into a fresh registry, interleaved ----
    const t = {
      rest: [] as number[],
      known: [] as number[],
      cli: [] as number[],
      skopeo: [] as number[],
      puts: [] as number[],
      checking: [] as number[],
    };
    const checkingCpu: number[] = [];
    const serveCpu: number[] = [];
    const knownCpu: number[] = [];
    const serveThreads = { main: [] as number[], other: [] as number[] };
    const regCpu = { rest: [] as number[], skopeo: [] as number[] };
    const cmds: Record<string, number>[] = [];
    const elds: EldWindow[] = [];
    const knownElds: EldWindow[] = [];
    for (let i = 0; i < RUNS; i++) {
      {
        const reg = await startRegistry();
        const c0 = cpuSeconds(serve.pid);
        const th0 = threadCpu(serve.pid);
        const r0 = cpuSeconds(reg.pid!);
        const s0 = commandStats(redis);
        await serve.eld();
        t.rest.push((await restPush(serve, runSource(i), `${reg.host}/app:r${i}`)).s);
        const e = await serve.eld();
        if (e) elds.push(e);
        cmds.push(diffStats(s0, commandStats(redis)));
        serveCpu.push(cpuSeconds(serve.pid) - c0);
        const th1 = threadCpu(serve.pid);
        serveThreads.main.push(th1.main - th0.main);
        serveThreads.other.push(th1.other - th0.other);
        regCpu.rest.push(cpuSeconds(reg.pid!) - r0);
        await reg.stop();
      }
      {
        // The same layout again into a fresh registry: every blob uploaded, diffIDs already verified.
        const reg = await startRegistry();
        const c0 = cpuSeconds(serve.pid);
        await serve.eld();
        t.known.push((await restPush(serve, runSource(i), `${reg.host}/app:k${i}`)).s);
        const e = await serve.eld();
        if (e) knownElds.push(e);
        knownCpu.push(cpuSeconds(serve.pid) - c0);
        await reg.stop();
      }
      if (serveB) {
        const r = await ferryRound(serveB, runSourceB(i), `b${i}`);
        for (const k of ['cold', 'known', 'cpu', 'knownCpu'] as const) b[k].push(r[k]);
        process.stderr.write(`  B: rest ${r.cold.toFixed(3)} known ${r.known.toFixed(3)}\n`);
      }
      if (FERRY_ONLY) {
        t.skopeo.push(NaN);
        t.cli.push(NaN);
        t.puts.push(NaN);
        t.checking.push(NaN);
        checkingCpu.push(NaN);
        regCpu.skopeo.push(NaN);
      } else {
        {
          const reg = await startRegistry();
          const r0 = cpuSeconds(reg.pid!);
          t.skopeo.push((await skopeoCopy(runSource(i), `${reg.host}/app:s${i}`)).s);
          regCpu.skopeo.push(cpuSeconds(reg.pid!) - r0);
          await reg.stop();
        }
        {
          const reg = await startRegistry();
          t.cli.push((await cliPush(serve, runSource(i), `${reg.host}/app:c${i}`)).s);
          await reg.stop();
        }
        {
          const reg = await startRegistry();
          t.puts.push(await parallelPuts(fxs[i + 1]!, reg.host));
          await reg.stop();
        }
        {
          const reg = await startRegistry();
          const r = await checkingPuts(fxs[i + 1]!, reg.host);
          t.checking.push(r.s);
          checkingCpu.push(r.cpu);
          await reg.stop();
        }
      }
      process.stderr.write(
        `run ${i}: rest ${t.rest[i]!.toFixed(3)} known ${t.known[i]!.toFixed(3)} skopeo ${t.skopeo[i]!.toFixed(3)} cli ${t.cli[i]!.toFixed(3)} puts ${t.puts[i]!.toFixed(3)} checking ${t.checking[i]!.toFixed(3)}\n`,
      );
    }
    const med = (xs: number[]) => stats(xs).median;
    const ratio = med(t.rest) / med(t.skopeo);
    const knownRatio = med(t.known) / med(t.skopeo);
    rows.push(
      {
        metric: `layout: ${LAYERS} layers, raw / gzip`,
        value: `${(fx.rawBytes / MB).toFixed(0)} / ${(fx.gzipBytes / MB).toFixed(0)}`,
        unit: 'MB',
      },
      {
        metric: `first push, ferry REST submit → succeeded (blobs new to ferry: every layer gunzipped), median (min–max) of ${RUNS}`,
        value: fmt(t.rest),
        unit: 's',
      },
      {
        metric: 'first push, ferry REST, blobs ferry pushed before (diffIDs verified then)',
        value: fmt(t.known),
        unit: 's',
      },
      {
        metric: 'first push, ferry CLI end to end (blobs ferry pushed before)',
        value: fmt(t.cli),
        unit: 's',
      },
      { metric: 'first push, skopeo copy', value: fmt(t.skopeo), unit: 's' },
      {
        metric: `first push, ${LAYERS} parallel curl PUTs (registry ingest limit)`,
        value: fmt(t.puts),
        unit: 's',
      },
      {
        metric: `first push, ${LAYERS} parallel checking PUTs (digest and diff_id of the bytes sent: the floor for a pusher that checks diff_ids)`,
        value: fmt(t.checking),
        unit: 's',
      },
      {
        metric: 'first push, ferry REST ÷ skopeo',
        value: ratio,
        unit: '×',
        target: '≤ 0.8×',
        pass: ratio <= 0.8,
      },
      {
        metric: 'first push, ferry REST ÷ skopeo, blobs ferry pushed before (info)',
        value: knownRatio,
        unit: '×',
      },
      {
        metric: 'first push, ferry CLI ÷ skopeo (info)',
        value: med(t.cli) / med(t.skopeo),
        unit: '×',
      },
      {
        metric:
          'first push, ferry REST ÷ parallel PUTs (info; ≤ 1.25 is "within 25 % of the limit")',
        value: med(t.rest) / med(t.puts),
        unit: '×',
      },
      {
        metric:
          'first push, ferry REST ÷ checking PUTs (info; ≤ 1.25 is "within 25 % of the checking floor")',
        value: med(t.rest) / med(t.checking),
        unit: '×',
      },
      {
        metric: 'first push, checking PUTs ÷ skopeo (info: what checking diff_ids costs)',
        value: med(t.checking) / med(t.skopeo),
        unit: '×',
      },
      {
        metric: 'first push, CPU per push: ferry serve / checking PUTs (info)',
        value: `${med(serveCpu).toFixed(3)} / ${med(checkingCpu).toFixed(3)}`,
        unit: 's',
      },
      {
        metric: 'first push, skopeo ÷ parallel PUTs (info)',
        value: med(t.skopeo) / med(t.puts),
        unit: '×',
      },
      {
        metric: 'first push, ferry serve CPU (main + threads) per push (info)',
        value: fmt(serveCpu),
        unit: 's',
      },
      {
        metric: 'first push, ferry serve CPU per push, blobs ferry pushed before (info)',
        value: fmt(knownCpu),
        unit: 's',
      },
      {
        metric:
          'first push, ferry serve CPU: main thread / other threads (libuv pool: gunzip for diffIDs, fs; V8 GC) (info)',
        value: `${med(serveThreads.main).toFixed(3)} / ${med(serveThreads.other).toFixed(3)}`,
        unit: 's',
      },
      {
        metric: 'first push, registry CPU per push: ferry / skopeo (info)',
        value: `${med(regCpu.rest).toFixed(3)} / ${med(regCpu.skopeo).toFixed(3)}`,
        unit: 's',
      },
    );
    if (serveB)
      rows.push(
        {
          metric: 'B: first push, ferry REST (new blobs) / the same again (known), s',
          value: `${fmt(b.cold)} / ${fmt(b.known)}`,
        },
        {
          metric: 'B: first push, ferry REST ÷ skopeo, new blobs / known blobs',
          value: `${(med(b.cold) / med(t.skopeo)).toFixed(3)} / ${(med(b.known) / med(t.skopeo)).toFixed(3)}`,
          unit: '×',
        },
        {
          metric: 'B ÷ A (same run): new blobs / known blobs',
          value: `${(med(b.cold) / med(t.rest)).toFixed(3)} / ${(med(b.known) / med(t.known)).toFixed(3)}`,
          unit: '×',
        },
        {
          metric: 'B: ferry serve CPU per push, new blobs / known blobs',
          value: `${fmt(b.cpu)} / ${fmt(b.knownCpu)}`,
          unit: 's',
        },
      );
    const lastCmds = cmds[cmds.length - 1]!;
    const totalCmds = Object.values(lastCmds).reduce((a, b) => a + b, 0);
    rows.push({
      metric:
        'first push, Redis commands (info; top: ' +
        Object.entries(lastCmds)
          .sort((a, b) => b[1] - a[1])
          .slice(0, 6)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ') +
        ')',
      value: totalCmds,
    });
    if (elds.length)
      rows.push({
        metric:
          'first push, serve event-loop delay p99 / max, beyond the 10 ms tick (info, profiled run)',
        value: `${med(elds.map((e) => e.p99)).toFixed(1)} / ${Math.max(...elds.map((e) => e.max)).toFixed(1)}`,
        unit: 'ms',
      });
    const gcRow = (what: string, ws: EldWindow[]) =>
      ws.length &&
      rows.push({
        metric: `${what}, serve GC on the main thread per push: minor count / ms, major count / ms (info, profiled run)`,
        value: `${med(ws.map((e) => e.gcMinor))} / ${med(ws.map((e) => e.gcMinorMs)).toFixed(0)}, ${med(ws.map((e) => e.gcMajor))} / ${med(ws.map((e) => e.gcMajorMs)).toFixed(0)}`,
      });
    gcRow('first push, new blobs', elds);
    gcRow('first push, known blobs', knownElds);

    // ---- 2. re-push, every blob present, through a counting proxy ----
    const reg = await startRegistry();
    const proxy = await startProxy({ host: '127.0.0.1', port: reg.port });
    try {
      await skopeoCopy(source, `${proxy.host}/app:seed`);
      const re = {
        rest: [] as number[],
        skopeo: [] as number[],
        cli: [] as number[],
        node: [] as number[],
      };
      let restBytes = 0;
      let restPatches = 0;
      let restBlobPuts = 0;
      let bytesSent = 0;
      let skopeoBytes = 0;
      let reCmds: Record<string, number> = {};
      // Profiled runs: the re-pushes get a profile window of their own.
      if (process.env.BENCH_PROFILE_DIR) await serve.eld();
      for (let i = 0; i < REPUSH_RUNS; i++) {
        proxy.resetCounters();
        const s0 = commandStats(redis);
        const r = await restPush(serve, source, `${proxy.host}/app:re${i}`);
        reCmds = diffStats(s0, commandStats(redis));
        re.rest.push(r.s);
        restBytes = proxy.bytesUp;
        restPatches = proxy.requests('PATCH');
        restBlobPuts = proxy.requests('PUT');
        bytesSent = (r.view.layers ?? []).reduce((a, l) => a + (l.bytesSent ?? 0), 0);
        proxy.resetCounters();
        if (FERRY_ONLY) {
          re.skopeo.push(NaN);
          re.cli.push(NaN);
          re.node.push(NaN);
          continue;
        }
        re.skopeo.push((await skopeoCopy(source, `${proxy.host}/app:rs${i}`)).s);
        skopeoBytes = proxy.bytesUp;
        re.cli.push((await cliPush(serve, source, `${proxy.host}/app:rc${i}`)).s);
        re.node.push((await timedRun(process.execPath, ['-e', '0'])).s);
      }
      if (process.env.BENCH_PROFILE_DIR) await serve.eld();
      const reRatio = med(re.rest) / med(re.skopeo);
      const noBlobs = restPatches === 0 && bytesSent === 0 && restBytes < 64 * 1024;
      const totalRe = Object.values(reCmds).reduce((a, b) => a + b, 0);
      rows.push(
        {
          metric: `re-push (all blobs present), ferry REST submit → succeeded, median (min–max) of ${REPUSH_RUNS}`,
          value: fmt(re.rest),
          unit: 's',
        },
        { metric: 're-push, skopeo copy', value: fmt(re.skopeo), unit: 's' },
        {
          metric: 're-push, ferry REST ÷ skopeo',
          value: reRatio,
          unit: '×',
          target: '≤ 0.5×',
          pass: reRatio <= 0.5,
        },
        {
          metric: `re-push, ferry: blob bytes (layers' bytesSent; PATCH ${restPatches}, PUT ${restBlobPuts}, bytes up ${restBytes} vs skopeo ${skopeoBytes})`,
          value: bytesSent,
          unit: 'B',
          target: '0',
          pass: noBlobs,
        },
        { metric: 're-push, ferry CLI end to end (info)', value: fmt(re.cli), unit: 's' },
        { metric: 're-push, `node -e 0` (Node start-up, info)', value: fmt(re.node), unit: 's' },
        {
          metric:
            're-push, Redis commands (info; top: ' +
            Object.entries(reCmds)
              .sort((a, b) => b[1] - a[1])
              .slice(0, 6)
              .map(([k, v]) => `${k} ${v}`)
              .join(', ') +
            ')',
          value: totalRe,
        },
      );
    } finally {
      await proxy.stop();
      await reg.stop();
    }
  } finally {
    await serveB?.stop();
    await serve?.stop();
    await redis.stop();
  }
  report('oci-push', rows);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
