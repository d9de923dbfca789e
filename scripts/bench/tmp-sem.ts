import { createHash, randomBytes } from 'node:crypto';
import { RegistryClient, bufferBlobSource } from '@ferry/registry-client';
import { loadConfig } from '@ferry/config';
import { openQueueContext } from '@ferry/queue';
import { findInRegistry } from '@ferry/runtime';
import { startRegistry, startRedis } from '../../test/helpers';
const dig = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');
(async () => {
  const reg = await startRegistry();
  const redis = await startRedis();
  const config = loadConfig({ FERRY_REDIS_URL: redis.url, FERRY_QUEUE_PREFIX: '{t}', FERRY_DOCKER_CONFIG: '/nonexistent/x.json' });
  const ctx = await openQueueContext(config, { role: 'producer', name: 'x' });
  const client = new RegistryClient({ allow: ['127.0.0.1'], dockerConfigPath: reg.dockerConfigPath });
  const r = { registry: reg.host, repository: 'x/y' };
  const blobs = Array.from({ length: 9 }, () => randomBytes(1000));
  for (const b of blobs) await client.uploadBlob(r, bufferBlobSource(b, dig(b)), { monolithic: true });
  for (const mode of ['plain', 'permit', 'plain', 'permit']) {
    const times: number[] = [];
    for (let round = 0; round < 30; round++) {
      const t0 = process.hrtime.bigint();
      let next = 0;
      await Promise.all(Array.from({ length: 5 }, async () => {
        while (next < 9) { const i = next++;
          if (mode === 'plain') await client.blobExists(r, dig(blobs[i]));
          else await findInRegistry(ctx, client, r, dig(blobs[i]), {}); }
      }));
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    times.sort((a, b) => a - b);
    console.log(`${mode}: 9 HEADs median ${times[15].toFixed(2)} ms min ${times[0].toFixed(2)}`);
  }
  await ctx.close(); await client.close(); await reg.stop(); await redis.stop();
})();
