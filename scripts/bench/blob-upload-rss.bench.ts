/**
 * Peak RSS of blob uploads through RegistryClient into a real docker-registry.
 *
 * Child processes (blob-upload-rss.child.js, plain node on the compiled
 * packages, as production runs), same code loaded:
 *   baseline — generates the 1 GiB (AES-128-CTR keystream, deterministic,
 *              incompressible) and hashes it through the same BlobSource;
 *   upload   — the same source pushed by uploadBlob({ chunkSize: 0 }): one
 *              streamed PATCH. Target: upload ≤ baseline + 64 MB.
 *   chunked  — an upload worker at full load with the config's defaults
 *              (or FERRY_UPLOAD_CONCURRENCY / FERRY_UPLOAD_CHUNK_SIZE as set
 *              for the bench): that many 2 GiB layers at once in chunks of
 *              that size, each upload holding one chunk buffer. Target:
 *              peak RSS ≤ 200 MB.
 * Each child reports its own VmHWM. The digests must agree with the
 * registry's (read back by HEAD).
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig } from '@ferry/config';
import { childResult, report } from './common';

const SIZE = Number(process.env.BENCH_BLOB_BYTES ?? 1024 * 1024 * 1024);
/** Each of the two layers of the chunked case. */
const LAYER = Number(process.env.BENCH_LAYER_BYTES ?? 2 * 1024 * 1024 * 1024);
/** What the children use: the config's defaults, or FERRY_UPLOAD_* as set. */
const { uploadConcurrency: CONCURRENCY, uploadChunkSize: CHUNK_SIZE } = loadConfig(process.env);

/** What a child prints (blob-upload-rss.child.js). */
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

/** The NODE_OPTIONS the container image sets (deploy/Dockerfile), so the bench runs what production runs. */
function imageNodeOptions(): string {
  const dockerfile = readFileSync(join(__dirname, '..', '..', 'deploy', 'Dockerfile'), 'utf8');
  const m = /^ENV NODE_OPTIONS=(.*)$/m.exec(dockerfile);
  if (!m) throw new Error('deploy/Dockerfile sets no NODE_OPTIONS');
  return m[1].trim();
}

function runChild(mode: string, registry: string, nodeOptions = ''): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    // The children run the compiled packages (dist/) with plain node, as an upload worker in
    // production does: no tsx, no ferry-source condition.
    const { NODE_OPTIONS: _sourceCondition, ...env } = process.env;
    const p = spawn(process.execPath, [join(__dirname, 'blob-upload-rss.child.js'), mode], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: {
        ...env,
        BENCH_REGISTRY: registry,
        BENCH_BLOB_BYTES: String(SIZE),
        BENCH_LAYER_BYTES: String(LAYER),
        ...(nodeOptions ? { NODE_OPTIONS: nodeOptions } : {}),
      },
    });
    let buf = '';
    p.stdout.on('data', (d: Buffer) => (buf += d.toString()));
    p.on('error', reject);
    p.on('exit', (code) => {
      const result = childResult<ChildResult>(buf);
      if (code !== 0 || !result)
        return reject(new Error(`${mode} child exited with ${code}: ${buf.slice(-500)}`));
      resolve(result);
    });
  });
}

async function main(): Promise<void> {
  // Loaded here, not at the top: the children never need the test harness.
  const { startRegistry } = require('../../test/helpers') as typeof import('../../test/helpers');
  // The children load the compiled packages: bring dist/ up to date first (incremental).
  execFileSync('npm', ['run', '--silent', 'build'], { stdio: 'inherit' });
  const reg = await startRegistry();
  try {
    const baseline = await runChild('baseline', reg.host);
    const upload = await runChild('upload', reg.host);
    const imageOptions = imageNodeOptions();
    const chunked = await runChild('chunked', reg.host, imageOptions);
    const chunkedDefault = await runChild('chunked', reg.host);
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
        metric: `peak RSS, ${CONCURRENCY} × ${mb(LAYER)} MB layers at once in ${CHUNK_SIZE === 0 ? 'one streamed PATCH each' : `${CHUNK_SIZE / 1048576} MiB chunks`} (the image's NODE_OPTIONS ${imageOptions})`,
        value: mb(chunked.peakRss),
        unit: 'MB',
        target: '≤ 200 MB',
        pass: chunked.peakRss <= 200e6,
      },
      {
        metric: 'the same with node defaults (info: the young generation may grow to 16 MB)',
        value: mb(chunkedDefault.peakRss),
        unit: 'MB',
      },
      {
        metric: 'chunked layers: registry holds every byte of each',
        value: chunked.allPresent && chunkedDefault.allPresent ? 'yes' : 'no',
        pass: chunked.allPresent === true && chunkedDefault.allPresent === true,
      },
      {
        metric: 'chunked throughput, all layers (info; node defaults)',
        value: `${(mb(chunked.size) / chunked.seconds).toFixed(1)} (${(mb(chunkedDefault.size) / chunkedDefault.seconds).toFixed(1)})`,
        unit: 'MB/s',
      },
    ]);
  } finally {
    await reg.stop();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
