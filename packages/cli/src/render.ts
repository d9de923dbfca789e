import type { LayerState, PushEvent, StoredEvent, WaitingEvent } from '@ferry/queue';

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

/** "8 s", "3 min", "2 h 5 min": a wait or a budget in words. */
export function formatSeconds(sec: number): string {
  const s = Math.max(0, Math.round(sec));
  if (s < 120) return `${s} s`;
  const min = Math.round(s / 60);
  if (min < 120) return `${min} min`;
  return `${Math.floor(min / 60)} h${min % 60 ? ` ${min % 60} min` : ''}`;
}

/**
 * A `waiting` event as one line: "registry 127.0.0.1:5001 unreachable, next try in 8 s,
 * gives up in 14 min" (other causes are named: "answered 503 …", "rate-limited …").
 */
export function waitingText(e: WaitingEvent, now = Date.now()): string {
  const next = Math.max(0, Math.ceil((Date.parse(e.nextTryAt) - now) / 1000));
  const what =
    /UNREACHABLE|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENOTFOUND|socket|fetch failed/i.test(
      `${e.cause.code} ${e.cause.message}`,
    )
      ? 'unreachable'
      : `failed (${e.cause.code}: ${e.cause.message.replace(/\s+/g, ' ').slice(0, 120)})`;
  const nextText = Number.isFinite(next) ? `next try in ${formatSeconds(next)}` : 'trying again';
  return `registry ${e.registry} ${what}, ${nextText}, gives up in ${formatSeconds(e.budgetLeftSeconds)}`;
}

function otherText(e: PushEvent): string | undefined {
  switch (e.type) {
    case 'status':
      if (e.status === 'running') return 'Preparing';
      if (e.status === 'queued') return 'Queued';
      if (e.status === 'succeeded' && e.manifest)
        return `digest: ${e.manifest.digest} size: ${e.manifest.size}`;
      // failed / cancelled: the command prints the one error line (ferry: CODE: message).
      if (e.status === 'failed' || e.status === 'cancelled') return undefined;
      return e.status;
    case 'waiting':
      return waitingText(e);
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

/** A docker-style bar: "[=========>          ] 12.3MB/201.3MB". */
function bar(done: number, total: number, width = 40): string {
  const frac = Math.max(0, Math.min(1, done / total));
  const filled = Math.floor(frac * width);
  const b =
    '='.repeat(Math.max(0, filled - 1)) + (filled > 0 ? '>' : '') + ' '.repeat(width - filled);
  return `[${b}] ${formatBytes(done)}/${formatBytes(total)}`;
}

/** One line per layer, redrawn in place, with a bar while bytes go out (a terminal). */
export class TtyRenderer implements Renderer {
  private readonly layers = new Map<string, LayerState>();
  private notice: string | undefined;
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
    // A blob of known size (oci:, docker-archive:): the bytes sent of it. A layer Ferry
    // compresses (dir:): the bytes of its uncompressed tar read so far, of the tar's size.
    if (l.size && l.size > 0) return `${name}: ${text} ${bar(l.bytesSent, l.size)}`;
    if (l.total && l.total > 0 && l.bytesRead !== undefined)
      return `${name}: ${text} ${bar(l.bytesRead, l.total)}`;
    return `${name}: ${text} ${formatBytes(l.bytesSent)}`;
  }

  private redraw(): void {
    let s = this.drawn > 0 ? `\x1b[${this.drawn}F` : '';
    const lines = [...this.layers.values()].sort(
      (a, b) => a.imageIndex - b.imageIndex || a.index - b.index,
    );
    for (const l of lines) s += `\x1b[2K${this.line(l)}\n`;
    // A registry being waited for: one line under the layers, until something moves again.
    if (this.notice) s += `\x1b[2K${this.notice}\n`;
    // Fewer rows than last time (the notice went): blank the rest, they are reused next time.
    const rows = lines.length + (this.notice ? 1 : 0);
    for (let i = rows; i < this.drawn; i++) s += '\x1b[2K\n';
    this.drawn = Math.max(rows, this.drawn);
    this.out.write(s);
  }

  private message(text: string): void {
    const up = this.drawn > 0 ? `\x1b[${this.drawn}F\x1b[J` : '';
    this.out.write(`${up}${text}\n`);
    this.drawn = 0;
    this.redraw();
  }

  event({ event: e }: StoredEvent): void {
    if (e.type === 'waiting') {
      this.notice = waitingText(e);
      this.redraw();
      return;
    }
    if (e.type === 'layer') {
      if (e.imageIndex > 0) this.multiImage = true;
      const { type: _t, at: _a, ...layer } = e;
      const key = `${e.imageIndex}:${e.index}`;
      const before = this.layers.get(key);
      if (
        before &&
        (before.state !== layer.state ||
          layer.bytesSent > before.bytesSent ||
          (layer.bytesRead ?? 0) > (before.bytesRead ?? 0))
      )
        this.notice = undefined;
      this.layers.set(key, layer);
      this.redraw();
      return;
    }
    if (e.type === 'status' || e.type === 'manifest') this.notice = undefined;
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
