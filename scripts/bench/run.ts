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
 * (RAM) where it exists with at least 8 GiB free — on the development VM the
 * disk's writeback stalls (10 s of iowait in a 100 s run) moved the
 * many-pushes result by ±15 % from run to run, for Ferry and skopeo alike.
 * blob-upload-rss and dir-pipeline stay on the OS temp dir: they write many
 * GiB (six 2 GiB blobs into a registry) and measure memory, not the registry.
 * BENCH_TMPDIR=os keeps the OS temp dir for all.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, statfsSync, writeFileSync } from 'node:fs';
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

/** Benchmarks whose temp data is many GiB: never in RAM by default. */
const LARGE = ['blob-upload-rss', 'dir-pipeline'];

/** Where a benchmark's temp dirs go (TMPDIR of its process); undefined: the OS's. */
export function benchTmpDir(file = ''): string | undefined {
  const want = process.env.BENCH_TMPDIR;
  if (want) return want === 'os' ? undefined : want;
  if (LARGE.some((x) => file.includes(x)) || !existsSync('/dev/shm')) return undefined;
  const st = statfsSync('/dev/shm');
  return st.bavail * st.bsize >= 8 * 1024 ** 3 ? '/dev/shm' : undefined;
}

async function runOne(file: string): Promise<Result[]> {
  const tmp = benchTmpDir(file);
  process.stderr.write(`temp dirs (fixtures, registry storage): ${tmp ?? 'the OS temp dir'}\n`);
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
  for (const f of files) {
    const tmp = benchTmpDir(f) ?? 'the OS temp dir';
    lines.push(
      `| ${f.replace('.bench.ts', '')} | temp dirs (fixtures, registry storage) | ${tmp} |  |  |`,
    );
  }
  const table = lines.join('\n');
  console.log(table);
  writeFileSync(join(dir, '..', '..', 'bench-results.md'), table + '\n');
  process.exitCode = failed ? 1 : 0;
}

void main();
