import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { TokenEntry } from '@ferry/config';

const COOKIE = 'ferry_session';
const SESSION_SECONDS = 12 * 3600;

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/** Who is asking: the token's name (never the token), its scope and target patterns. */
export interface Principal {
  /** The token's name (`NAME=` or `api#N` / `admin#N`); undefined when the API is open. */
  readonly name: string | undefined;
  /** Bull Board's writes (pause, clean, retry, …) are for admin tokens only. */
  readonly admin: boolean;
  /** Normalised `host[:port]/repo` globs the token may push to; empty: any allowed target. */
  readonly patterns: readonly string[];
}

/** With no token configured every route is open, as before scopes. */
const OPEN: Principal = Object.freeze({ name: undefined, admin: true, patterns: [] });

interface Known {
  digest: Buffer;
  principal: Principal;
}

/** `*` matches any run of characters (a `/` included); everything else literally. */
function globMatches(glob: string, s: string): boolean {
  const re = glob
    .split('*')
    .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${re}$`).test(s);
}

/**
 * True when a pattern (`host[:port]/repo-glob`, host normalised) covers a
 * normalised target `host[:port]/repo[:tag]`. The host matches as an allowlist
 * entry does (no port: any port; `*` wildcards); the repository as a glob.
 */
export function patternCovers(
  pattern: string,
  target: string,
  hostAllowed: (host: string, entry: string) => boolean,
): boolean {
  if (pattern === '*') return true;
  const ps = pattern.indexOf('/');
  const ts = target.indexOf('/');
  if (ps <= 0 || ts <= 0) return false;
  let repo = target.slice(ts + 1);
  const at = repo.indexOf('@');
  if (at >= 0) repo = repo.slice(0, at);
  const colon = repo.lastIndexOf(':');
  if (colon >= 0) repo = repo.slice(0, colon);
  return (
    hostAllowed(target.slice(0, ts), pattern.slice(0, ps)) &&
    globMatches(pattern.slice(ps + 1), repo)
  );
}

/**
 * Bearer tokens (FERRY_API_TOKENS, FERRY_ADMIN_TOKENS) and Bull Board sessions.
 * Tokens are kept only as SHA-256 digests and compared in constant time (every
 * token compared, no early exit). A session cookie is
 * `<expiry>.<name>.<HMAC>` with a key derived from the token list and scopes —
 * no token in the cookie, the token's scope carried by its name, valid on
 * every API replica with the same tokens, void once the tokens change.
 */
export class Auth {
  private readonly known: Known[];
  private readonly byName = new Map<string, Principal>();
  private readonly sessionKey: Buffer;

  constructor(entries: readonly TokenEntry[]) {
    this.known = entries.map((e) => {
      const principal: Principal = Object.freeze({
        name: e.name,
        admin: e.scope === 'admin',
        patterns: Object.freeze([...e.patterns]),
      });
      this.byName.set(e.name, principal);
      return { digest: sha256(e.token), principal };
    });
    const scopes = this.known.map(
      (k) =>
        `${k.digest.toString('hex')} ${k.principal.name} ${k.principal.admin} ${k.principal.patterns.join(';')}`,
    );
    this.sessionKey = createHmac('sha256', 'ferry-session-v2').update(scopes.join(',')).digest();
  }

  /** No tokens configured: every route is open. */
  get open(): boolean {
    return this.known.length === 0;
  }

  /** The principal of a token, or undefined (constant time per token, every token compared). */
  identify(token: string | undefined): Principal | undefined {
    if (this.open) return OPEN;
    if (!token) return undefined;
    const d = sha256(token);
    let found: Principal | undefined;
    for (const k of this.known) {
      const same = timingSafeEqual(k.digest, d);
      found = same ? k.principal : found;
    }
    return found;
  }

  /** True when token is one of the configured tokens. */
  checkToken(token: string | undefined): boolean {
    return this.identify(token) !== undefined;
  }

  /** The bearer token of an Authorization header, or undefined. */
  static bearer(header: string | undefined): string | undefined {
    if (!header) return undefined;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    return m ? m[1] : undefined;
  }

  private sign(expires: number, name: string): string {
    return createHmac('sha256', this.sessionKey)
      .update(`session:${expires}:${name}`)
      .digest('base64url');
  }

  /** A Set-Cookie value for a fresh session of this principal. */
  sessionCookie(principal: Principal, secure: boolean, now = Date.now()): string {
    const expires = Math.floor(now / 1000) + SESSION_SECONDS;
    const name = principal.name ?? '';
    const value = `${expires}.${Buffer.from(name).toString('base64url')}.${this.sign(expires, name)}`;
    return (
      `${COOKIE}=${value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=${SESSION_SECONDS}` +
      (secure ? '; Secure' : '')
    );
  }

  /** A Set-Cookie value that ends the session. */
  static clearCookie(): string {
    return `${COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0`;
  }

  /** The principal of a valid, unexpired session in the Cookie header, or undefined. */
  sessionPrincipal(cookieHeader: string | undefined, now = Date.now()): Principal | undefined {
    if (this.open) return OPEN;
    if (!cookieHeader) return undefined;
    for (const part of cookieHeader.split(';')) {
      const [cname, ...rest] = part.trim().split('=');
      if (cname !== COOKIE) continue;
      const m = /^(\d{1,12})\.([A-Za-z0-9_-]{1,100})\.([A-Za-z0-9_-]{43})$/.exec(rest.join('='));
      if (!m) continue;
      const expires = Number(m[1]);
      if (expires * 1000 <= now) continue;
      const name = Buffer.from(m[2]!, 'base64url').toString('utf8');
      const want = Buffer.from(this.sign(expires, name));
      const got = Buffer.from(m[3]!);
      if (want.length !== got.length || !timingSafeEqual(want, got)) continue;
      const principal = this.byName.get(name);
      if (principal) return principal;
    }
    return undefined;
  }

  /** True when the Cookie header holds a valid, unexpired session. */
  checkSession(cookieHeader: string | undefined, now = Date.now()): boolean {
    return this.sessionPrincipal(cookieHeader, now) !== undefined;
  }
}

/**
 * Login attempts per client address: at most `limit` in a window of
 * `windowMs`; further ones are refused until the window ends (Retry-After).
 * In memory, per API process.
 */
export class LoginLimiter {
  private readonly tries = new Map<string, { start: number; count: number }>();

  constructor(
    readonly limit = 10,
    readonly windowMs = 60_000,
  ) {}

  /** Counts a try; returns 0 when it may go ahead, else the seconds until the window ends. */
  take(client: string, now = Date.now()): number {
    if (this.tries.size > 10_000) {
      for (const [k, v] of this.tries) if (now - v.start >= this.windowMs) this.tries.delete(k);
    }
    let t = this.tries.get(client);
    if (!t || now - t.start >= this.windowMs) {
      t = { start: now, count: 0 };
      this.tries.set(client, t);
    }
    t.count++;
    if (t.count <= this.limit) return 0;
    return Math.max(1, Math.ceil((t.start + this.windowMs - now) / 1000));
  }
}

export function loginPage(message?: string): string {
  const note = message ? `<p class="err">${message.replace(/[<>&"]/g, '')}</p>` : '';
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Ferry — sign in</title>
<style>body{font-family:sans-serif;max-width:24rem;margin:4rem auto}input{width:100%;box-sizing:border-box;padding:.4rem;margin:.4rem 0}.err{color:#b00}</style>
</head><body><h1>Ferry queues</h1>${note}
<form method="post" action="/admin/login">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<input type="submit" value="Sign in">
</form></body></html>`;
}
