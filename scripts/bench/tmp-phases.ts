import { join } from 'node:path';
import Redis from 'ioredis';
import { Keys } from '@ferry/queue';
import { build, helpers, restPush, startServe, submit, waitSucceeded } from './ferry-serve';
import { makeOciLayout } from './oci-fixture';
(async () => {
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
      const t1 = Date.now();
      const view = await waitSucceeded(serve, id, 5);
      const ev = (await r.xrange(keys.events(id), '-', '+')).map(([, f]) => JSON.parse(f[1]!));
      const at = (pred: (e: any) => boolean) => { const e = ev.find(pred); return e ? Date.parse(e.at) - t0 : NaN; };
      const layers = ev.filter((e) => e.type === 'layer').map((e) => Date.parse(e.at) - t0);
      rows.push([t1 - t0, at((e) => e.type === 'status' && e.status === 'running'), Math.max(...layers), at((e) => e.type === 'manifest'), at((e) => e.type === 'tag'), Date.parse(view.finishedAt!) - t0]);
    }
    const med = (k: number) => rows.map((x) => x[k]!).sort((a, b) => a - b)[Math.floor(rows.length / 2)];
    console.log('202, running, layers recorded, manifest ev, tag ev, finished (ms from submit), medians:');
    console.log([0, 1, 2, 3, 4, 5].map(med).join('  '));
    for (const x of rows) console.log(x.join('  '));
  } finally {
    r.disconnect();
    await serve.service.stop();
    await reg.stop();
    await redis.stop();
  }
})();
