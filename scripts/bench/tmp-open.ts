import { join } from 'node:path';
import { openSource } from '@ferry/image-source';
import { helpers } from './ferry-serve';
import { makeOciLayout } from './oci-fixture';
(async () => {
  const { tmpDir } = helpers();
  const root = tmpDir('open');
  const fx = await makeOciLayout(join(root, 'oci8'), 8, 1_000_000);
  const source = `oci:${fx.layout}:latest`;
  const times: number[] = [];
  for (let i = 0; i < 60; i++) {
    const t0 = process.hrtime.bigint();
    await openSource(source, { root, gzipLevel: 6 });
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  times.sort((a, b) => a - b);
  console.log('openSource oci 8 layers: median', times[30].toFixed(2), 'ms min', times[0].toFixed(2));
})();
