/**
 * Diagnosis: where a re-push's time goes, from the push's own event times.
 * A compiled `ferry serve` (all roles) pushes an 8-layer OCI layout once,
 * then re-pushes it N times into the registry that has every blob, one after
 * another; for each, the times (ms after the submit) of the 202, the status
 * `running` (the first lookup job started), the last layer event (the
 * lookups recorded), the manifest and tag events and `finishedAt`. Not a
 * benchmark (no BENCH_RESULT): it prints the medians and each run, then the
 * serve process' last log lines.
 *
 *   N=15 npx tsx --conditions=ferry-source scripts/bench/repush-phases.ts
 */
import { join } from 'node:path';
import Redis from 'ioredis';
import { Keys } from '@ferry/queue';
import { build, helpers, restPush, startServe, submit, waitSucceeded } from './ferry-serve';
import { makeOciLayout } from './oci-fixture';

interface TimedEvent {
  type: string;
  status?: string;
  at: string;
}

async function main(): Promise<void> {
  const { startRedis, startRegistry, tmpDir } = helpers();
  build();
  const root = tmpDir('phases');
  const fx = await makeOciLayout(join(root, 'oci8'), 8, 1_000_000);
  const source = `oci:${fx.layout}:latest`;
  const redis = await startRedis();
  const serve = await startServe(redis, root, 'phases');
  const reg = await startRegistry();
  const r = new Redis(redis.url);
  const keys = new Keys(serve.index.prefix);
  try {
    await restPush(serve, source, `${reg.host}/app:0`);
    const rows: number[][] = [];
    for (let i = 0; i < Number(process.env.N ?? 15); i++) {
      const t0 = Date.now();
      const id = await submit(serve, source, `${reg.host}/app:r${i}`);
      const accepted = Date.now() - t0;
      const view = await waitSucceeded(serve, id, 5);
      const events = (await r.xrange(keys.events(id), '-', '+')).map(
        ([, f]) => JSON.parse(f[1]!) as TimedEvent,
      );
      const at = (e: TimedEvent | undefined) => (e ? Date.parse(e.at) - t0 : NaN);
      const layers = events.filter((e) => e.type === 'layer').map((e) => at(e));
      rows.push([
        accepted,
        at(events.find((e) => e.type === 'status' && e.status === 'running')),
        Math.max(...layers),
        at(events.find((e) => e.type === 'manifest')),
        at(events.find((e) => e.type === 'tag')),
        Date.parse(view.finishedAt!) - t0,
      ]);
    }
    const median = (k: number) =>
      rows.map((x) => x[k]!).sort((a, b) => a - b)[Math.floor(rows.length / 2)];
    console.log('ms after submit: 202, running, layers recorded, manifest, tag, finished');
    console.log('median:', [0, 1, 2, 3, 4, 5].map(median).join('  '));
    for (const x of rows) console.log('       ', x.join('  '));
    console.log(serve.service.logs().split('\n').slice(-12).join('\n'));
  } finally {
    r.disconnect();
    await serve.service.stop();
    await reg.stop();
    await redis.stop();
  }
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
