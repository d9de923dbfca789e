'use strict';
// Loaded into a benchmarked `ferry serve` with NODE_OPTIONS=--require: measures
// the event loop's delay (perf_hooks) and, on SIGUSR2, appends a snapshot
// (ms) to BENCH_ELD_OUT and resets the histogram, so a benchmark can scope it
// to one measurement. Benchmark tooling only; production never loads it.
const { monitorEventLoopDelay } = require('node:perf_hooks');
const { appendFileSync } = require('node:fs');

const out = process.env.BENCH_ELD_OUT;
if (out) {
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  process.on('SIGUSR2', () => {
    const ms = (ns) => Number((ns / 1e6).toFixed(2));
    appendFileSync(
      out,
      JSON.stringify({
        at: Date.now(),
        mean: ms(h.mean),
        p50: ms(h.percentile(50)),
        p99: ms(h.percentile(99)),
        max: ms(h.max),
        count: h.count,
      }) + '\n',
    );
    h.reset();
  });
}
