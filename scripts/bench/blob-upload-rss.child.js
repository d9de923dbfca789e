'use strict';
/**
 * The children of blob-upload-rss.bench.ts, in plain JavaScript so they run
 * like an upload worker in production: node on the compiled packages (dist/),
 * without tsx. Mode in argv[2]: baseline | upload | chunked (FERRY_UPLOAD_CONCURRENCY
 * layers at once in FERRY_UPLOAD_CHUNK_SIZE chunks, from @ferry/config). Prints one line
 * `CHILD_RESULT {json}` with its own peak RSS (VmHWM).
 */
const { readFileSync } = require('node:fs');
const { createCipheriv } = require('node:crypto');
const { Readable } = require('node:stream');
const { loadConfig } = require('@ferry/config');
const { RegistryClient, regeneratingBlobSource } = require('@ferry/registry-client');

const SIZE = Number(process.env.BENCH_BLOB_BYTES);
const LAYER = Number(process.env.BENCH_LAYER_BYTES);
/** An upload worker's settings: the config's defaults, or FERRY_UPLOAD_* as set. */
const { uploadConcurrency: CONCURRENCY, uploadChunkSize: CHUNK_SIZE } = loadConfig(process.env);
const PIECE = 1024 * 1024;
/** The chunked case reads like a layer file is read: fs.createReadStream's 64 KiB pieces. */
const FILE_PIECE = 64 * 1024;

function peakRss() {
  const m = /VmHWM:\s+(\d+)\s+kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : process.memoryUsage().rss;
}

/** A deterministic, incompressible stream of `size` bytes that never holds more than one piece. */
function keystream(size, key = 7, piece = PIECE) {
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

/** FERRY_UPLOAD_CONCURRENCY layers at once in FERRY_UPLOAD_CHUNK_SIZE chunks: an upload worker at full load. */
async function chunkedPair(client, registry) {
  const one = async (i) => {
    const repo = { registry, repository: `bench/layer${i}` };
    const source = regeneratingBlobSource(() => keystream(LAYER, 11 + i, FILE_PIECE), {
      size: LAYER,
    });
    const r = await client.uploadBlob(repo, source, { chunkSize: CHUNK_SIZE });
    const has = await client.blobExists(repo, r.digest);
    return { digest: r.digest, ok: r.size === LAYER && has !== undefined && has.size === LAYER };
  };
  const all = await Promise.all(Array.from({ length: CONCURRENCY }, (_, i) => one(i)));
  return {
    digest: all.map((a) => a.digest).join(','),
    size: LAYER * CONCURRENCY,
    allPresent: all.every((a) => a.ok),
  };
}

async function child(mode) {
  // Every mode loads the same modules, so the difference is the upload itself.
  const source = regeneratingBlobSource(() => keystream(SIZE), { size: SIZE });
  const registry = process.env.BENCH_REGISTRY || '';
  const client = new RegistryClient({ allow: [registry.split(':')[0] || '127.0.0.1'] });
  const t0 = process.hrtime.bigint();
  let out;
  if (mode === 'baseline') {
    const { stream, done } = await source.open(0);
    stream.resume();
    const r = await done;
    out = { digest: r.digest, size: r.size };
  } else if (mode === 'chunked') {
    out = await chunkedPair(client, registry);
  } else {
    const repo = { registry, repository: 'bench/blob' };
    const r = await client.uploadBlob(repo, source, { chunkSize: 0 });
    const has = await client.blobExists(repo, r.digest);
    out = { digest: r.digest, size: r.size, registryHas: has ? has.size : -1 };
  }
  out.mode = mode;
  out.seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  out.peakRss = peakRss();
  await client.close();
  process.stdout.write('CHILD_RESULT ' + JSON.stringify(out) + '\n');
}

child(process.argv[2]).catch((e) => {
  console.error(e);
  process.exit(1);
});
