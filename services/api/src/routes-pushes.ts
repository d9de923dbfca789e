/**
 * /v1/pushes: accept (pushes.ts does the work), list, read, cancel, and follow
 * a push's events (sse.ts). Handlers only move requests and answers.
 */
import type { FerryConfig } from '@ferry/config';
import type { Logger } from '@ferry/log';
import {
  removePushJobs,
  type FerryQueues,
  type PushLayout,
  type PushState,
  type PushStatus,
  type PushStore,
  type SigningStore,
} from '@ferry/queue';
import type { AddRoute } from './app';
import { ApiError } from './errors';
import type { Inspector } from './inspect';
import { checkIdempotencyKey, createPush, type PushBody } from './pushes';
import { lastEventIdOf, streamEvents } from './sse';

export interface PushRouteDeps {
  config: FerryConfig;
  store: PushStore;
  queues: FerryQueues;
  inspector: Inspector;
  signing: SigningStore;
  logger: Logger;
  keepAliveMs: number;
  streams: Set<() => void>;
}

export function links(id: string) {
  return { self: `/v1/pushes/${id}`, events: `/v1/pushes/${id}/events` };
}

function layoutOf(state: PushState): PushLayout {
  const images: { layers: number }[] = [];
  for (const l of state.layers) {
    images[l.imageIndex] = { layers: Math.max(images[l.imageIndex]?.layers ?? 0, l.index + 1) };
  }
  return { images: Array.from(images, (i) => i ?? { layers: 0 }) };
}

function publicState(state: PushState) {
  const { request, ...rest } = state;
  return {
    ...rest,
    ...(request?.requestedBy !== undefined ? { requestedBy: request.requestedBy } : {}),
    links: links(state.id),
  };
}

/** Cancels a push: its waiting jobs are removed and its unfinished layers marked cancelled. */
async function cancelPush(deps: PushRouteDeps, id: string) {
  const { store, queues, logger } = deps;
  const state = await store.get(id);
  if (!state) throw new ApiError('FERRY_PUSH_NOT_FOUND', `no push ${id}`, 'id');
  if (state.status === 'cancelled') return { id, status: 'cancelled', links: links(id) };
  const r = await store.cancel(id);
  if (!r.ok) {
    throw new ApiError(
      'FERRY_PUSH_FINISHED',
      `push ${id} has ${r.previous ?? state.status} already`,
      'id',
    );
  }
  const removed = await removePushJobs(queues, id, layoutOf(state));
  // Layers not in the registry yet will never be: say so (an upload still running
  // stops within a few seconds, cancels its registry session and says so too).
  for (const l of state.layers) {
    if (l.state === 'pending' || l.state === 'uploading') {
      await store.updateLayer(
        id,
        { imageIndex: l.imageIndex, index: l.index },
        { state: 'cancelled' },
      );
    }
  }
  logger.info('push cancelled', { id, removedJobs: removed });
  return { id, status: 'cancelled', removedJobs: removed, links: links(id) };
}

export function pushRoutes(route: AddRoute, deps: PushRouteDeps): void {
  const { config, store, queues, inspector, logger, keepAliveMs, streams, signing } = deps;
  route('POST', '/v1/pushes', async (req, reply) => {
    const key = checkIdempotencyKey(req.headers['idempotency-key']);
    const r = await createPush(
      { config, store, queues, inspector, logger, signing },
      req.body as PushBody,
      key,
      req.principal,
    );
    reply.code(202).header('location', links(r.id).self);
    if (r.replayed) reply.header('idempotent-replayed', 'true');
    return reply.send({ id: r.id, status: r.status, links: links(r.id) });
  });

  route('GET', '/v1/pushes', async (req) => {
    const q = req.query as { status?: PushStatus; limit?: string };
    const list = await store.list({ status: q.status, limit: q.limit ? Number(q.limit) : 50 });
    return { pushes: list.map((p) => ({ ...p, links: links(p.id) })) };
  });

  route('GET', '/v1/pushes/:id', async (req) => {
    const { id } = req.params as { id: string };
    const state = await store.get(id);
    if (!state) throw new ApiError('FERRY_PUSH_NOT_FOUND', `no push ${id}`, 'id');
    return publicState(state);
  });

  route('DELETE', '/v1/pushes/:id', async (req) =>
    cancelPush(deps, (req.params as { id: string }).id),
  );

  route('GET', '/v1/pushes/:id/events', async (req, reply) => {
    const { id } = req.params as { id: string };
    const last = lastEventIdOf(req.headers['last-event-id'], req.query as { lastEventId?: string });
    const status = await store.status(id);
    if (!status) throw new ApiError('FERRY_PUSH_NOT_FOUND', `no push ${id}`, 'id');
    reply.hijack();
    await streamEvents({ store, logger, keepAliveMs, streams }, id, last, req.raw, reply.raw);
  });
}
