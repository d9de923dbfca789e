/**
 * Pushing 1 GiB of incompressible data through the streamed upload path
 * (one PATCH, Transfer-Encoding: chunked) keeps peak RSS flat: no buffering
 * of the body.
 *
 * Two child processes, same code loaded, same bytes:
 *   baseline — generates the 1 GiB (AES-128-CTR keystream, deterministic,
 *              incompressible) and hashes it through the same BlobSource;
 *   upload   — the same source pushed to a real docker-registry by
 *              RegistryClient.uploadBlob({ chunkSize: 0 }).
 * Each child reports its own VmHWM. Target: upload ≤ baseline + 64 MB.
 * The digests of both must agree with the registry's (read back by HEAD).
 */
import { spawn } from 'node:child_process';
import { createCipheriv } from 'node:crypto';
import { Readable } from 'node:stream';
import { RegistryClient, regeneratingBlobSource } from '@ferry/registry-client';
import { startRegistry } from '../../test/helpers';
import { peakRss, report } from './common';

const SIZE = Number(process.env.BENCH_BLOB_BYTES ?? 1024 * 1024 * 1024);
const PIECE = 1024 * 1024;

/** A deterministic, incompressible stream of `size` bytes that never holds more than one piece. */
function keystream(size: number): Readable {
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, 0));
  const zeros = Buffer.alloc(PIECE);
  let produced = 0;
  return new Readable({
    highWaterMark: PIECE,
    read() {
      if (produced >= size) return void this.push(null);
      const n = Math.min(PIECE, size - produced);
      produced += n;
      this.push(cipher.update(n === PIECE ? zeros : zeros.subarray(0, n)));
    },
  });
}

interface ChildResult {
  mode: string;
  peakRss: number;
  digest: string;
  size: number;
  seconds: number;
  registryHas?: number;
}

async function child(mode: string): Promise<void> {
  // Both modes load the same modules, so the difference is the upload itself.
  const source = regeneratingBlobSource(() => keystream(SIZE), { size: SIZE });
  const registry = process.env.BENCH_REGISTRY ?? '';
  const client = new RegistryClient({ allow: [registry.split(':')[0] || '127.0.0.1'] });
  const t0 = process.hrtime.bigint();
  let out: ChildResult;
  if (mode === 'baseline') {
    const { stream, done } = await source.open(0);
    (stream as Readable).resume();
    const r = await done;
    out = { mode, peakRss: 0, digest: r.digest, size: r.size, seconds: 0 };
  } else {
    const repo = { registry, repository: 'bench/blob' };
    const r = await client.uploadBlob(repo, source, { chunkSize: 0 });
    const has = await client.blobExists(repo, r.digest);
    out = {
      mode,
      peakRss: 0,
      digest: r.digest,
      size: r.size,
      seconds: 0,
      registryHas: has?.size ?? -1,
    };
  }
  out.seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  out.peakRss = peakRss();
  await client.close();
  process.stdout.write('CHILD_RESULT ' + JSON.stringify(out) + '\n');
}

function runChild(mode: string, registry: string): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', __filename], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, BENCH_CHILD: mode, BENCH_REGISTRY: registry },
    });
    let buf = '';
    p.stdout.on('data', (d: Buffer) => (buf += d.toString()));
    p.on('error', reject);
    p.on('exit', (code) => {
      const line = buf.split('\n').find((l) => l.startsWith('CHILD_RESULT '));
      if (code !== 0 || !line)
        return reject(new Error(`${mode} child exited with ${code}: ${buf.slice(-500)}`));
      resolve(JSON.parse(line.slice('CHILD_RESULT '.length)) as ChildResult);
    });
  });
}

async function main(): Promise<void> {
  const reg = await startRegistry();
  try {
    const baseline = await runChild('baseline', reg.host);
    const upload = await runChild('upload', reg.host);
    const mb = (b: number): number => b / 1e6;
    const diff = upload.peakRss - baseline.peakRss;
    const same =
      upload.digest === baseline.digest && upload.registryHas === SIZE && upload.size === SIZE;
    report('blob-upload-rss', [
      { metric: `blob size`, value: mb(SIZE), unit: 'MB' },
      {
        metric: 'peak RSS, generate + hash only (baseline)',
        value: mb(baseline.peakRss),
        unit: 'MB',
      },
      {
        metric: 'peak RSS, streamed upload to docker-registry',
        value: mb(upload.peakRss),
        unit: 'MB',
      },
      {
        metric: 'upload peak RSS − baseline',
        value: mb(diff),
        unit: 'MB',
        target: '≤ 64 MB',
        pass: diff <= 64e6,
      },
      {
        metric: 'digest of uploaded blob = baseline digest, registry holds all bytes',
        value: same
          ? 'yes'
          : `no (${upload.digest} vs ${baseline.digest}, registry ${upload.registryHas})`,
        pass: same,
      },
      { metric: 'upload throughput (info)', value: mb(SIZE) / upload.seconds, unit: 'MB/s' },
      {
        metric: 'generate + hash throughput (info)',
        value: mb(SIZE) / baseline.seconds,
        unit: 'MB/s',
      },
    ]);
  } finally {
    await reg.stop();
  }
}

if (process.env.BENCH_CHILD) {
  child(process.env.BENCH_CHILD).catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
} else {
  main().catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
}
