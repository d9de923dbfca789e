/** diffIdOnly: hashes an uncompressed stream (optionally gunzipping it first), no gzip. */
import { createHash } from 'node:crypto';
import * as zlib from 'node:zlib';
import { SourceError, SourceErrorCodes } from './errors';
import { GZIP_CHUNK_SIZE, hex, type ByteSource } from './pipeline';

/** Hashes an uncompressed stream (optionally gunzipping it first): diffId and size, no gzip. */
export function hashOnly(
  source: ByteSource,
  gunzipFirst: boolean,
  description: string,
): Promise<{ diffId: string; uncompressedSize: number }> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    let n = 0;
    let finished = false;
    const fail = (e: Error): void => {
      if (finished) return;
      finished = true;
      source.cancel();
      g?.destroy();
      reject(e);
    };
    const g = gunzipFirst ? zlib.createGunzip({ chunkSize: GZIP_CHUNK_SIZE }) : undefined;
    if (g) {
      g.on('data', (c: Buffer) => {
        h.update(c);
        n += c.length;
      });
      g.on('drain', () => source.resume());
      g.on('error', (e) =>
        fail(
          new SourceError(
            SourceErrorCodes.DIFFID_MISMATCH,
            `${description}: not a valid gzip stream (${e.message})`,
            description,
            { cause: e },
          ),
        ),
      );
      g.on('end', () => {
        if (finished) return;
        finished = true;
        resolve({ diffId: hex(h), uncompressedSize: n });
      });
    }
    source.start(
      (c) => {
        if (finished) return;
        if (g) {
          if (!g.write(c)) source.pause();
        } else {
          h.update(c);
          n += c.length;
          source.release?.(c);
        }
      },
      () => {
        if (finished) return;
        if (g) g.end();
        else {
          finished = true;
          resolve({ diffId: hex(h), uncompressedSize: n });
        }
      },
      fail,
    );
  });
}
