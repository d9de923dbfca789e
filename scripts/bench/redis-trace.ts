/**
 * Diagnosis: every Redis command one push costs, from `redis-cli MONITOR`
 * while a compiled `ferry serve` (all roles) pushes one image into a fresh
 * registry after a warm-up push. EVALSHA calls are named (BullMQ's scripts
 * and Ferry's own, by SHA-1 of their source). Not a benchmark (no
 * BENCH_RESULT): it prints a table.
 *
 *   npx tsx --conditions=ferry-source scripts/bench/redis-trace.ts [tiny|oci8|repush]
 *   (BENCH_OCI_MB sizes oci8 and repush, default 8; repush: the 8-layer image
 *   again into the registry that has it; BENCH_TRACE_TIMELINE=1 prints every
 *   client command with its time)
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { build, helpers, restPush, startServe } from './ferry-serve';
import { makeManySmall, makeOciLayout } from './oci-fixture';

/** sha1 → script name, for BullMQ's scripts and Ferry's (Script instances made while loading @ferry/queue). */
function scriptNames(): Map<string, string> {
  const names = new Map<string, string>();
  const sha = (s: string) => createHash('sha1').update(s).digest('hex');
  const dir = join(require.resolve('bullmq'), '..', 'scripts');
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.js') && x !== 'index.js')) {
    for (const v of Object.values(require(join(dir, f)) as Record<string, unknown>)) {
      const s = v as { name?: string; content?: string };
      if (s?.content) names.set(sha(s.content), `bullmq:${s.name}`);
    }
  }
  // Record Ferry's scripts as @ferry/queue's modules construct them.
  // The compiled modules (plain CommonJS exports, replaceable; `new script_1.Script` reads it late).
  const dist = join(__dirname, '..', '..', 'packages', 'queue', 'dist');
  const scriptModule = require(join(dist, 'script.js')) as {
    Script: new (name: string, lua: string) => { name: string; lua: string };
  };
  const Base = scriptModule.Script;
  scriptModule.Script = class extends Base {
    constructor(name: string, lua: string) {
      super(name, lua);
      names.set(sha(lua), name);
    }
  };
  for (const f of readdirSync(dist).filter((x) => x.endsWith('.js'))) require(join(dist, f));
  return names;
}

async function main(): Promise<void> {
  const which = process.argv[2] ?? 'tiny';
  const names = scriptNames();
  const { startRedis, startRegistry, tmpDir } = helpers();
  build();
  const root = tmpDir('bench-trace');
  let source: string;
  let warm: string;
  if (which === 'tiny') {
    const sources = await makeManySmall(join(root, 'many'), 2);
    warm = sources[0]!;
    source = sources[1]!;
  } else {
    const mb = Number(process.env.BENCH_OCI_MB ?? 8);
    const fx = await makeOciLayout(join(root, 'oci8'), 8, Math.floor((mb * 1e6) / 8));
    source = `oci:${fx.layout}:latest`;
    warm = source;
  }
  const redis = await startRedis();
  const serve = await startServe(redis, root, `trace-${which}`);
  try {
    // repush: the measured push goes to the registry the warm-up filled (every blob present).
    const repush = which === 'repush';
    const w = await startRegistry();
    await restPush(serve, warm, `${w.host}/${repush ? 'app' : 'warm'}:0`);
    if (!repush) await w.stop();
    const reg = repush ? w : await startRegistry();
    const mon = spawn('redis-cli', ['-p', String(redis.port), 'monitor'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    mon.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await new Promise((r) => setTimeout(r, 300));
    const mark = out.length;
    const r = await restPush(serve, source, `${reg.host}/app:1`);
    await new Promise((r2) => setTimeout(r2, 300));
    mon.kill();
    await reg.stop();
    const lines = out
      .slice(mark)
      .split('\n')
      .filter((l) => l.includes('"'));
    const count = new Map<string, number>();
    const inLua = new Map<string, number>();
    let lua = 0;
    let current = '';
    for (const l of lines) {
      const m = /\] "([^"]+)"(?: "([^"]*)")?(?: "([^"]*)")?(?: "([^"]*)")?/.exec(l);
      if (!m) continue;
      const cmd = m[1]!.toLowerCase();
      let k = cmd;
      if (cmd === 'evalsha') k = `evalsha ${names.get(m[2]!) ?? m[2]!.slice(0, 8)}`;
      else if (cmd === 'eval') k = 'eval (script body)';
      else if (m[2])
        k = `${cmd} ${m[2].replace(/[0-9a-f]{8,}|\d{3,}/gi, '*').replace(/^\{[^}]+\}/, '{P}')}`;
      if (/ lua\] /.test(l)) {
        lua++;
        inLua.set(current, (inLua.get(current) ?? 0) + 1);
        continue;
      }
      if (cmd === 'evalsha') current = k;
      count.set(k, (count.get(k) ?? 0) + 1);
    }
    // Connections blocked in BZPOPMIN etc. are idle waits, counted like any other call.
    console.log(
      `one ${which} push (REST ${r.s.toFixed(3)} s): ${lines.length} Redis commands, ${lines.length - lua} sent by clients, ${lua} inside scripts`,
    );
    console.log('sent by clients:');
    for (const [k, v] of [...count].sort((a, b) => b[1] - a[1]))
      console.log(`${String(v).padStart(6)}  ${k}`);
    if (process.env.BENCH_TRACE_TIMELINE) {
      // Client commands in time order, ms from the first; gaps of 3 ms or more marked.
      let t0 = 0;
      let prev = 0;
      for (const l of lines) {
        if (/ lua\] /.test(l)) continue;
        const t = Number(l.slice(0, l.indexOf(' '))) * 1000;
        if (!t0) t0 = prev = t;
        const m = /\] "([^"]+)"(?: "([^"]*)")?(?: "([^"]*)")?(?: "([^"]*)")?/.exec(l);
        if (!m) continue;
        const what =
          m[1] === 'evalsha' ? `evalsha ${names.get(m[2]!) ?? m[2]}` : `${m[1]} ${m[2] ?? ''}`;
        const gap = t - prev;
        prev = t;
        console.log(
          `${(t - t0).toFixed(1).padStart(8)} ${gap >= 3 ? `(+${gap.toFixed(0)})`.padStart(7) : '       '} ${l.slice(l.indexOf('[') + 1, l.indexOf(']')).padEnd(18)} ${what.slice(0, 110)}`,
        );
      }
    }
    console.log('inside scripts, by the script last called (approximate with concurrent clients):');
    for (const [k, v] of [...inLua].sort((a, b) => b[1] - a[1]))
      console.log(`${String(v).padStart(6)}  ${k}`);
  } finally {
    await serve.stop();
    await redis.stop();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
