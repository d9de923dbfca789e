'use strict';
/**
 * The oci-push benchmark's "checking PUTs" peer: the least a pusher that
 * checks what it sends can do. Every layer at once, each streamed from its
 * file (1 MiB reads) into one monolithic PUT (POST a session, PUT ?digest=
 * with the body), while its bytes are hashed (the digest) and gunzipped on
 * libuv's pool and hashed again (the diff_id, as the image config states
 * it); a mismatch fails. No queue, no chunks, no resume, no state: a floor
 * for Ferry's first push of blobs it has never seen, not a peer to copy.
 *
 * argv: HOST LAYERS_JSON ([{path, digest, size, diffId}]). Prints one line
 * `CHILD_RESULT {"s": wall seconds, "cpu": this process' CPU seconds}`.
 */
const { createReadStream } = require('node:fs');
const { createHash } = require('node:crypto');
const http = require('node:http');
const zlib = require('node:zlib');
const { URL } = require('node:url');
const { once } = require('node:events');

const [host, layersJson] = process.argv.slice(2);
const layers = JSON.parse(layersJson);
const MiB = 1024 * 1024;
const agent = new http.Agent({ keepAlive: true, maxSockets: layers.length * 2 });

function request(method, url, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent }, (res) => {
      res.resume();
      res.on('end', () =>
        res.statusCode >= 200 && res.statusCode < 300
          ? resolve(res)
          : reject(new Error(`${method} ${url}: ${res.statusCode}`)),
      );
    });
    req.on('error', reject);
    if (body) body(req);
    else req.end();
  });
}

/** File → (sha256, gunzip, request body), waiting for whichever of the two is full. */
async function send(req, path, digest, gunzip) {
  try {
    for await (const c of createReadStream(path, { highWaterMark: MiB })) {
      digest.update(c);
      const waits = [gunzip, req].filter((w) => !w.write(c)).map((w) => once(w, 'drain'));
      if (waits.length) await Promise.all(waits);
    }
    gunzip.end();
    req.end();
  } catch (e) {
    req.destroy(e);
  }
}

async function push(l) {
  const post = await request('POST', `http://${host}/v2/floor/blobs/uploads/`, {});
  const loc = new URL(post.headers.location, `http://${host}`);
  loc.searchParams.set('digest', l.digest);
  const digest = createHash('sha256');
  const diff = createHash('sha256');
  const gunzip = zlib.createGunzip({ chunkSize: MiB });
  gunzip.on('data', (c) => diff.update(c));
  const unzipped = new Promise((res, rej) => {
    gunzip.on('end', res);
    gunzip.on('error', rej);
  });
  const put = request(
    'PUT',
    loc,
    { 'content-type': 'application/octet-stream', 'content-length': String(l.size) },
    (req) => void send(req, l.path, digest, gunzip),
  );
  await Promise.all([put, unzipped]);
  const got = `sha256:${digest.digest('hex')}`;
  const gotDiff = `sha256:${diff.digest('hex')}`;
  if (got !== l.digest || gotDiff !== l.diffId)
    throw new Error(`${l.path}: digest ${got} / diff_id ${gotDiff} do not match`);
}

const t0 = process.hrtime.bigint();
const c0 = process.cpuUsage();
Promise.all(layers.map(push)).then(
  () => {
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    const c = process.cpuUsage(c0);
    console.log(`CHILD_RESULT ${JSON.stringify({ s, cpu: (c.user + c.system) / 1e6 })}`);
    agent.destroy();
  },
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
