import { createParser } from 'eventsource-parser';
import type { PushEvent, PushState, PushStatus, StoredEvent } from '@ferry/queue';

/**
 * The statuses a push ends in (the queue package's FINAL_STATUSES; only its types are
 * imported, so the CLI does not load bullmq and ioredis to follow a push).
 */
const FINAL: ReadonlySet<PushStatus> = new Set<PushStatus>(['succeeded', 'failed', 'cancelled']);
const isFinalStatus = (s: PushStatus): boolean => FINAL.has(s);

/** An error the CLI prints as one line: `ferry: CODE: message`. */
export class CliError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** Process exit status. */
    readonly exitCode = 1,
    /** The request field the server named, if any. */
    readonly field?: string,
  ) {
    super(message);
    this.name = 'CliError';
  }
  /** A 429's Retry-After, in ms. */
  retryAfterMs?: number;
}

export interface ClientOptions {
  server: string;
  token?: string;
}

interface ErrorBody {
  error?: { code?: string; message?: string; field?: string };
}

/** A small client of Ferry's REST API (global fetch; the token goes only to the configured server). */
export class FerryClient {
  readonly base: URL;
  constructor(private readonly opts: ClientOptions) {
    let u: URL;
    try {
      u = new URL(opts.server);
    } catch {
      throw new CliError(
        'FERRY_BAD_SERVER',
        `--server ${JSON.stringify(opts.server)} is not a URL`,
        2,
      );
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') {
      throw new CliError(
        'FERRY_BAD_SERVER',
        `--server must be an http(s) URL, got ${u.protocol}`,
        2,
      );
    }
    this.base = u;
  }

  url(path: string): string {
    return new URL(path, this.base).toString();
  }

  headers(extra: Record<string, string> = {}): Record<string, string> {
    return { ...(this.opts.token ? { authorization: `Bearer ${this.opts.token}` } : {}), ...extra };
  }

  private async call<T>(
    method: string,
    path: string,
    body?: unknown,
    extra: Record<string, string> = {},
  ): Promise<T> {
    let res: Response;
    try {
      res = await fetch(this.url(path), {
        method,
        headers: this.headers(
          body === undefined ? extra : { 'content-type': 'application/json', ...extra },
        ),
        body: body === undefined ? undefined : JSON.stringify(body),
        redirect: 'error',
      });
    } catch (err) {
      throw new CliError(
        'FERRY_SERVER_UNREACHABLE',
        `cannot reach ${this.base.origin}: ${causeOf(err)}`,
      );
    }
    const text = await res.text();
    if (!res.ok) throw errorFromResponse(res.status, text, res.headers);
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new CliError(
        'FERRY_BAD_RESPONSE',
        `${method} ${path}: the server answered ${res.status} with no JSON`,
      );
    }
  }

  createPush(
    body: unknown,
    idempotencyKey?: string,
  ): Promise<{ id: string; status: string; links: { self: string; events: string } }> {
    return this.call(
      'POST',
      '/v1/pushes',
      body,
      idempotencyKey ? { 'idempotency-key': idempotencyKey } : {},
    );
  }

  getPush(id: string): Promise<PushState & { links: Record<string, string> }> {
    return this.call('GET', `/v1/pushes/${encodeURIComponent(id)}`);
  }

  cancelPush(id: string): Promise<{ id: string; status: string }> {
    return this.call('DELETE', `/v1/pushes/${encodeURIComponent(id)}`);
  }

  /**
   * Follows a push's SSE stream until its final status event, reconnecting
   * with Last-Event-ID when the connection drops (up to `maxRetries` failed
   * attempts in a row). Resolves with the final status event.
   */
  async followEvents(
    id: string,
    onEvent: (e: StoredEvent) => void,
    opts: {
      maxRetries?: number;
      retryDelayMs?: number;
      onReconnect?: (attempt: number, why: string) => void;
      /** Stops following (a Ctrl-C): rejects with FERRY_INTERRUPTED. */
      signal?: AbortSignal;
    } = {},
  ): Promise<Extract<PushEvent, { type: 'status' }>> {
    const maxRetries = opts.maxRetries ?? 10;
    let lastId: string | undefined;
    let failures = 0;
    const interrupted = () =>
      new CliError('FERRY_INTERRUPTED', `stopped following push ${id}`, 130);
    for (;;) {
      let why: string;
      let waitMs: number | undefined;
      if (opts.signal?.aborted) throw interrupted();
      try {
        const final = await this.readStream(
          id,
          lastId,
          (e) => {
            lastId = e.id;
            failures = 0;
            onEvent(e);
          },
          opts.signal,
        );
        if (final) return final;
        why = 'the server closed the stream';
      } catch (err) {
        if (opts.signal?.aborted) throw interrupted();
        if (err instanceof CliError && !retryable(err.code)) throw err;
        why = err instanceof Error ? err.message : String(err);
        if (err instanceof CliError) waitMs = err.retryAfterMs;
      }
      failures++;
      if (failures > maxRetries) {
        throw new CliError(
          'FERRY_EVENTS_LOST',
          `lost the event stream of push ${id} (${why}); see: ferry status ${id}`,
        );
      }
      opts.onReconnect?.(failures, why);
      const delay = waitMs ?? Math.min((opts.retryDelayMs ?? 500) * 2 ** (failures - 1), 5_000);
      await new Promise<void>((r) => {
        const t = setTimeout(done, delay);
        function done() {
          clearTimeout(t);
          opts.signal?.removeEventListener('abort', done);
          r();
        }
        opts.signal?.addEventListener('abort', done, { once: true });
      });
    }
  }

  /** One SSE connection: the final status event if it came, else undefined (the stream ended early). */
  private async readStream(
    id: string,
    lastId: string | undefined,
    onEvent: (e: StoredEvent) => void,
    signal?: AbortSignal,
  ): Promise<Extract<PushEvent, { type: 'status' }> | undefined> {
    let res: Response;
    try {
      res = await fetch(this.url(`/v1/pushes/${encodeURIComponent(id)}/events`), {
        headers: this.headers({
          accept: 'text/event-stream',
          ...(lastId ? { 'last-event-id': lastId } : {}),
        }),
        redirect: 'error',
        signal,
      });
    } catch (err) {
      throw new CliError(
        'FERRY_SERVER_UNREACHABLE',
        `cannot reach ${this.base.origin}: ${causeOf(err)}`,
      );
    }
    if (!res.ok) throw errorFromResponse(res.status, await res.text(), res.headers);
    if (!res.body) return undefined;
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    // The SSE wire format is parsed by eventsource-parser; events arrive here in order.
    const events: StoredEvent[] = [];
    const parser = createParser({
      onEvent({ id: eid, data }) {
        if (!eid || !data) return;
        try {
          events.push({ id: eid, event: JSON.parse(data) as PushEvent });
        } catch {
          // not one of ours: skip it
        }
      },
    });
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (err) {
          throw new CliError('FERRY_SERVER_UNREACHABLE', `the event stream broke: ${causeOf(err)}`);
        }
        if (chunk.done) return undefined;
        parser.feed(decoder.decode(chunk.value, { stream: true }));
        for (const e of events.splice(0)) {
          onEvent(e);
          if (e.event.type === 'status' && isFinalStatus(e.event.status)) {
            await reader.cancel().catch(() => undefined);
            return e.event;
          }
        }
      }
    } finally {
      reader.releaseLock?.();
    }
  }
}

/** Worth reopening the stream: the server was unreachable, answered 5xx (restarting, a proxy) or 429. */
function retryable(code: string): boolean {
  return (
    code === 'FERRY_SERVER_UNREACHABLE' ||
    code === 'FERRY_UNAVAILABLE' ||
    code === 'FERRY_TOO_MANY_REQUESTS' ||
    /^HTTP_(5\d\d|429)$/.test(code)
  );
}

/** Seconds from a Retry-After header (seconds or an HTTP date); undefined when absent or bad. */
export function retryAfterSeconds(
  value: string | null | undefined,
  now = Date.now(),
): number | undefined {
  if (!value) return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const t = Date.parse(value);
  return Number.isNaN(t) ? undefined : Math.max(0, Math.ceil((t - now) / 1000));
}

function causeOf(err: unknown): string {
  const e = err as { message?: string; cause?: { code?: string; message?: string } };
  return e?.cause?.code ?? e?.cause?.message ?? e?.message ?? String(err);
}

export function errorFromResponse(status: number, text: string, headers?: Headers): CliError {
  let body: ErrorBody | undefined;
  try {
    body = JSON.parse(text) as ErrorBody;
  } catch {
    body = undefined;
  }
  const code = body?.error?.code ?? `HTTP_${status}`;
  let message =
    body?.error?.message ?? (text.trim().slice(0, 200) || `the server answered ${status}`);
  const field = body?.error?.field;
  if (code === 'FERRY_FORBIDDEN' || code === 'HTTP_403') {
    // The token is valid but may not do this (a target outside its patterns): say so first.
    message = `${field === 'target' ? 'this token may not push there' : 'this token may not do that'}: ${message}`;
  } else if (status === 429) {
    const wait = retryAfterSeconds(headers?.get('retry-after'));
    message = `too many requests (429): ${message}; ${wait !== undefined ? `try again in ${wait} s` : 'try again later'}`;
    const err = new CliError(code, message, 1, field);
    if (wait !== undefined) err.retryAfterMs = wait * 1000;
    return err;
  } else if (field && !message.includes(field)) message += ` (field ${field})`;
  return new CliError(code, message, 1, field);
}
