/**
 * One read of a layer for several target registries (fan-out): the layer is
 * produced once — a dir: layer tarred and gzipped once, a docker:// blob
 * fetched once — and its bytes written to every target's upload stream, at
 * the pace of the slowest (a branch whose buffer is full pauses the source
 * until it drains). Every byte is still hashed by the layer stream itself,
 * and each upload checks that digest before its final PUT.
 *
 * Only the first open of each branch at offset 0 shares the read. A branch
 * that fails and retries, or resumes at an offset, reads the layer on its
 * own (the others are not held back by its retry); a branch whose upload
 * abandons its stream is dropped from the tee, and so is one that ends
 * without ever opening (its session could not be started).
 */
import { PassThrough, type Readable } from 'node:stream';

export interface TeeSourceStream {
  stream: Readable;
  done: Promise<{ digest: string; size: number; diffId?: string }>;
}

export class LayerTee<S extends TeeSourceStream> {
  private readonly waiting = new Set<number>();
  private readonly attached = new Map<number, PassThrough>();
  private started = false;
  private shared: Promise<S> | undefined;

  constructor(
    private readonly open: (offset: number) => Promise<S>,
    branches: number,
  ) {
    for (let i = 0; i < branches; i++) this.waiting.add(i);
  }

  /**
   * Branch i's open(offset): its share of the one read the first time at
   * offset 0, an independent read otherwise. `s` is the layer stream the
   * bytes come from (for its progress counters); `shared` says that other
   * branches get the same chunks (so none of them may give a chunk back for reuse).
   */
  async openBranch(
    i: number,
    offset: number,
  ): Promise<{ s: S; stream: Readable; shared: boolean }> {
    if (offset !== 0 || this.started || !this.waiting.has(i)) {
      this.leave(i);
      const s = await this.open(offset);
      return { s, stream: s.stream, shared: false };
    }
    this.waiting.delete(i);
    const out = new PassThrough({ highWaterMark: 1 << 20 });
    this.attached.set(i, out);
    out.on('close', () => this.detach(i));
    this.shared ??= new Promise<S>((resolve, reject) => {
      this.resolveShared = resolve;
      this.rejectShared = reject;
    });
    this.maybeStart();
    const s = await this.shared;
    return { s, stream: out, shared: true };
  }

  /** Branch i will not (or no longer) take part in the shared read. */
  leave(i: number): void {
    if (this.waiting.delete(i)) this.maybeStart();
  }

  private resolveShared: (s: S) => void = () => undefined;
  private rejectShared: (err: unknown) => void = () => undefined;

  private detach(i: number): void {
    if (this.attached.delete(i)) this.resumeIfDrained?.();
  }

  private resumeIfDrained: (() => void) | undefined;

  /** Starts the read once every branch that will share it has attached. */
  private maybeStart(): void {
    if (this.started || this.waiting.size > 0 || this.attached.size === 0) return;
    this.started = true;
    this.open(0).then(
      (s) => {
        this.pump(s);
        this.resolveShared(s);
      },
      (err: unknown) => {
        // No consumer holds these streams yet (their branches wait on `shared`, which carries
        // the error): end them without one, or an unheard 'error' would crash the process.
        for (const out of this.attached.values()) out.destroy();
        this.rejectShared(err);
      },
    );
  }

  private pump(s: S): void {
    const src = s.stream;
    const blocked = new Set<PassThrough>();
    this.resumeIfDrained = () => {
      for (const b of blocked) if (!this.isAttached(b)) blocked.delete(b);
      if (blocked.size === 0) src.resume();
      if (this.attached.size === 0) src.destroy();
    };
    src.on('data', (chunk: Buffer) => {
      for (const out of this.attached.values()) {
        if (!out.write(chunk)) {
          blocked.add(out);
          out.once('drain', () => {
            blocked.delete(out);
            if (blocked.size === 0) src.resume();
          });
        }
      }
      if (blocked.size > 0) src.pause();
    });
    src.on('end', () => {
      for (const out of this.attached.values()) out.end();
    });
    src.on('error', (err) => {
      for (const out of this.attached.values()) out.destroy(err);
    });
    s.done.catch(() => undefined);
  }

  private isAttached(out: PassThrough): boolean {
    for (const o of this.attached.values()) if (o === out) return true;
    return false;
  }
}
