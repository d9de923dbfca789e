/** Digest helpers, blob sources and the schema1 canonical payload. */
import { createHash } from 'node:crypto';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { ErrorCodes, RegistryError } from './errors';

export function sha256Hex(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** "sha256:<hex>" of the bytes. */
export function sha256Digest(data: Buffer | string): string {
  return `sha256:${sha256Hex(data)}`;
}

export interface BlobStream {
  /** The blob's bytes from the offset given to open(). */
  stream: NodeJS.ReadableStream | Readable;
  /** Resolves when the source has produced every byte: digest over ALL bytes (skipped ones too). */
  done: Promise<{ digest: string; size: number }>;
  /**
   * Called with each chunk of `stream` the upload has copied and no longer refers to, so the
   * source may reuse its memory (a chunked upload does; other kinds of upload never call it).
   */
  release?(chunk: Buffer): void;
}

export interface BlobSource {
  /** Total size, if known (needed for a monolithic upload). */
  size?: number;
  /** The digest the source states; checked against the computed one, never trusted. */
  digest?: string;
  /** A fresh stream starting at offset; called again on every retry/resume. */
  open(offset: number): Promise<BlobStream>;
}

/**
 * A transform that hashes and counts every byte and passes on only those at
 * or after `offset`. `done` resolves with the digest of all bytes at the end,
 * and rejects if the input fails or is destroyed early.
 */
export class SkipHashTransform extends Transform {
  private readonly hash = createHash('sha256');
  private seen = 0;
  readonly done: Promise<{ digest: string; size: number }>;
  private resolveDone!: (v: { digest: string; size: number }) => void;
  private rejectDone!: (e: Error) => void;

  constructor(private readonly offset: number) {
    super();
    this.done = new Promise((res, rej) => {
      this.resolveDone = res;
      this.rejectDone = rej;
    });
    this.done.catch(() => undefined);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    const start = this.seen;
    this.seen += chunk.length;
    if (this.seen <= this.offset) return cb();
    cb(null, start >= this.offset ? chunk : chunk.subarray(this.offset - start));
  }

  override _flush(cb: TransformCallback): void {
    if (this.seen < this.offset) {
      const err = new RegistryError(
        ErrorCodes.INVALID_ARGUMENT,
        `source produced ${this.seen} bytes, fewer than the resume offset ${this.offset}`,
      );
      this.rejectDone(err);
      return cb(err);
    }
    this.resolveDone({ digest: `sha256:${this.hash.digest('hex')}`, size: this.seen });
    cb();
  }

  override _destroy(err: Error | null, cb: (e: Error | null) => void): void {
    this.rejectDone(err ?? new Error('blob stream destroyed before its end'));
    cb(err);
  }
}

/**
 * Makes a BlobStream from a stream of the WHOLE blob (from byte 0): hashes every
 * byte, emits those from offset on. This is how a regenerating source resumes.
 */
export function skipAndHash(whole: NodeJS.ReadableStream | Readable, offset: number): BlobStream {
  const t = new SkipHashTransform(offset);
  const src = whole as Readable;
  src.on('error', (e: Error) => t.destroy(e));
  t.on('close', () => {
    if (!src.destroyed && typeof src.destroy === 'function') src.destroy();
  });
  src.pipe(t);
  return { stream: t, done: t.done };
}

/** A BlobSource over bytes in memory (configs, manifests, tests). */
export function bufferBlobSource(buf: Buffer, statedDigest?: string): BlobSource {
  return {
    size: buf.length,
    ...(statedDigest !== undefined ? { digest: statedDigest } : {}),
    open(offset: number): Promise<BlobStream> {
      const pieces: Buffer[] = [];
      const step = 1 << 20;
      for (let i = 0; i < buf.length; i += step) pieces.push(buf.subarray(i, i + step));
      return Promise.resolve(skipAndHash(Readable.from(pieces), offset));
    },
  };
}

/** A BlobSource that regenerates its bytes from a factory of whole streams on each open(). */
export function regeneratingBlobSource(
  make: () => NodeJS.ReadableStream | Readable,
  info: { size?: number; digest?: string } = {},
): BlobSource {
  return {
    ...info,
    open(offset: number): Promise<BlobStream> {
      return Promise.resolve(skipAndHash(make(), offset));
    },
  };
}

export const SCHEMA1_MEDIA_TYPES: readonly string[] = [
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
  'application/vnd.docker.distribution.manifest.v1+json',
];

export function isSchema1(mediaType: string): boolean {
  return SCHEMA1_MEDIA_TYPES.includes(mediaType.split(';')[0]!.trim());
}

function b64urlDecode(s: string): Buffer {
  return Buffer.from(s.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
}

/**
 * The canonical payload of a signed schema1 manifest (libtrust JWS): the bytes
 * before the signatures (formatLength from the protected header) followed by
 * formatTail. docker-registry computes a schema1 manifest's digest over this.
 * An unsigned manifest is its own payload.
 */
export function schema1Payload(body: Buffer): Buffer {
  let doc: { signatures?: { protected?: string }[] };
  try {
    doc = JSON.parse(body.toString('utf8')) as typeof doc;
  } catch (e) {
    throw new RegistryError(
      ErrorCodes.MANIFEST_INVALID,
      `schema1 manifest is not JSON: ${(e as Error).message}`,
    );
  }
  const sigs = doc.signatures;
  if (!Array.isArray(sigs) || sigs.length === 0) return body;
  let payload: Buffer | undefined;
  for (const [i, sig] of sigs.entries()) {
    if (typeof sig?.protected !== 'string') {
      throw new RegistryError(
        ErrorCodes.MANIFEST_INVALID,
        `schema1 signature ${i} has no protected header`,
      );
    }
    let hdr: { formatLength?: unknown; formatTail?: unknown };
    try {
      hdr = JSON.parse(b64urlDecode(sig.protected).toString('utf8')) as typeof hdr;
    } catch {
      throw new RegistryError(
        ErrorCodes.MANIFEST_INVALID,
        `schema1 signature ${i}: protected header is not base64url JSON`,
      );
    }
    const len = hdr.formatLength;
    const tail = hdr.formatTail;
    if (
      typeof len !== 'number' ||
      !Number.isInteger(len) ||
      len < 0 ||
      len > body.length ||
      typeof tail !== 'string'
    ) {
      throw new RegistryError(
        ErrorCodes.MANIFEST_INVALID,
        `schema1 signature ${i}: protected header needs formatLength (≤ ${body.length}) and formatTail`,
      );
    }
    const p = Buffer.concat([body.subarray(0, len), b64urlDecode(tail)]);
    if (payload && !payload.equals(p)) {
      throw new RegistryError(
        ErrorCodes.MANIFEST_INVALID,
        'schema1 signatures disagree about the signed payload',
      );
    }
    payload = p;
  }
  return payload!;
}

/** The digest a registry assigns to a manifest: sha256 of the bytes, or of the schema1 payload. */
export function manifestDigest(body: Buffer, mediaType: string): string {
  return sha256Digest(isSchema1(mediaType) ? schema1Payload(body) : body);
}
