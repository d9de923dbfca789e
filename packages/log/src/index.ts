/**
 * winston logger factory with a redaction step: credentials, tokens and
 * Authorization headers never reach a log line, whatever shape they arrive in.
 */
import winston from 'winston';

export type Logger = winston.Logger;

const SECRET_KEYS =
  /^(authorization|proxy-authorization|password|passwd|secret|token|access_token|refresh_token|identitytoken|auth|cookie|set-cookie|x-registry-auth|passphrase|credentials?|private_?key)$/i;

const REDACTED = '[REDACTED]';

/** Replaces secrets inside free text: auth headers, basic credentials in URLs, token params. */
export function redactString(s: string): string {
  return s
    .replace(/\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+/gi, `$1 ${REDACTED}`)
    .replace(/(\b[a-z][a-z0-9+.-]*:\/\/)[^/\s:@]+:[^/\s@]+@/gi, `$1${REDACTED}@`)
    .replace(
      /([?&](?:access_token|token|password|refresh_token|_state)=)[^&\s"']+/gi,
      `$1${REDACTED}`,
    )
    .replace(/("(?:password|token|auth|secret|identitytoken)"\s*:\s*")[^"]*"/gi, `$1${REDACTED}"`);
}

/** Deep copy of a value with every secret-named key and secret-looking string redacted. */
export function redact(value: unknown, seen = new WeakSet<object>()): unknown {
  if (typeof value === 'string') return redactString(value);
  if (value === null || typeof value !== 'object') return value;
  if (seen.has(value)) return '[Circular]';
  seen.add(value);
  if (value instanceof Error) {
    const out: Record<string, unknown> = {
      name: value.name,
      message: redactString(value.message),
    };
    if (value.stack) out.stack = redactString(value.stack);
    for (const [k, v] of Object.entries(value)) {
      out[k] = SECRET_KEYS.test(k) ? REDACTED : redact(v, seen);
    }
    return out;
  }
  if (Array.isArray(value)) return value.map((v) => redact(v, seen));
  if (Buffer.isBuffer(value)) return `[Buffer ${value.length} bytes]`;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    out[k] = SECRET_KEYS.test(k) ? REDACTED : redact(v, seen);
  }
  return out;
}

const redactFormat = winston.format((info) => {
  const MESSAGE = Symbol.for('message');
  const SPLAT = Symbol.for('splat');
  const LEVEL = Symbol.for('level');
  const copy = redact({ ...info }) as Record<string | symbol, unknown>;
  for (const key of Object.keys(info)) delete (info as Record<string, unknown>)[key];
  Object.assign(info, copy);
  const rec = info as unknown as Record<symbol, unknown>;
  delete rec[MESSAGE];
  delete rec[SPLAT];
  rec[LEVEL] = info.level;
  return info;
});

export interface LoggerOptions {
  level?: string;
  /** 'json' (production, no TTY) or 'pretty' (a terminal). Default: pretty on a TTY. */
  format?: 'json' | 'pretty';
  /** Added to every line, e.g. { role: 'upload' }. */
  defaultMeta?: Record<string, unknown>;
  /** Where lines go; default stderr so stdout stays for command output. */
  stream?: NodeJS.WritableStream;
  silent?: boolean;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const pretty =
    opts.format === 'pretty' ||
    (opts.format === undefined && process.stderr.isTTY && process.env.NODE_ENV !== 'production');
  const output = pretty
    ? winston.format.combine(
        winston.format.timestamp({ format: 'HH:mm:ss.SSS' }),
        winston.format.colorize(),
        winston.format.printf(({ timestamp, level, message, ...meta }) => {
          const rest = Object.keys(meta).length ? ' ' + JSON.stringify(meta) : '';
          return `${timestamp} ${level} ${message}${rest}`;
        }),
      )
    : winston.format.combine(winston.format.timestamp(), winston.format.json());
  const transport = opts.stream
    ? new winston.transports.Stream({ stream: opts.stream })
    : new winston.transports.Stream({ stream: process.stderr });
  return winston.createLogger({
    level: opts.level ?? process.env.FERRY_LOG_LEVEL ?? 'info',
    defaultMeta: opts.defaultMeta,
    silent: opts.silent,
    format: winston.format.combine(winston.format.errors({ stack: true }), redactFormat(), output),
    transports: [transport],
  });
}
