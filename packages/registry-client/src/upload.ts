/**
 * One blob upload in an open session: a monolithic PUT, one streamed PATCH,
 * or Content-Range chunks from one reused buffer, the last of them sent as the
 * body of PUT ?digest= with the digest computed from the bytes. When the
 * blob's size is known, a chunk's PATCH starts with its first bytes and takes
 * the rest as they are read. A failed chunk
 * is re-sent from the buffer where the registry kept the session; otherwise
 * the upload resumes from the offset the registry reports (reopening the
 * source there) or, when the session is gone, starts a fresh one from byte 0.
 * (go-containerregistry: remote/write.go's streamBlob / commitBlob.)
 */
import { Readable, Transform } from 'node:stream';
import type { Dispatcher } from 'undici';
import { ChunkBuffer } from './chunk-buffer';
import type { BlobSource, BlobStream } from './digest';
import { classifyError, ErrorCodes, RegistryError } from './errors';
import type { Requester } from './request';
import { abortError } from './retry';
import { cancelSession, openSession, parseRangeEnd, sessionOffset, type Session } from './sessions';
import { dump, header, type Headers, type Res } from './transport';
import type { CallOptions, UploadOptions, UploadResult } from './types';
import { monolithicUpload, RestartSignal, settle, type Outcome } from './upload-monolithic';

/** How long a registry may take to answer once a streamed body has been sent in full. */
const RESPONSE_TIMEOUT_MS = 300_000;
/** How long BlobStream.done may take to settle once its stream has ended. */
const DONE_TIMEOUT_MS = 60_000;

/** Thrown inside an attempt: the registry's offset is outside the buffer, reopen the source there. */
class ReopenSignal extends Error {}

/** A chunk's PATCH started before the chunk was read in full (Upload.startEarlyPatch). */
interface EarlyPatch {
  /** Views of the chunk buffer as it fills; ended when the chunk is complete. */
  body: Readable;
  done: Promise<void>;
  /** The chunk's offset in the blob. */
  start: number;
}

function keepSession(opt: UploadOptions['keepSessionOnFailure'], e: unknown): boolean {
  if (!(e instanceof RegistryError) || !opt) return false;
  return typeof opt === 'function' ? opt(e) : e.transient;
}

export class Upload {
  offset = 0;
  private failures = 0;
  private failuresAt = -1;
  digestRestartUsed = false;
  private refreshedAt = -1;
  sourceError: unknown;
  /** Position in the blob of the last byte handed to the request body. */
  private pos = 0;
  /** The offset the registry should hold after the PATCH in flight. */
  private expected = 0;
  private buffer?: ChunkBuffer;
  /** The last chunk of a chunked upload, held for the PUT (sent once the digest is known). */
  private tail?: Buffer;
  readonly call: CallOptions;

  constructor(
    readonly rq: Requester,
    readonly reg: string,
    readonly name: string,
    readonly scope: string[],
    readonly source: BlobSource,
    readonly opts: UploadOptions,
    readonly result: UploadResult,
    private session: Session,
    private readonly chunkSize: number,
  ) {
    this.call = { signal: opts.signal, permit: opts.permit };
  }

  get what(): string {
    return `upload to ${this.reg}/${this.name}`;
  }

  async run(startOffset = 0): Promise<UploadResult> {
    this.offset = startOffset;
    this.opts.onSession?.(this.session.location.toString());
    try {
      for (;;) {
        if (this.opts.signal?.aborted) throw abortError();
        const outcome = await this.attempt();
        if (outcome.kind === 'done') {
          this.result.digest = outcome.digest;
          this.result.size = outcome.size;
          this.opts.onSession?.(undefined);
          return this.result;
        }
        if (outcome.kind === 'restart') await this.restart(outcome.why);
        else if (outcome.kind === 'resume') await this.resume();
      }
    } catch (e) {
      if (!keepSession(this.opts.keepSessionOnFailure, e)) {
        await cancelSession(this.rq, this.reg, this.session.location, this.scope);
        this.opts.onSession?.(undefined);
      }
      throw e;
    }
  }

  /** Asks the registry's offset; false when the session is gone (a restart follows). */
  private async askOffset(): Promise<boolean> {
    const off = await sessionOffset(this.rq, this.reg, this.session, this.scope, this.call);
    if (off === 'lost') return false;
    this.offset = off;
    this.result.resumes++;
    this.opts.onSession?.(this.session.location.toString());
    this.rq.log?.info('resuming upload from the offset the registry reports', {
      registry: this.reg,
      repository: this.name,
      offset: off,
    });
    return true;
  }

  private async resume(): Promise<void> {
    if (!(await this.askOffset()))
      await this.restart('the registry no longer knows the upload session');
  }

  private async restart(why: string): Promise<void> {
    if (this.result.restarts + 1 >= this.rq.retry.attempts + 1) {
      throw new RegistryError(
        ErrorCodes.UPLOAD_SESSION_LOST,
        `${this.what}: gave up after ${this.result.restarts} fresh sessions (${why})`,
        { registry: this.reg },
      );
    }
    this.rq.log?.warn('upload session is dead; starting a fresh one', {
      registry: this.reg,
      repository: this.name,
      why,
    });
    await cancelSession(this.rq, this.reg, this.session.location, this.scope);
    const r = await openSession(this.rq, this.reg, this.name, this.scope, this.call);
    this.session = (r as { session: Session }).session;
    this.opts.onSession?.(this.session.location.toString());
    this.offset = 0;
    this.result.restarts++;
  }

  /** Decides what a failure means: rethrow (permanent), restart, or resume after backoff. */
  async onFailure(e: unknown): Promise<Outcome> {
    if (this.sourceError !== undefined) throw this.sourceError;
    const err = classifyError(e, this.reg, this.what);
    if (!(err instanceof RegistryError)) throw err;
    if (err.code === ErrorCodes.ABORTED) throw err;
    if (err.code === ErrorCodes.UPLOAD_SESSION_LOST) return { kind: 'restart', why: err.message };
    if (err.status === 416) {
      // The registry holds a different offset than we thought: ask it, no backoff —
      // but a registry that keeps answering 416 without progress must not loop forever.
      this.countFailure(err);
      return { kind: 'resume' };
    }
    if (err.status === 401 || err.code === ErrorCodes.REGISTRY_UNAUTHORIZED) {
      if (this.refreshedAt === this.offset) throw err;
      this.refreshedAt = this.offset;
      return { kind: 'resume' };
    }
    if (!err.transient) throw err;
    const n = this.countFailure(err);
    await this.rq.retry.backoff(this.reg, this.what, n - 1, err, this.call);
    return { kind: 'resume' };
  }

  /** Counts consecutive failures without progress; throws once the retry budget is spent. */
  countFailure(err: RegistryError): number {
    if (this.offset > this.failuresAt) this.failures = 0;
    this.failuresAt = this.offset;
    this.failures++;
    if (this.failures >= this.rq.retry.attempts) throw err;
    return this.failures;
  }

  sent(n: number, position: number): void {
    this.result.bytesSent += n;
    this.opts.onProgress?.(this.result.bytesSent, position);
  }

  /** Wraps the source stream: counts bytes (unless the caller does) and remembers a source failure. */
  counted(bs: BlobStream, start: number, count: boolean): Transform {
    this.pos = start;
    const counter = new Transform({
      transform: (chunk: Buffer, _enc, cb) => {
        this.pos += chunk.length;
        if (count) this.sent(chunk.length, this.pos);
        cb(null, chunk);
      },
    });
    counter.on('error', () => undefined);
    const src = bs.stream as Readable;
    src.on('error', (err: Error) => {
      this.sourceError = err;
      counter.destroy(err);
    });
    counter.on('close', () => {
      if (!src.destroyed) src.destroy();
    });
    src.pipe(counter);
    return counter;
  }

  private async attempt(): Promise<Outcome> {
    let bs: BlobStream | undefined;
    let counter: Transform | undefined;
    this.sourceError = undefined;
    try {
      bs = await this.source.open(this.offset);
      bs.done.catch(() => undefined);
      if (this.opts.monolithic) return await monolithicUpload(this, bs);
      counter = this.counted(bs, this.offset, this.chunkSize === 0);
      this.tail = undefined;
      if (this.chunkSize === 0) await this.patchWith(counter, {}, () => this.pos);
      else await this.chunked(counter, bs.release?.bind(bs));
      const { digest, size } = await settle(bs.done, DONE_TIMEOUT_MS, 'the blob source');
      return await this.finish(digest, size);
    } catch (e) {
      if (e instanceof RestartSignal) return { kind: 'restart', why: e.message };
      if (e instanceof ReopenSignal) return { kind: 'reopen' };
      return await this.onFailure(e);
    } finally {
      counter?.destroy();
      const s = bs?.stream as Readable | undefined;
      if (s && !s.destroyed) s.destroy();
    }
  }

  /**
   * Sends one upload request. A stream body gets no fixed headers timeout (it
   * may take longer than any limit to produce); instead the registry must answer
   * within RESPONSE_TIMEOUT_MS once the last byte went out.
   */
  async send(
    method: Dispatcher.HttpMethod,
    url: URL,
    body: Dispatcher.DispatchOptions['body'],
    headers: Headers,
    what: string,
  ): Promise<Res> {
    const auth = await this.rq.auth.authorization(this.reg, this.scope, this.opts.signal);
    const base = {
      headers: { 'content-type': 'application/octet-stream', ...headers },
      body,
      auth,
      what,
    };
    if (!(body instanceof Readable)) {
      return this.rq.transport.exchange(this.reg, method, url, {
        ...base,
        signal: this.opts.signal,
      });
    }
    const ac = new AbortController();
    const outer = this.opts.signal;
    const onAbort = (): void => ac.abort();
    outer?.addEventListener('abort', onAbort, { once: true });
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    body.once('end', () => {
      timer = setTimeout(() => {
        timedOut = true;
        ac.abort();
      }, RESPONSE_TIMEOUT_MS);
    });
    try {
      return await this.rq.transport.exchange(this.reg, method, url, {
        ...base,
        signal: ac.signal,
        headersTimeout: 0,
      });
    } catch (e) {
      if (timedOut) {
        throw new RegistryError(
          ErrorCodes.REGISTRY_UNAVAILABLE,
          `${what}: no response within ${RESPONSE_TIMEOUT_MS / 1000} s after the body was sent`,
          { registry: this.reg },
        );
      }
      if (outer?.aborted) throw abortError();
      throw e;
    } finally {
      if (timer) clearTimeout(timer);
      outer?.removeEventListener('abort', onAbort);
    }
  }

  /** The offset after a successful PATCH: what we expect, unless the registry says otherwise. */
  private afterPatch(reported: number | undefined): void {
    if (
      reported !== undefined &&
      reported !== this.expected &&
      !(reported === 0 && this.expected === 1)
    ) {
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `${this.what}: registry holds ${reported} bytes after the PATCH, expected ${this.expected}`,
        { registry: this.reg, status: 416 },
      );
    }
    this.offset = this.expected;
    if (this.failuresAt < this.offset) this.failures = 0;
  }

  /** One PATCH; a stream body without Content-Length goes out with Transfer-Encoding: chunked. */
  private async patchWith(
    body: Dispatcher.DispatchOptions['body'],
    headers: Headers,
    expectedAfter: () => number,
  ): Promise<void> {
    const what = `PATCH ${this.what}`;
    const res = await this.send('PATCH', this.session.location, body, headers, what);
    if (res.status !== 202 && res.status !== 204) {
      if (res.status === 401) this.rq.auth.onUnauthorized(this.reg, res, this.scope);
      throw await this.rq.auth.errorOf(this.reg, res, what, ErrorCodes.UPLOAD_SESSION_LOST);
    }
    await dump(res);
    const loc = header(res, 'location');
    if (loc) {
      this.session.location = this.rq.transport.resolveLocation(
        this.reg,
        this.session.location,
        loc,
        what,
      );
      this.opts.onSession?.(this.session.location.toString());
    }
    this.expected = expectedAfter();
    this.afterPatch(parseRangeEnd(header(res, 'range')));
  }

  /** The upload's one buffer, emptied; a new one only if the session's minimum chunk changed its size. */
  private chunkBuffer(): ChunkBuffer {
    const size = Math.max(this.chunkSize, this.session.minChunk);
    if (this.buffer?.limit !== size) this.buffer = new ChunkBuffer(size);
    this.buffer.clear();
    return this.buffer;
  }

  /** Copies the stream into the chunk buffer; each chunk, once copied, goes back to `release`. */
  private async chunked(counter: Transform, release?: (chunk: Buffer) => void): Promise<void> {
    const buf = this.chunkBuffer();
    let early: EarlyPatch | undefined;
    try {
      for await (const chunk of counter) {
        let c = chunk as Buffer;
        while (c.length > 0) {
          if (buf.length === 0) early = this.startEarlyPatch(buf.limit);
          const before = buf.length;
          c = c.subarray(buf.take(c));
          // The bytes just buffered also go out at once (views: the buffer holds them anyway).
          early?.body.push(buf.bytes.subarray(before));
          if (buf.full) {
            const first = early;
            early = undefined;
            await this.sendChunk(buf.bytes, first);
            buf.clear();
          }
        }
        release?.(chunk as Buffer);
      }
    } finally {
      // The source failed, or ended before the chunk its size promised: stop that PATCH.
      early?.body.destroy(new Error('the blob source ended before the chunk was complete'));
    }
    // The last (partial) chunk goes out with the PUT, once the source has said its digest.
    this.tail = buf.length > 0 ? buf.bytes : undefined;
  }

  /**
   * When the blob's size is known and the next `length` bytes are not its last chunk, the
   * chunk's PATCH starts now and takes its bytes as they arrive, so reading the source and
   * sending overlap (the registry holds the session between chunks either way). The chunk is
   * still buffered whole: a failed PATCH is re-sent from the buffer (sendChunk).
   */
  private startEarlyPatch(length: number): EarlyPatch | undefined {
    const size = this.source.size;
    if (size === undefined || this.offset + length >= size) return undefined;
    const start = this.offset;
    const end = start + length;
    const body = new Readable({ read() {} });
    this.sent(length, end);
    const done = this.patchWith(
      body,
      { 'content-length': String(length), 'content-range': `${start}-${end - 1}` },
      () => end,
    );
    done.catch(() => undefined);
    return { body, done, start };
  }

  /**
   * PATCHes one chunk (or waits for the PATCH that took it as it was read); after a failure
   * where the registry kept the session, re-sends from the buffer.
   */
  private async sendChunk(bytes: Buffer, early?: EarlyPatch): Promise<void> {
    const start = early?.start ?? this.offset;
    const end = start + bytes.length;
    if (early) {
      early.body.push(null);
      try {
        await early.done;
      } catch (e) {
        await this.recoverChunk(e, start, end);
      }
    }
    while (this.offset < end) {
      const piece = bytes.subarray(this.offset - start);
      this.sent(piece.length, end);
      try {
        await this.patchWith(
          piece,
          { 'content-length': String(piece.length), 'content-range': `${this.offset}-${end - 1}` },
          () => end,
        );
      } catch (e) {
        await this.recoverChunk(e, start, end);
      }
    }
  }

  /** After a failed chunk: back off as onFailure says, then take the offset the registry holds. */
  private async recoverChunk(e: unknown, start: number, end: number): Promise<void> {
    const outcome = await this.onFailure(e);
    if (outcome.kind === 'restart') throw new RestartSignal(outcome.why);
    if (!(await this.askOffset()))
      throw new RestartSignal('the registry no longer knows the upload session');
    if (this.offset < start || this.offset > end) throw new ReopenSignal();
  }

  /**
   * Checks what the source produced, then PUT ?digest= — with the held last
   * chunk as its body (one request less than a PATCH and an empty PUT). After
   * a failed PUT the registry's offset says what of the chunk to send again.
   */
  private async finish(digest: string, size: number): Promise<Outcome> {
    this.checkProduced(digest, size);
    const tail = this.tail;
    this.tail = undefined;
    const start = this.offset;
    const end = start + (tail?.length ?? 0);
    if (end !== size) {
      throw new RestartSignal(`the session holds ${this.offset} bytes but the blob has ${size}`);
    }
    if (!tail) return this.put(digest, size, null, { 'content-length': '0' });
    for (;;) {
      const piece = tail.subarray(this.offset - start);
      this.sent(piece.length, end);
      try {
        return await this.put(digest, size, piece.length > 0 ? piece : null, {
          'content-length': String(piece.length),
        });
      } catch (e) {
        if (e instanceof RestartSignal) throw e;
        await this.recoverChunk(e, start, end);
      }
    }
  }

  checkProduced(digest: string, size: number): void {
    if (this.source.digest !== undefined && this.source.digest !== digest) {
      throw new RegistryError(
        ErrorCodes.DIGEST_MISMATCH,
        `${this.what}: the source states ${this.source.digest} but its bytes hash to ${digest}`,
        { registry: this.reg },
      );
    }
    if (this.source.size !== undefined && this.source.size !== size) {
      throw new RegistryError(
        ErrorCodes.DIGEST_MISMATCH,
        `${this.what}: the source states ${this.source.size} bytes but produced ${size}`,
        { registry: this.reg },
      );
    }
  }

  async put(
    digest: string,
    size: number,
    body: Dispatcher.DispatchOptions['body'],
    headers: Headers,
  ): Promise<Outcome> {
    const what = `PUT ${this.what}`;
    await this.opts.beforeCommit?.();
    // Append to the registry's query as it is (its opaque _state stays byte for byte).
    const url = new URL(this.session.location.toString());
    const q = `digest=${encodeURIComponent(digest)}`;
    url.search = url.search && url.search !== '?' ? `${url.search}&${q}` : `?${q}`;
    const res = await this.send('PUT', url, body, headers, what);
    if (res.status !== 201 && res.status !== 204 && res.status !== 200) {
      if (res.status === 401) this.rq.auth.onUnauthorized(this.reg, res, this.scope);
      const err = await this.rq.auth.errorOf(this.reg, res, what, ErrorCodes.UPLOAD_SESSION_LOST);
      if (err.code === ErrorCodes.DIGEST_MISMATCH) {
        if (this.digestRestartUsed) throw err;
        this.digestRestartUsed = true;
        throw new RestartSignal(`the registry rejected the digest (${err.message})`);
      }
      throw err;
    }
    await dump(res);
    const got = header(res, 'docker-content-digest');
    if (got !== undefined && got !== digest) {
      throw new RegistryError(
        ErrorCodes.DIGEST_MISMATCH,
        `${what}: registry stored the blob as ${got}, but its bytes hash to ${digest}`,
        { registry: this.reg, status: res.status },
      );
    }
    return { kind: 'done', digest, size };
  }
}
