/**
 * Peak RSS of blob uploads through RegistryClient into a real docker-registry.
 *
 * Child processes, same code loaded:
 *   baseline — generates the 1 GiB (AES-128-CTR keystream, deterministic,
 *              incompressible) and hashes it through the same BlobSource;
 *   upload   — the same source pushed by uploadBlob({ chunkSize: 0 }): one
 *              streamed PATCH. Target: upload ≤ baseline + 64 MB.
 *   chunked  — an upload worker's defaults: two 2 GiB layers at once
 *              (FERRY_UPLOAD_CONCURRENCY 2) in 32 MiB chunks
 *              (FERRY_UPLOAD_CHUNK_SIZE), each upload holding one chunk
 *              buffer. Target: peak RSS ≤ 200 MB.
 * Each child reports its own VmHWM. The digests must agree with the
 * registry's (read back by HEAD).
 */
import { spawn } from 'node:child_process';
import { createCipheriv } from 'node:crypto';
import { Readable } from 'node:stream';
import { DEFAULT_CHUNK_SIZE, RegistryClient, regeneratingBlobSource } from '@ferry/registry-client';
import { peakRss, report } from './common';

const SIZE = Number(process.env.BENCH_BLOB_BYTES ?? 1024 * 1024 * 1024);
/** Each of the two layers of the chunked case. */
const LAYER = Number(process.env.BENCH_LAYER_BYTES ?? 2 * 1024 * 1024 * 1024);
const CONCURRENCY = 2;
const PIECE = 1024 * 1024;
/** The chunked case reads like the upload worker reads a layer file: fs.createReadStream's 64 KiB pieces. */
const FILE_PIECE = 64 * 1024;

/** A deterministic, incompressible stream of `size` bytes that never holds more than one piece. */
function keystream(size: number, key = 7, piece = PIECE): Readable {
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, key), Buffer.alloc(16, 0));
  const zeros = Buffer.alloc(piece);
  let produced = 0;
  return new Readable({
    highWaterMark: piece,
    read() {
      if (produced >= size) return void this.push(null);
      const n = Math.min(piece, size - produced);
      produced += n;
      this.push(cipher.update(n === piece ? zeros : zeros.subarray(0, n)));
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
  /** chunked: every layer's digest matched the registry's size. */
  allPresent?: boolean;
}

/** Two layers at once, default chunk size: what an upload worker does with its defaults. */
async function chunkedPair(client: RegistryClient, registry: string): Promise<ChildResult> {
  const one = async (i: number): Promise<{ digest: string; ok: boolean }> => {
    const repo = { registry, repository: `bench/layer${i}` };
    const source = regeneratingBlobSource(() => keystream(LAYER, 11 + i, FILE_PIECE), {
      size: LAYER,
    });
    const r = await client.uploadBlob(repo, source, { chunkSize: DEFAULT_CHUNK_SIZE });
    const has = await client.blobExists(repo, r.digest);
    return { digest: r.digest, ok: r.size === LAYER && has?.size === LAYER };
  };
  const all = await Promise.all(Array.from({ length: CONCURRENCY }, (_, i) => one(i)));
  return {
    mode: 'chunked',
    peakRss: 0,
    digest: all.map((a) => a.digest).join(','),
    size: LAYER * CONCURRENCY,
    seconds: 0,
    allPresent: all.every((a) => a.ok),
  };
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
  } else if (mode === 'chunked') {
    out = await chunkedPair(client, registry);
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
  // Loaded here, not at the top: the children never need the test harness.
  const { startRegistry } = require('../../test/helpers') as typeof import('../../test/helpers');
  const reg = await startRegistry();
  try {
    const baseline = await runChild('baseline', reg.host);
    const upload = await runChild('upload', reg.host);
    const chunked = await runChild('chunked', reg.host);
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
        metric: 'peak RSS, streamed upload to docker-registry (chunkSize 0)',
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
      {
        metric: `peak RSS, ${CONCURRENCY} × ${mb(LAYER)} MB layers at once in ${DEFAULT_CHUNK_SIZE / 1048576} MiB chunks`,
        value: mb(chunked.peakRss),
        unit: 'MB',
        target: '≤ 200 MB',
        pass: chunked.peakRss <= 200e6,
      },
      {
        metric: 'chunked layers: registry holds every byte of each',
        value: chunked.allPresent ? 'yes' : 'no',
        pass: chunked.allPresent === true,
      },
      {
        metric: 'chunked throughput, both layers (info)',
        value: mb(chunked.size) / chunked.seconds,
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
