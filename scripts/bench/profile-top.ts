/**
 * Summarises a V8 .cpuprofile (from `node --cpu-prof`, e.g. a benchmark's
 * serve process under BENCH_PROFILE_DIR): self time by function and by
 * package, and inclusive time of chosen frames.
 *
 *   npx tsx scripts/bench/profile-top.ts PROFILE.cpuprofile [TOP=30] [FUNCTION]
 *
 * With FUNCTION: the heaviest call paths (outside node internals) that lead
 * to samples in frames of that name.
 */
import { readFileSync } from 'node:fs';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: Node[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

function where(url: string): string {
  if (!url) return '(native)';
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (m) return m[1]!;
  const f = /\/(packages|services)\/([^/]+)\//.exec(url);
  if (f) return `@ferry/${f[2]}`;
  if (url.startsWith('node:')) return url;
  return url.replace(/^file:\/\//, '');
}

function main(): void {
  const [file, topArg, focus] = process.argv.slice(2);
  if (!file) throw new Error('usage: profile-top.ts PROFILE [TOP]');
  const top = Number(topArg ?? 30);
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const selfUs = new Map<number, number>();
  p.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
  const total = (p.endTime - p.startTime) / 1000;
  const fn = new Map<string, number>();
  const pkg = new Map<string, number>();
  const incl = new Map<string, number>();
  let idle = 0;
  for (const [id, us] of selfUs) {
    const n = byId.get(id)!;
    const cf = n.callFrame;
    const name = `${cf.functionName || '(anonymous)'} ${where(cf.url)}:${cf.lineNumber + 1}`;
    if (cf.functionName === '(idle)') idle += us;
    fn.set(name, (fn.get(name) ?? 0) + us);
    pkg.set(where(cf.url), (pkg.get(where(cf.url)) ?? 0) + us);
    // Inclusive time by package: each package on the stack once.
    const seen = new Set<string>();
    for (let x: number | undefined = id; x !== undefined; x = parent.get(x)) {
      const w = where(byId.get(x)!.callFrame.url);
      if (!seen.has(w)) {
        seen.add(w);
        incl.set(w, (incl.get(w) ?? 0) + us);
      }
    }
  }
  if (focus) {
    const paths = new Map<string, number>();
    for (const [id, us] of selfUs) {
      const frames: string[] = [];
      let hit = false;
      for (let x: number | undefined = id; x !== undefined; x = parent.get(x)) {
        const cf = byId.get(x)!.callFrame;
        if (cf.functionName === focus) hit = true;
        if (hit && cf.url && !cf.url.startsWith('node:') && frames.length < 6)
          frames.push(`${cf.functionName || '(anon)'}@${where(cf.url)}:${cf.lineNumber + 1}`);
      }
      if (!hit) continue;
      const k = frames.join(' < ');
      paths.set(k, (paths.get(k) ?? 0) + us);
    }
    console.log(`call paths into ${focus}:`);
    for (const [k, v] of [...paths].sort((a, b) => b[1] - a[1]).slice(0, top))
      console.log(`${(v / 1000).toFixed(1).padStart(9)} ms  ${k}`);
    return;
  }
  // Inclusive time of Ferry's own functions (each once per sample): where a role spends its time.
  const ferryIncl = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const seen = new Set<string>();
    for (let x: number | undefined = id; x !== undefined; x = parent.get(x)) {
      const cf = byId.get(x)!.callFrame;
      const w = where(cf.url);
      if (!w.startsWith('@ferry/')) continue;
      const k = `${cf.functionName || '(anonymous)'} ${w}:${cf.lineNumber + 1}`;
      if (!seen.has(k)) {
        seen.add(k);
        ferryIncl.set(k, (ferryIncl.get(k) ?? 0) + us);
      }
    }
  }
  const ms = (us: number) => (us / 1000).toFixed(1).padStart(9);
  console.log(
    `profile ${file}: ${total.toFixed(0)} ms wall, ${(idle / 1000).toFixed(0)} ms idle, ${((total * 1000 - idle) / 1000).toFixed(0)} ms busy on the main thread`,
  );
  console.log('\nself time by function:');
  for (const [k, v] of [...fn].sort((a, b) => b[1] - a[1]).slice(0, top))
    console.log(`${ms(v)} ms  ${k}`);
  console.log('\nself time by package:');
  for (const [k, v] of [...pkg].sort((a, b) => b[1] - a[1]).slice(0, 20))
    console.log(`${ms(v)} ms  ${k}`);
  console.log(
    "\ninclusive time of Ferry's functions (async work is attributed to the frame that resumed it):",
  );
  for (const [k, v] of [...ferryIncl].sort((a, b) => b[1] - a[1]).slice(0, top))
    console.log(`${ms(v)} ms  ${k}`);
  console.log('\ninclusive time by package (on the stack):');
  for (const [k, v] of [...incl].sort((a, b) => b[1] - a[1]).slice(0, 20))
    console.log(`${ms(v)} ms  ${k}`);
}

main();
