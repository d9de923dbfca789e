'use strict';
/**
 * SSE followers for the fault suite, run as its own process (so the API's
 * load is measured apart from the test's): opens COUNT event streams of one
 * push on loopback, in batches, and waits until each one has seen the push's
 * final status event or ended. Bounded by TIMEOUT_MS.
 *
 * env: URL (…/v1/pushes/ID/events), TOKEN, COUNT, TIMEOUT_MS, BATCH
 * stdout: one JSON line {"connected":N} once every stream is open (or failed),
 *         then one JSON line with the result, and the process exits.
 */
const http = require('node:http');
const { createParser } = require('eventsource-parser');

const url = process.env.URL;
const token = process.env.TOKEN;
const count = Number(process.env.COUNT);
const timeoutMs = Number(process.env.TIMEOUT_MS || 120000);
const batch = Number(process.env.BATCH || 200);
const FINAL = ['succeeded', 'failed', 'cancelled'];

const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
let connected = 0;
let failedToConnect = 0;
let finals = 0;
let endedWithoutFinal = 0;
const statuses = {};
const errors = {};
let settledOpen = 0;
let reported = false;
const requests = [];

function report() {
  if (reported) return;
  reported = true;
  process.stdout.write(
    JSON.stringify({
      done: true,
      count,
      connected,
      failedToConnect,
      finals,
      endedWithoutFinal,
      statuses,
      errors,
    }) + '\n',
  );
  for (const r of requests) r.destroy();
  setTimeout(() => process.exit(0), 50);
}
const timer = setTimeout(report, timeoutMs);

function opened() {
  settledOpen++;
  if (settledOpen === count)
    process.stdout.write(JSON.stringify({ connected, failedToConnect }) + '\n');
}
function finished() {
  if (finals + endedWithoutFinal + failedToConnect >= count) {
    clearTimeout(timer);
    report();
  }
}

function follow() {
  return new Promise((resolve) => {
    let sawFinal = false;
    let counted = false;
    const req = http.request(
      url,
      { agent, headers: { accept: 'text/event-stream', authorization: `Bearer ${token}` } },
      (res) => {
        statuses[res.statusCode] = (statuses[res.statusCode] || 0) + 1;
        if (res.statusCode === 200) connected++;
        else failedToConnect++;
        opened();
        resolve();
        const parser = createParser({
          onEvent: (e) => {
            if (sawFinal) return;
            try {
              const d = JSON.parse(e.data);
              if (d.type === 'status' && FINAL.includes(d.status)) {
                sawFinal = true;
                finals++;
                req.destroy();
                finished();
              }
            } catch {
              // not JSON: not ours
            }
          },
        });
        res.setEncoding('utf8');
        res.on('data', (c) => parser.feed(c));
        res.on('end', () => {
          if (!sawFinal && res.statusCode === 200 && !counted) {
            counted = true;
            endedWithoutFinal++;
            finished();
          } else if (res.statusCode !== 200) finished();
        });
        res.on('error', () => undefined);
      },
    );
    req.on('error', (err) => {
      if (sawFinal) return;
      errors[err.code || err.message] = (errors[err.code || err.message] || 0) + 1;
      if (!counted) {
        counted = true;
        failedToConnect++;
        opened();
        resolve();
        finished();
      }
    });
    requests.push(req);
    req.end();
  });
}

(async () => {
  for (let i = 0; i < count; i += batch) {
    const n = Math.min(batch, count - i);
    await Promise.all(Array.from({ length: n }, follow));
  }
})();
