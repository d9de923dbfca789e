/** Helpers shared by the benchmarks. */
import { readFileSync } from 'node:fs';

/** Peak resident set size of this process (VmHWM), in bytes. */
export function peakRss(): number {
  const m = /VmHWM:\s+(\d+)\s+kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : process.memoryUsage().rss;
}

export interface BenchRow {
  metric: string;
  value: number | string;
  unit?: string;
  target?: string;
  pass?: boolean;
}

/** Reports a benchmark's rows to scripts/bench/run.ts. */
export function report(name: string, rows: BenchRow[]): void {
  console.log('BENCH_RESULT ' + JSON.stringify({ name, rows }));
}
