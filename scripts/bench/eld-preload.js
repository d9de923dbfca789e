'use strict';
// Loaded into a benchmarked `ferry serve` with NODE_OPTIONS=--require
// (benchmark tooling only; production never loads it). On every SIGUSR2:
//  - appends the event loop's delay since the last signal (perf_hooks, ms,
//    beyond the 10 ms sampling interval, which the histogram includes) to
//    BENCH_ELD_OUT and resets the histogram;
//  - with BENCH_PROF_PREFIX, stops the CPU profile running since the last
//    signal, writes it to PREFIX-<n>.cpuprofile, and starts the next one —
//    so a benchmark gets one profile per measurement window;
//  - adds the window's garbage collections on the main thread: count and ms,
//    minor (scavenges) and major (mark-compacts).
const { monitorEventLoopDelay, PerformanceObserver, constants } = require('node:perf_hooks');
const { appendFileSync, writeFileSync } = require('node:fs');

const out = process.env.BENCH_ELD_OUT;
const profPrefix = process.env.BENCH_PROF_PREFIX;
if (out) {
  const RESOLUTION_MS = 10;
  const h = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  h.enable();
  const gc = { minor: 0, minorMs: 0, major: 0, majorMs: 0 };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = e.detail && e.detail.kind;
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) {
        gc.minor++;
        gc.minorMs += e.duration;
      } else if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) {
        gc.major++;
        gc.majorMs += e.duration;
      }
    }
  }).observe({ entryTypes: ['gc'] });
  let session;
  let n = 0;
  const startProfile = () => {
    if (!profPrefix) return Promise.resolve();
    if (!session) {
      const inspector = require('node:inspector');
      session = new inspector.Session();
      session.connect();
    }
    const post = (m, p) =>
      new Promise((res, rej) => session.post(m, p || {}, (e, r) => (e ? rej(e) : res(r))));
    // BENCH_PROF_INTERVAL_US: a finer sampling interval (V8's default is ~1 ms) to follow one push.
    const interval = Number(process.env.BENCH_PROF_INTERVAL_US || 0);
    return post('Profiler.enable')
      .then(() => (interval > 0 ? post('Profiler.setSamplingInterval', { interval }) : undefined))
      .then(() => post('Profiler.start'));
  };
  const stopProfile = () => {
    if (!profPrefix || !session) return Promise.resolve();
    return new Promise((res) =>
      session.post('Profiler.stop', {}, (e, r) => {
        if (!e) writeFileSync(`${profPrefix}-${n++}.cpuprofile`, JSON.stringify(r.profile));
        res();
      }),
    );
  };
  process.on('SIGUSR2', () => {
    // The histogram records the whole interval between ticks; what is beyond the resolution is delay.
    const ms = (ns) => Number(Math.max(0, ns / 1e6 - RESOLUTION_MS).toFixed(2));
    const snap = {
      at: Date.now(),
      mean: ms(h.mean),
      p50: ms(h.percentile(50)),
      p99: ms(h.percentile(99)),
      max: ms(h.max),
      count: h.count,
      gcMinor: gc.minor,
      gcMinorMs: Number(gc.minorMs.toFixed(1)),
      gcMajor: gc.major,
      gcMajorMs: Number(gc.majorMs.toFixed(1)),
    };
    h.reset();
    Object.assign(gc, { minor: 0, minorMs: 0, major: 0, majorMs: 0 });
    stopProfile()
      .then(startProfile)
      .catch(() => undefined)
      .then(() => appendFileSync(out, JSON.stringify(snap) + '\n'));
  });
}
