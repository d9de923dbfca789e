/**
 * The auth flow: ping GET /v2/ for the registry's challenge, then Basic
 * credentials or a bearer token per (registry, scope), cached until shortly
 * before expiry and refreshed once on a 401. (go-containerregistry:
 * transport/ping.go, bearer.go, basic.go.)
 *
 * A ping or token fetch is shared by every caller that needs it at the same
 * moment, so it runs with no caller's AbortSignal and makes one attempt: each
 * caller only stops waiting on it when its own signal aborts (waitFor), and
 * retries a failure in its own retry loop, under its own permit.
 */
import type { Dispatcher } from 'undici';
import { CredentialStore, parseChallenges, type Challenge, type Credentials } from './auth';
import {
  classifyError,
  errorFromResponse,
  ErrorCodes,
  RegistryError,
  type ErrorCode,
} from './errors';
import { parseRetryAfter, waitFor } from './retry';
import { dump, header, readText, type Headers, type Res, type Transport } from './transport';

interface Token {
  token: string;
  expiresAt: number;
}

interface TokenResponse {
  token?: string;
  access_token?: string;
  expires_in?: number;
  issued_at?: string;
}

/** A pull-only scope on one repository is covered by a push,pull token for it. */
function widen(scope: string[]): string[] {
  return scope.map((s) => s.replace(/:pull$/, ':pull,push'));
}

function tokenKey(reg: string, scope: string[]): string {
  return `${reg}|${[...scope].sort().join(' ')}`;
}

function basic(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}

function parseToken(reg: string, what: string, text: string): Token {
  let parsed: TokenResponse;
  try {
    parsed = JSON.parse(text) as TokenResponse;
  } catch {
    throw new RegistryError(ErrorCodes.REGISTRY_PROTOCOL, `${what}: token response is not JSON`, {
      registry: reg,
    });
  }
  const token = parsed.token || parsed.access_token;
  if (!token) {
    throw new RegistryError(ErrorCodes.REGISTRY_PROTOCOL, `${what}: token response has no token`, {
      registry: reg,
    });
  }
  const ttlMs =
    (typeof parsed.expires_in === 'number' && parsed.expires_in > 0 ? parsed.expires_in : 60) *
    1000;
  const issued = parsed.issued_at ? Date.parse(parsed.issued_at) : NaN;
  const start = Number.isNaN(issued) ? Date.now() : Math.min(issued, Date.now());
  const margin = Math.min(10_000, ttlMs / 4);
  return { token, expiresAt: start + ttlMs - margin };
}

/** How long a registry's challenge is trusted before GET /v2/ is asked again. */
export const CHALLENGE_TTL_MS = 5 * 60_000;

/**
 * Credentials for registry H go to H, and to the token realm of H's 401
 * challenge when that realm's host is itself allowed (docker's rule: the
 * token service is often its own host) — nowhere else. A realm carrying
 * userinfo is refused, never stripped. A challenge is re-read after a 401 and
 * at the latest CHALLENGE_TTL_MS after it was read.
 */
export class Authenticator {
  /** The challenge of GET /v2/ per registry (undefined value: no auth needed), and when it was read. */
  private readonly challenges = new Map<
    string,
    { at: number; challenge: Promise<Challenge | undefined> }
  >();
  private readonly tokens = new Map<string, Token>();
  /** Token requests in flight, so concurrent callers share one. */
  private readonly tokenFetches = new Map<string, Promise<Token>>();
  private readonly creds: CredentialStore;

  constructor(
    private readonly transport: Transport,
    readonly dockerConfigPath: string,
    private readonly challengeTtlMs = CHALLENGE_TTL_MS,
  ) {
    this.creds = new CredentialStore(dockerConfigPath);
  }

  credentialsFor(reg: string): Promise<Credentials | undefined> {
    return this.creds.get(reg);
  }

  /** Forgets the registry's challenge, so the next request pings again. */
  forget(reg: string): void {
    this.challenges.delete(reg);
  }

  /** The registry's challenge, from one shared ping; the caller's signal only stops its wait. */
  challenge(reg: string, signal?: AbortSignal): Promise<Challenge | undefined> {
    const hit = this.challenges.get(reg);
    if (hit && Date.now() - hit.at < this.challengeTtlMs) return waitFor(hit.challenge, signal);
    const probe = this.probe(reg);
    const entry = { at: Date.now(), challenge: probe };
    this.challenges.set(reg, entry);
    probe.catch(() => {
      if (this.challenges.get(reg) === entry) this.challenges.delete(reg);
    });
    return waitFor(probe, signal);
  }

  /** GET /v2/ without credentials: no challenge (200) or the registry's challenge (401). One attempt. */
  private async probe(reg: string): Promise<Challenge | undefined> {
    const what = `ping ${reg}`;
    const res = await this.transport.exchange(
      reg,
      'GET',
      new URL('/v2/', this.transport.baseUrl(reg)),
      {
        what,
      },
    );
    if (res.status === 200 || res.status === 401) {
      await dump(res);
      return res.status === 200 ? undefined : this.pickChallenge(reg, res);
    }
    const err = await this.errorOf(reg, res, what);
    if (err.code === ErrorCodes.REPOSITORY_NOT_FOUND || err.code === ErrorCodes.REGISTRY_PROTOCOL) {
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `${what}: GET /v2/ answered HTTP ${res.status}; is ${reg} an OCI / Docker v2 registry?`,
        { status: res.status, registry: reg },
      );
    }
    throw err;
  }

  private pickChallenge(reg: string, res: Res): Challenge {
    const all = parseChallenges(res.headers['www-authenticate']);
    const ch = all.find((c) => c.scheme === 'bearer') ?? all.find((c) => c.scheme === 'basic');
    if (!ch) {
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `${reg} answered 401 without a Bearer or Basic WWW-Authenticate challenge`,
        { status: 401, registry: reg },
      );
    }
    return ch;
  }

  /**
   * A 401 on the registry's own host: its challenge replaces the one we had
   * (none in it: the next request pings again), and cached tokens for the
   * scope are dropped.
   */
  onUnauthorized(reg: string, res: Res, scope: string[]): void {
    let ch: Challenge | undefined;
    try {
      ch = this.pickChallenge(reg, res);
    } catch {
      ch = undefined;
    }
    if (ch) {
      const { scope: _s, error: _e, ...params } = ch.params;
      const challenge = Promise.resolve({ scheme: ch.scheme, params });
      this.challenges.set(reg, { at: Date.now(), challenge });
    } else {
      this.forget(reg);
    }
    this.tokens.delete(tokenKey(reg, scope));
    this.tokens.delete(tokenKey(reg, widen(scope)));
  }

  /** The Authorization header value for a request on reg with scope, or undefined. */
  async authorization(
    reg: string,
    scope: string[],
    signal?: AbortSignal,
  ): Promise<string | undefined> {
    const ch = await this.challenge(reg, signal);
    if (!ch) return undefined;
    if (ch.scheme === 'basic') {
      const c = await this.credentialsFor(reg);
      if (!c || c.username === undefined || c.password === undefined) return undefined;
      return basic(c);
    }
    const now = Date.now();
    for (const key of [tokenKey(reg, scope), tokenKey(reg, widen(scope))]) {
      const t = this.tokens.get(key);
      if (t && now < t.expiresAt) return `Bearer ${t.token}`;
    }
    const key = tokenKey(reg, scope);
    let pending = this.tokenFetches.get(key);
    if (!pending) {
      const fetching = this.fetchToken(reg, ch, scope).then((t) => {
        this.tokens.set(key, t);
        return t;
      });
      pending = fetching.finally(() => {
        if (this.tokenFetches.get(key) === pending) this.tokenFetches.delete(key);
      });
      pending.catch(() => undefined);
      this.tokenFetches.set(key, pending);
    }
    const t = await waitFor(pending, signal);
    return `Bearer ${t.token}`;
  }

  private realmOf(reg: string, ch: Challenge): URL {
    const realmRaw = ch.params.realm;
    if (!realmRaw) {
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `${reg}: Bearer challenge without a realm`,
        {
          registry: reg,
        },
      );
    }
    let realm: URL;
    try {
      realm = new URL(realmRaw);
    } catch {
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `${reg}: token realm "${realmRaw}" is not a URL`,
        { registry: reg },
      );
    }
    if (realm.username || realm.password) {
      // Refused, not stripped: a realm with user:password@ is a registry trying to
      // make us send (or leak) credentials somewhere; say so.
      throw new RegistryError(
        ErrorCodes.REDIRECT_REFUSED,
        `${reg}: token realm ${realm.protocol}//…@${realm.host}${realm.pathname} carries credentials (user:password@); refused`,
        { registry: reg },
      );
    }
    this.transport.checkForeignUrl(reg, realm, 'token realm');
    return realm;
  }

  /** The token request: OAuth2 refresh_token grant for an identitytoken, else GET with Basic. */
  private tokenRequest(
    ch: Challenge,
    scope: string[],
    realm: URL,
    creds: Credentials | undefined,
  ): { method: Dispatcher.HttpMethod; url: URL; headers: Headers; body?: string } {
    const headers: Headers = { accept: 'application/json' };
    const url = new URL(realm.toString());
    if (creds?.identityToken) {
      const form = new URLSearchParams({
        grant_type: 'refresh_token',
        refresh_token: creds.identityToken,
        client_id: 'ferry',
        ...(ch.params.service ? { service: ch.params.service } : {}),
      });
      if (scope.length) form.set('scope', scope.join(' '));
      headers['content-type'] = 'application/x-www-form-urlencoded';
      return { method: 'POST', url, headers, body: form.toString() };
    }
    if (ch.params.service) url.searchParams.set('service', ch.params.service);
    for (const s of scope) url.searchParams.append('scope', s);
    if (creds?.username !== undefined && creds.password !== undefined)
      headers.authorization = basic(creds);
    return { method: 'GET', url, headers };
  }

  /** One attempt, with no caller's signal: it may be shared by several callers. */
  private async fetchToken(reg: string, ch: Challenge, scope: string[]): Promise<Token> {
    const what = `token for ${reg}`;
    const realm = this.realmOf(reg, ch);
    const creds = await this.credentialsFor(reg);
    const req = this.tokenRequest(ch, scope, realm, creds);
    try {
      const res = await this.transport.exchangeForeign(reg, req.method, req.url, {
        headers: req.headers,
        body: req.body,
        what,
      });
      if (res.status === 200) return parseToken(reg, what, await readText(res, 1024 * 1024));
      const err = await this.errorOf(reg, res, what);
      if (res.status !== 401 && res.status !== 403) throw err;
      throw new RegistryError(
        ErrorCodes.REGISTRY_UNAUTHORIZED,
        `${what}: the token server refused ${creds ? 'the configured credentials' : 'anonymous access (no credentials for this host in the docker config)'} (HTTP ${res.status})`,
        { status: res.status, registry: reg, errors: err.errors },
      );
    } catch (e) {
      throw classifyError(e, reg, what);
    }
  }

  /** Maps an error response to a RegistryError; a 401 from the registry names the credentials used. */
  async errorOf(reg: string, res: Res, what: string, notFound?: ErrorCode): Promise<RegistryError> {
    const text = await readText(res);
    const err = errorFromResponse(res.status, text, {
      registry: reg,
      what,
      notFound,
      retryAfterMs: parseRetryAfter(header(res, 'retry-after')),
    });
    if (err.code !== ErrorCodes.REGISTRY_UNAUTHORIZED || !this.transport.sameOrigin(reg, res.url))
      return err;
    let hint: string;
    try {
      const c = await this.credentialsFor(reg);
      hint = c
        ? `${reg} refused the credentials for it in ${this.dockerConfigPath}`
        : `no credentials for ${reg} in ${this.dockerConfigPath}`;
    } catch (e) {
      hint = (e as Error).message;
    }
    return new RegistryError(err.code, `${err.message}; ${hint}`, {
      status: err.status,
      errors: err.errors,
      registry: reg,
    });
  }
}
