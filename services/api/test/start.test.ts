import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { loadConfig } from '@ferry/config';
import { createLogger } from '@ferry/log';
import { startApi } from '@ferry/api';
import { freePort } from '../../../test/helpers/ports';
import { startRedis, type RedisHandle } from '../../../test/helpers/redis';
import { makeSourceRoot, readSse } from './helpers';

describe('startApi', function () {
  it('comes up without Redis (/readyz 503), becomes ready when Redis appears, and close() stops it', async () => {
    const redisPort = await freePort();
    const src = makeSourceRoot();
    const config = loadConfig(
      {
        FERRY_REDIS_URL: `redis://127.0.0.1:${redisPort}`,
        FERRY_HOST: '127.0.0.1',
        FERRY_PORT: '0',
        FERRY_SOURCE_ROOT: src.root,
        FERRY_API_TOKENS: 't0ken',
        FERRY_QUEUE_PREFIX: '{start}',
        FERRY_SHUTDOWN_TIMEOUT: '60',
      },
      src.root,
    );
    const warnings: string[] = [];
    const logs = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) {
          const entry = JSON.parse(line) as { level: string; message: string };
          if (entry.level === 'warn') warnings.push(entry.message);
        }
        done();
      },
    });
    const api = await startApi(config, createLogger({ stream: logs, format: 'json' }));
    let redis: RedisHandle | undefined;
    try {
      assert.match(api.url, /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.equal((await fetch(`${api.url}/healthz`)).status, 200);
      assert.equal((await fetch(`${api.url}/readyz`)).status, 503);

      redis = await startRedis({ port: redisPort });
      let ready = 0;
      for (let i = 0; i < 100 && ready !== 200; i++) {
        ready = (await fetch(`${api.url}/readyz`)).status;
        if (ready !== 200) await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(ready, 200, 'ready once Redis answers');
      const res = await fetch(`${api.url}/v1/pushes`, {
        method: 'POST',
        headers: { authorization: 'Bearer t0ken', 'content-type': 'application/json' },
        body: JSON.stringify({ source: `dir:${src.app}`, target: 'localhost:59999/team/app:1' }),
      });
      assert.equal(res.status, 202, await res.clone().text());
      const { id } = (await res.json()) as { id: string };

      // An open SSE stream does not hold up shutdown: close() ends it.
      const sse = readSse(`${api.url}/v1/pushes/${id}/events`, { authorization: 'Bearer t0ken' });
      await new Promise((r) => setTimeout(r, 200));
      // Ordering, not timing: close() ends the stream itself, and is clean — it never
      // had to abandon the server at the deadline (which would log a warning).
      await api.close();
      const stream = await sse;
      assert.equal(stream.ended, true);
      assert.deepEqual(
        warnings.filter((w) => /deadline/.test(w)),
        [],
        'close() did not wait for the deadline',
      );
      assert.equal(JSON.parse(stream.events[0].data).status, 'queued');
    } finally {
      await api.close();
      await redis?.stop();
    }
    const after = await fetch(`${api.url}/healthz`).then(
      () => 'answered',
      () => 'closed',
    );
    assert.equal(after, 'closed');
  });
});
