/**
 * `npm run bench`: runs every scripts/bench/*.bench.ts in its own process (so
 * peak RSS is per benchmark), collects the line each prints as
 * `BENCH_RESULT {json}`, and prints one markdown table. Targets are ratios
 * against a peer measured in the same run, never absolute timings.
 *
 * BENCH_RESULT json: { name, rows: [{ metric, value, unit, target?, pass? }] }
 * Filter: `npm run bench -- dir-pipeline` runs only matching files.
 *
 * Fixtures and every registry's storage go to BENCH_TMPDIR: by default /dev/shm
 * (RAM) where it exists — on the development VM the disk's writeback stalls
 * (10 s of iowait in a 100 s run) moved the many-pushes result by ±15 % from
 * run to run, for Ferry and skopeo alike. BENCH_TMPDIR=os keeps the OS temp dir.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

interface Row {
  metric: string;
  value: number | string;
  unit?: string;
  target?: string;
  pass?: boolean;
}
interface Result {
  name: string;
  rows: Row[];
}

/** Where the benchmarks' temp dirs go (TMPDIR of each benchmark process); undefined: the OS's. */
export function benchTmpDir(): string | undefined {
  const want = process.env.BENCH_TMPDIR;
  if (want) return want === 'os' ? undefined : want;
  return existsSync('/dev/shm') ? '/dev/shm' : undefined;
}

async function runOne(file: string): Promise<Result[]> {
  const tmp = benchTmpDir();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', file], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: tmp ? { ...process.env, TMPDIR: tmp } : process.env,
    });
    const results: Result[] = [];
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.startsWith('BENCH_RESULT ')) results.push(JSON.parse(line.slice(13)) as Result);
        else process.stderr.write(line + '\n');
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) reject(new Error(`${file} exited with ${code}`));
      else resolve(results);
    });
  });
}

async function main(): Promise<void> {
  const filters = process.argv.slice(2);
  const dir = __dirname;
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.bench.ts'))
    .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
    .sort();
  const all: Result[] = [];
  let failed = false;
  const tmp = benchTmpDir() ?? `${process.env.TMPDIR ?? '/tmp'} (the OS temp dir)`;
  process.stderr.write(`temp dirs (fixtures, registry storage): ${tmp}\n`);
  for (const f of files) {
    process.stderr.write(`\n== ${f}\n`);
    try {
      all.push(...(await runOne(join(dir, f))));
    } catch (e) {
      failed = true;
      process.stderr.write(`bench ${f} failed: ${(e as Error).message}\n`);
    }
  }
  const lines = ['| benchmark | metric | value | target | result |', '|---|---|---|---|---|'];
  for (const r of all) {
    for (const row of r.rows) {
      const v = typeof row.value === 'number' ? Number(row.value.toFixed(3)) : row.value;
      const verdict = row.pass === undefined ? '' : row.pass ? 'pass' : 'FAIL';
      if (row.pass === false) failed = true;
      lines.push(
        `| ${r.name} | ${row.metric} | ${v}${row.unit ? ' ' + row.unit : ''} | ${row.target ?? ''} | ${verdict} |`,
      );
    }
  }
  lines.push(`| run | temp dirs (fixtures, registry storage) | ${tmp} |  |  |`);
  const table = lines.join('\n');
  console.log(table);
  writeFileSync(join(dir, '..', '..', 'bench-results.md'), table + '\n');
  process.exitCode = failed ? 1 : 0;
}

void main();
