import type { LayerState, PushEvent, StoredEvent } from '@ferry/queue';

export interface Renderer {
  /** The push was accepted. */
  start(info: { id: string; source: string; target: string }): void;
  event(e: StoredEvent): void;
  /** The stream will be reopened. */
  reconnect(attempt: number, why: string): void;
  end(): void;
}

type Out = NodeJS.WritableStream & { isTTY?: boolean; columns?: number };

export function formatBytes(n: number | undefined): string {
  if (n === undefined || !Number.isFinite(n)) return '?';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return i === 0 ? `${v}B` : `${v.toFixed(v < 10 ? 2 : 1)}${units[i]}`;
}

function layerName(
  l: Pick<LayerState, 'digest' | 'index' | 'imageIndex'>,
  multiImage: boolean,
): string {
  if (l.digest) return l.digest.replace(/^sha256:/, '').slice(0, 12);
  return multiImage ? `image ${l.imageIndex} layer ${l.index}` : `layer ${l.index}`;
}

/** Docker's words for a layer state. */
export function layerText(l: LayerState): string {
  switch (l.state) {
    case 'pending':
      return 'Waiting';
    case 'exists':
      return 'Layer already exists';
    case 'mounted':
      return l.mountedFrom ? `Mounted from ${l.mountedFrom}` : 'Mounted';
    case 'uploading':
      return 'Pushing';
    case 'uploaded':
      return 'Pushed';
    default:
      return String(l.state);
  }
}

function otherText(e: PushEvent): string | undefined {
  switch (e.type) {
    case 'status':
      if (e.status === 'running') return 'Preparing';
      if (e.status === 'queued') return 'Queued';
      if (e.status === 'succeeded' && e.manifest)
        return `digest: ${e.manifest.digest} size: ${e.manifest.size}`;
      if (e.error) return `${e.status}: ${e.error.code}: ${e.error.message}`;
      return e.status;
    case 'manifest':
      return `manifest ${e.digest}${e.platform ? ` (${e.platform})` : ''} ${e.mediaType}`;
    case 'tag':
      return `${e.tag}: digest: ${e.digest}`;
    case 'signature':
      return `signed (${e.kind}): ${e.digest}`;
    case 'log':
      return e.message;
    default:
      return undefined;
  }
}

/** Plain lines on stderr: one line per change of a layer's state (not per progress tick). */
export class PlainRenderer implements Renderer {
  private readonly states = new Map<string, string>();
  private multiImage = false;
  constructor(private readonly out: Out) {}

  start(info: { id: string; source: string; target: string }): void {
    this.out.write(`Pushing ${info.source} to ${info.target} (push ${info.id})\n`);
  }

  event({ event: e }: StoredEvent): void {
    if (e.type === 'layer') {
      if (e.imageIndex > 0) this.multiImage = true;
      const key = `${e.imageIndex}:${e.index}`;
      const text = layerText(e);
      if (this.states.get(key) === text) return;
      this.states.set(key, text);
      if (e.state === 'pending') return;
      const size =
        e.state === 'uploaded' || e.state === 'exists'
          ? e.size !== undefined
            ? ` (${formatBytes(e.size)})`
            : ''
          : '';
      this.out.write(`${layerName(e, this.multiImage)}: ${text}${size}\n`);
      return;
    }
    const text = otherText(e);
    if (text && !(e.type === 'status' && e.status === 'queued')) this.out.write(`${text}\n`);
  }

  reconnect(attempt: number, why: string): void {
    this.out.write(`(reconnecting to the event stream, attempt ${attempt}: ${why})\n`);
  }

  end(): void {}
}

/** One line per layer, redrawn in place, with a bar while bytes go out (a terminal). */
export class TtyRenderer implements Renderer {
  private readonly layers = new Map<string, LayerState>();
  private drawn = 0;
  private multiImage = false;
  constructor(private readonly out: Out) {}

  start(info: { id: string; source: string; target: string }): void {
    this.out.write(`Pushing ${info.source} to ${info.target} (push ${info.id})\n`);
  }

  private line(l: LayerState): string {
    const name = layerName(l, this.multiImage);
    const text = layerText(l);
    if (l.state !== 'uploading') return `${name}: ${text}`;
    const width = 40;
    if (l.size && l.size > 0) {
      const frac = Math.max(0, Math.min(1, l.bytesSent / l.size));
      const filled = Math.floor(frac * width);
      const bar =
        '='.repeat(Math.max(0, filled - 1)) + (filled > 0 ? '>' : '') + ' '.repeat(width - filled);
      return `${name}: ${text} [${bar}] ${formatBytes(l.bytesSent)}/${formatBytes(l.size)}`;
    }
    return `${name}: ${text} ${formatBytes(l.bytesSent)}`;
  }

  private redraw(): void {
    let s = this.drawn > 0 ? `\x1b[${this.drawn}F` : '';
    const lines = [...this.layers.values()].sort(
      (a, b) => a.imageIndex - b.imageIndex || a.index - b.index,
    );
    for (const l of lines) s += `\x1b[2K${this.line(l)}\n`;
    this.drawn = lines.length;
    this.out.write(s);
  }

  private message(text: string): void {
    const up = this.drawn > 0 ? `\x1b[${this.drawn}F\x1b[J` : '';
    this.out.write(`${up}${text}\n`);
    this.drawn = 0;
    this.redraw();
  }

  event({ event: e }: StoredEvent): void {
    if (e.type === 'layer') {
      if (e.imageIndex > 0) this.multiImage = true;
      const { type: _t, at: _a, ...layer } = e;
      this.layers.set(`${e.imageIndex}:${e.index}`, layer);
      this.redraw();
      return;
    }
    if (e.type === 'manifest' && this.layers.size > 0) {
      // Every layer is in the registry now: leave their lines where they are, as docker
      // does, and write the manifest, tags and digest below them.
      this.drawn = 0;
      this.layers.clear();
    }
    const text = otherText(e);
    if (text && !(e.type === 'status' && e.status === 'queued')) this.message(text);
  }

  reconnect(attempt: number, why: string): void {
    this.message(`(reconnecting, attempt ${attempt}: ${why})`);
  }

  end(): void {}
}

/** --json: one JSON object per event on stdout ({id, ...event}); the last one is the final status. */
export class JsonRenderer implements Renderer {
  constructor(private readonly out: Out) {}
  start(info: { id: string; source: string; target: string }): void {
    this.out.write(JSON.stringify({ type: 'accepted', ...info }) + '\n');
  }
  event({ id, event }: StoredEvent): void {
    this.out.write(JSON.stringify({ id, ...event }) + '\n');
  }
  reconnect(): void {}
  end(): void {}
}
