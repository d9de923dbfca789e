import { request as httpRequest } from 'node:http';
import { createParser } from 'eventsource-parser';

/** One server-sent event as the tests see it (fields as sent; data joined by "\n"). */
export interface SseEvent {
  id?: string;
  event?: string;
  data: string;
}

/**
 * The one SSE parser of the tests (the CLI uses the same library):
 * eventsource-parser, so the wire format is read by code nobody here wrote.
 */
export function parseSse(text: string): SseEvent[] {
  const events: SseEvent[] = [];
  const parser = createParser({
    onEvent: (e) => events.push({ id: e.id, event: e.event, data: e.data }),
  });
  parser.feed(text);
  return events;
}

/**
 * Reads an SSE response over a real HTTP connection until the server ends
 * it (or `stopAfter` events arrived).
 */
export function readSse(
  url: string,
  headers: Record<string, string>,
  stopAfter = Infinity,
  onOpen?: () => void,
): Promise<{ status: number; contentType: string; events: SseEvent[]; ended: boolean }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      url,
      { headers: { accept: 'text/event-stream', ...headers } },
      (res) => {
        const events: SseEvent[] = [];
        let done = false;
        const finish = (ended: boolean) => {
          if (done) return;
          done = true;
          resolve({
            status: res.statusCode ?? 0,
            contentType: String(res.headers['content-type']),
            events,
            ended,
          });
          if (!ended) req.destroy();
        };
        const parser = createParser({
          onEvent: (e) => {
            if (done) return;
            events.push({ id: e.id, event: e.event, data: e.data });
            if (events.length >= stopAfter) finish(false);
          },
        });
        onOpen?.();
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => parser.feed(chunk));
        res.on('end', () => finish(true));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}
