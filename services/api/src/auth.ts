import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

const COOKIE = 'ferry_session';
const SESSION_SECONDS = 12 * 3600;

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/**
 * Bearer tokens (FERRY_API_TOKENS) and Bull Board sessions. Tokens are kept
 * only as SHA-256 digests and compared in constant time. A session cookie is
 * `<expiry>.<HMAC>` with a key derived from the token list — no token in the
 * cookie, valid on every API replica that has the same tokens, void once the
 * tokens change.
 */
export class Auth {
  private readonly digests: Buffer[];
  private readonly sessionKey: Buffer;

  constructor(tokens: readonly string[]) {
    this.digests = tokens.map(sha256);
    this.sessionKey = createHmac('sha256', 'ferry-session-v1')
      .update(this.digests.map((d) => d.toString('hex')).join(','))
      .digest();
  }

  /** No tokens configured: every route is open. */
  get open(): boolean {
    return this.digests.length === 0;
  }

  /** True when token is one of the configured tokens (constant time per token, every token compared). */
  checkToken(token: string | undefined): boolean {
    if (this.open) return true;
    if (!token) return false;
    const d = sha256(token);
    let ok = false;
    for (const t of this.digests) ok = timingSafeEqual(t, d) || ok;
    return ok;
  }

  /** The bearer token of an Authorization header, or undefined. */
  static bearer(header: string | undefined): string | undefined {
    if (!header) return undefined;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    return m ? m[1] : undefined;
  }

  private sign(expires: number): string {
    return createHmac('sha256', this.sessionKey).update(`session:${expires}`).digest('base64url');
  }

  /** A Set-Cookie value for a fresh session. */
  sessionCookie(secure: boolean, now = Date.now()): string {
    const expires = Math.floor(now / 1000) + SESSION_SECONDS;
    const value = `${expires}.${this.sign(expires)}`;
    return (
      `${COOKIE}=${value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=${SESSION_SECONDS}` +
      (secure ? '; Secure' : '')
    );
  }

  /** A Set-Cookie value that ends the session. */
  static clearCookie(): string {
    return `${COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0`;
  }

  /** True when the Cookie header holds a valid, unexpired session. */
  checkSession(cookieHeader: string | undefined, now = Date.now()): boolean {
    if (this.open) return true;
    if (!cookieHeader) return false;
    for (const part of cookieHeader.split(';')) {
      const [name, ...rest] = part.trim().split('=');
      if (name !== COOKIE) continue;
      const m = /^(\d{1,12})\.([A-Za-z0-9_-]{43})$/.exec(rest.join('='));
      if (!m) continue;
      const expires = Number(m[1]);
      if (expires * 1000 <= now) continue;
      const want = Buffer.from(this.sign(expires));
      const got = Buffer.from(m[2]);
      if (want.length === got.length && timingSafeEqual(want, got)) return true;
    }
    return false;
  }
}

export function loginPage(message?: string): string {
  const note = message ? `<p class="err">${message.replace(/[<>&"]/g, '')}</p>` : '';
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Ferry — sign in</title>
<style>body{font-family:sans-serif;max-width:24rem;margin:4rem auto}input{width:100%;padding:.4rem;margin:.4rem 0}.err{color:#b00}</style>
</head><body><h1>Ferry queues</h1>${note}
<form method="post" action="/admin/login">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<input type="submit" value="Sign in">
</form></body></html>`;
}
