import { LAYER_ATTRS } from './push-scripts';
import type { LayerKey, LayerState, PushLayout, PushRequest, PushState, PushStatus } from './types';

/** How a push's hash is read and written: field names and values (see push-scripts.ts). */

/** The hash field prefix of one layer's attributes: `layer:<image>:<index>:`. */
export function layerPrefix(k: LayerKey): string {
  if (
    !Number.isInteger(k.imageIndex) ||
    k.imageIndex < 0 ||
    !Number.isInteger(k.index) ||
    k.index < 0
  ) {
    throw new Error(`bad layer key ${JSON.stringify(k)}`);
  }
  return `layer:${k.imageIndex}:${k.index}:`;
}

/** Every layer of a layout, pending. */
export function layoutToLayers(layout: PushLayout): LayerState[] {
  const out: LayerState[] = [];
  layout.images.forEach((img, imageIndex) => {
    for (let index = 0; index < img.layers; index++) {
      out.push({ imageIndex, index, state: 'pending', bytesSent: 0 });
    }
  });
  return out;
}

export function parseJson<T>(s: string | undefined): T | undefined {
  if (s === undefined) return undefined;
  try {
    return JSON.parse(s) as T;
  } catch {
    return undefined;
  }
}

/** A push's hash as read by HGETALL → its state. */
export function parseState(raw: Record<string, string>): PushState {
  const layers = new Map<string, LayerState>();
  for (const [field, value] of Object.entries(raw)) {
    const m = /^layer:(\d+):(\d+):(\w+)$/.exec(field);
    if (!m) continue;
    const k = `${m[1]}:${m[2]}`;
    let l = layers.get(k);
    if (!l) {
      l = { imageIndex: Number(m[1]), index: Number(m[2]), state: 'pending', bytesSent: 0 };
      layers.set(k, l);
    }
    const v = parseJson<unknown>(value);
    if (v !== undefined && (LAYER_ATTRS as readonly string[]).includes(m[3])) {
      (l as unknown as Record<string, unknown>)[m[3]] = v;
    }
  }
  const state: PushState = {
    id: raw.id,
    status: raw.status as PushStatus,
    source: raw.source,
    target: raw.target,
    tags: parseJson<string[]>(raw.tags) ?? [],
    request: parseJson<PushRequest>(raw.request) as PushRequest,
    layers: [...layers.values()].sort((a, b) => a.imageIndex - b.imageIndex || a.index - b.index),
    createdAt: raw.createdAt,
  };
  for (const f of ['manifest', 'manifests', 'signatures', 'error', 'targets'] as const) {
    const v = parseJson<never>(raw[f]);
    if (v !== undefined) (state as unknown as Record<string, unknown>)[f] = v;
  }
  for (const f of ['startedAt', 'finishedAt'] as const) {
    if (raw[f]) state[f] = raw[f];
  }
  const progressMs = Number(raw.progressMs);
  if (raw.progressMs && Number.isFinite(progressMs)) {
    state.progressAt = new Date(progressMs).toISOString();
  }
  const lastCause = parseJson<PushState['lastCause']>(raw.lastCause);
  if (lastCause) state.lastCause = lastCause;
  return state;
}

/** Field/value pairs (JSON values) for every given attribute of each layer. */
export function layerFields(layers: LayerState[]): string[] {
  const out: string[] = [];
  for (const l of layers) {
    const p = layerPrefix(l);
    for (const a of LAYER_ATTRS) {
      if (l[a] !== undefined) out.push(p + a, JSON.stringify(l[a]));
    }
  }
  return out;
}

/** The hash fields of a new push. */
export function createFields(
  id: string,
  request: PushRequest,
  now: Date,
  layout?: PushLayout,
): string[] {
  const fields: string[] = [
    'id',
    id,
    'status',
    'queued',
    'source',
    request.source,
    'target',
    request.target,
    'tags',
    JSON.stringify(request.tags),
    'request',
    JSON.stringify(request),
    'createdAt',
    now.toISOString(),
    'createdMs',
    String(now.getTime()),
  ];
  if (layout) {
    fields.push('layout', JSON.stringify(layout));
    fields.push(...layerFields(layoutToLayers(layout)));
  }
  return fields;
}
