/**
 * GET /v1/pushes/{id}/events: the push's events as Server-Sent Events, from
 * after Last-Event-ID on, until the push ends or the client goes. Readers share
 * Redis connections (PushStore.eventReader); writes wait for the socket to
 * drain, so a slow follower never makes the API buffer a stream in memory.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '@ferry/log';
import { isEventId, isFinalStatus, type PushStore } from '@ferry/queue';
import { ApiError } from './errors';

export interface SseDeps {
  store: PushStore;
  logger: Logger;
  /** How long one blocking read waits before a keep-alive comment. */
  keepAliveMs: number;
  /** Open streams' stop functions (closed when the server closes). */
  streams: Set<() => void>;
}

const MAX_ID_PART = (1n << 64n) - 1n;

/** A stream id Redis accepts: `ms[-seq]`, each part an unsigned 64-bit integer. */
export function isRedisEventId(s: string): boolean {
  return isEventId(s) && s.split('-').every((p) => BigInt(p) <= MAX_ID_PART);
}

/** The event id to resume after: the Last-Event-ID header, else ?lastEventId=. */
export function lastEventIdOf(
  header: string | string[] | undefined,
  query: { lastEventId?: string },
): string | undefined {
  const last =
    (typeof header === 'string' && header !== '' ? header : undefined) ?? query.lastEventId;
  if (last !== undefined && !isRedisEventId(last)) {
    throw new ApiError(
      'FERRY_BAD_EVENT_ID',
      `Last-Event-ID ${JSON.stringify(last.slice(0, 64))} is not an event id (MS[-SEQ], each at most 2^64-1)`,
      'Last-Event-ID',
    );
  }
  return last;
}

/** Writes one chunk; resolves false when the client is gone. Waits for 'drain' when the socket buffer is full. */
function write(res: ServerResponse, chunk: string, isOpen: () => boolean): Promise<boolean> {
  if (!isOpen()) return Promise.resolve(false);
  if (res.write(chunk)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      res.off('drain', onDrain);
      res.off('close', onClose);
      resolve(ok);
    };
    const onDrain = () => done(isOpen());
    const onClose = () => done(false);
    res.on('drain', onDrain);
    res.on('close', onClose);
  });
}

/** Streams the events of push `id` after `last` to `res` (already hijacked from the framework). */
export async function streamEvents(
  deps: SseDeps,
  id: string,
  last: string | undefined,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  const { store, logger, keepAliveMs, streams } = deps;
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  const reader = store.eventReader(id);
  let open = true;
  const isOpen = () => open;
  const stop = () => {
    if (!open) return;
    open = false;
    reader.close();
    res.end();
  };
  streams.add(stop);
  req.on('close', stop);
  res.on('close', stop);
  let after = last;
  // A finished push gets no new events: read what is left without waiting, then end
  // (an id past its end ends the stream at once instead of holding it open).
  try {
    await write(res, 'retry: 2000\n\n', isOpen);
    const first = await store.status(id);
    let finished = !first || isFinalStatus(first);
    while (open) {
      const events = await reader.read(after, finished ? 0 : keepAliveMs);
      if (!open) break;
      if (events.length === 0) {
        if (finished) break; // everything was delivered before
        // it may have finished during the wait: look once more without waiting
        const s = await store.status(id);
        if (!s || isFinalStatus(s)) {
          finished = true;
          continue;
        }
        if (!(await write(res, ': keep-alive\n\n', isOpen))) break;
        continue;
      }
      let final = false;
      for (const { id: eid, event } of events) {
        if (!(await write(res, `id: ${eid}\ndata: ${JSON.stringify(event)}\n\n`, isOpen))) break;
        after = eid;
        if (event.type === 'status' && isFinalStatus(event.status)) final = true;
      }
      if (final) break;
    }
  } catch (err) {
    if (open) logger.warn('sse: stream ended by an error', { id, err: (err as Error).message });
  } finally {
    streams.delete(stop);
    stop();
  }
}
