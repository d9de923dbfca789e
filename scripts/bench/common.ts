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

/** The `CHILD_RESULT {json}` line a benchmark's child process printed, or undefined. */
export function childResult<T>(stdout: string): T | undefined {
  const line = stdout.split('\n').find((l) => l.startsWith('CHILD_RESULT '));
  return line ? (JSON.parse(line.slice('CHILD_RESULT '.length)) as T) : undefined;
}
