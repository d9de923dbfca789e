/**
 * OCI distribution client over undici: ping and auth challenges, blobs
 * (HEAD, GET, mount, monolithic / streamed / chunked upload with resume),
 * manifests and tags.
 *
 * Rules it keeps:
 * - the allowlist is checked before any connection; requests go only to the
 *   host that was checked; redirects and Locations to another host are
 *   refused unless that host is allowed too (and get no credentials);
 * - no request body stream is ever replayed: a retry asks the BlobSource for a
 *   fresh stream from an offset;
 * - the digest sent with the final PUT is computed from the bytes produced
 *   (BlobStream.done), never taken from the source's statement.
 */
import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { Readable, Transform } from 'node:stream';
import { Agent, type Dispatcher } from 'undici';
import type { Logger } from '@ferry/log';
import { isAllowed, isInsecure, normalizeHost } from './allow';
import {
  CredentialStore,
  defaultDockerConfigPath,
  parseChallenges,
  type Challenge,
  type Credentials,
} from './auth';
import { isSchema1, manifestDigest, type BlobSource, type BlobStream } from './digest';
import {
  classifyError,
  errorFromResponse,
  ErrorCodes,
  RegistryError,
  type ErrorCode,
} from './errors';
import { DOCKER_HUB, validateDigest, validateRepository, validateTag } from './reference';

export interface RepoRef {
  registry: string;
  repository: string;
}

export interface UploadOptions {
  /** 0 = one streamed PATCH (chunked transfer encoding); >0 = Content-Range chunks of this size. Default 32 MiB. */
  chunkSize?: number;
  /** One PUT with the whole body; needs source.size. Without source.digest the source is read twice (hash, then send). */
  monolithic?: boolean;
  /** Called as bytes go out: total bytes sent (re-sent ones included) and the position in the blob. */
  onProgress?: (bytesSent: number, position: number) => void;
  signal?: AbortSignal;
  /** Repositories (same registry) to try a cross-repository mount from, if source.digest is stated. */
  mountFrom?: string[];
  /**
   * The Location of an upload session an earlier attempt (another process, a
   * retried job) left open: the upload asks the registry for its offset and
   * continues from there, or opens a fresh session when the registry no
   * longer knows it.
   */
  resumeSession?: string;
  /** Called with the session's current Location whenever it changes, and with undefined once it is finished or cancelled. */
  onSession?: (location: string | undefined) => void;
  /** Leave the session open when the upload fails for a transient reason, so a later attempt can resume it (default: cancel). */
  keepSessionOnFailure?: boolean;
}

export interface UploadResult {
  digest: string;
  size: number;
  /** Bytes put on the wire, counting re-sent bytes. */
  bytesSent: number;
  /** Fresh sessions opened after a dead one (or after DIGEST_INVALID). */
  restarts: number;
  /** Times the upload continued in the same session from the offset the registry reported. */
  resumes: number;
  mountedFrom?: string;
}

export interface RetryInfo {
  registry: string;
  what: string;
  attempt: number;
  delayMs: number;
  error: RegistryError;
}

export interface RegistryClientOptions {
  /** Allowed registry hosts (host[:port], `*` wildcards). Checked before any connection. */
  allow: readonly string[];
  /** Hosts reached over plain HTTP (names, IPs, CIDRs). Default: localhost, 127.0.0.0/8. */
  insecure?: readonly string[];
  /** Extra CA bundle (PEM) trusted next to the system CAs. */
  caFile?: string;
  /** docker config.json with credentials. Default $DOCKER_CONFIG/config.json or ~/.docker/config.json. */
  dockerConfigPath?: string;
  retry?: { attempts?: number; baseDelayMs?: number; maxDelayMs?: number };
  logger?: Logger;
  userAgent?: string;
  /** Called before each backoff sleep (metrics, tests). */
  onRetry?: (info: RetryInfo) => void;
  /** Longest Retry-After honoured by sleeping; a longer one fails at once (transient) with retryAfterMs. Default 60 s. */
  maxRetryAfterMs?: number;
  /** Connections per origin. Default 8. */
  connections?: number;
}

export const DEFAULT_INSECURE: readonly string[] = ['localhost', '127.0.0.0/8', '[::1]'];
export const DEFAULT_CHUNK_SIZE = 32 * 1024 * 1024;
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
const MAX_REDIRECTS = 5;
/** How long a registry may take to answer once a streamed body has been sent in full. */
const RESPONSE_TIMEOUT_MS = 300_000;
/** How long BlobStream.done may take to settle once its stream has ended. */
const DONE_TIMEOUT_MS = 60_000;

/** Awaits p, or fails naming who did not answer. */
function settle<T>(p: Promise<T>, ms: number, who: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_r, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new RegistryError(
            ErrorCodes.INVALID_ARGUMENT,
            `${who} did not report its digest (BlobStream.done) within ${ms / 1000} s of its end`,
          ),
        ),
      ms,
    );
    timer.unref();
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

export const MANIFEST_ACCEPT: readonly string[] = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
  'application/vnd.docker.distribution.manifest.v1+json',
];

type Headers = Record<string, string>;

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
  url: URL;
}

interface RegistryState {
  /** The challenge of GET /v2/ (undefined: no auth needed). */
  challenge?: Promise<Challenge | undefined>;
}

interface Token {
  token: string;
  expiresAt: number;
  obtainedAt: number;
}

interface Session {
  location: URL;
  minChunk: number;
}

function header(res: { headers: Res['headers'] }, name: string): string | undefined {
  const v = res.headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

async function readText(res: Res, limit = 64 * 1024): Promise<string> {
  let out = '';
  try {
    for await (const chunk of res.body) {
      if (out.length < limit) out += (chunk as Buffer).toString('utf8');
    }
  } catch {
    // a broken error body is not worth failing over
  }
  return out.slice(0, limit);
}

async function dump(res: Res): Promise<void> {
  try {
    await res.body.dump();
  } catch {
    // ignore
  }
}

/** Retry-After: seconds or an HTTP date → ms; undefined if absent or unusable. */
export function parseRetryAfter(v: string | undefined, now = Date.now()): number | undefined {
  if (!v) return undefined;
  const t = v.trim();
  if (/^\d+$/.test(t)) return Number(t) * 1000;
  const d = Date.parse(t);
  if (Number.isNaN(d)) return undefined;
  return Math.max(0, d - now);
}

/** "0-1234" → 1235 (bytes held). "0-0" is read as 0 bytes. undefined if absent/invalid. */
export function parseRangeEnd(v: string | undefined): number | undefined {
  if (!v) return undefined;
  const m = /^(?:bytes=)?0-(\d+)$/.exec(v.trim());
  if (!m) return undefined;
  const end = Number(m[1]);
  return end === 0 ? 0 : end + 1;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError());
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(abortError());
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function abortError(): RegistryError {
  return new RegistryError(ErrorCodes.ABORTED, 'operation aborted');
}

function effectiveHostPort(url: URL): string {
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  return `${url.hostname.toLowerCase()}:${port}`;
}

export class RegistryClient {
  private readonly allow: readonly string[];
  private readonly insecure: readonly string[];
  private readonly agent: Agent;
  private readonly creds: CredentialStore;
  private readonly dockerConfigPath: string;
  private readonly attempts: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly maxRetryAfterMs: number;
  private readonly userAgent: string;
  private readonly log?: Logger;
  private readonly onRetry?: (info: RetryInfo) => void;
  private readonly registries = new Map<string, RegistryState>();
  private readonly tokens = new Map<string, Token>();
  /** Token requests in flight, so concurrent callers share one. */
  private readonly tokenFetches = new Map<string, Promise<Token>>();

  constructor(opts: RegistryClientOptions) {
    if (!opts || !Array.isArray(opts.allow)) {
      throw new RegistryError(
        ErrorCodes.INVALID_ARGUMENT,
        'RegistryClient needs an allow list (array of host[:port])',
      );
    }
    this.allow = [...opts.allow];
    this.insecure = [...(opts.insecure ?? DEFAULT_INSECURE)];
    const attempts = opts.retry?.attempts ?? 5;
    if (!Number.isInteger(attempts) || attempts < 1) {
      throw new RegistryError(
        ErrorCodes.INVALID_ARGUMENT,
        `retry.attempts must be an integer ≥ 1, got ${attempts}`,
      );
    }
    this.attempts = attempts;
    this.baseDelayMs = opts.retry?.baseDelayMs ?? 250;
    this.maxDelayMs = opts.retry?.maxDelayMs ?? 15_000;
    this.maxRetryAfterMs = opts.maxRetryAfterMs ?? 60_000;
    this.userAgent = opts.userAgent ?? 'ferry-registry-client/0.1';
    this.log = opts.logger;
    this.onRetry = opts.onRetry;
    let ca: string[] | undefined;
    if (opts.caFile) {
      let pem: string;
      try {
        pem = readFileSync(opts.caFile, 'utf8');
      } catch (e) {
        throw new RegistryError(
          ErrorCodes.INVALID_ARGUMENT,
          `cannot read CA file ${opts.caFile}: ${(e as Error).message}`,
        );
      }
      if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
        throw new RegistryError(
          ErrorCodes.INVALID_ARGUMENT,
          `CA file ${opts.caFile} holds no PEM certificate`,
        );
      }
      ca = [...rootCertificates, pem];
    }
    this.agent = new Agent({
      connections: opts.connections ?? 8,
      pipelining: 1,
      ...(ca ? { connect: { ca } } : {}),
    });
    this.dockerConfigPath = opts.dockerConfigPath ?? defaultDockerConfigPath();
    this.creds = new CredentialStore(this.dockerConfigPath);
  }

  async close(): Promise<void> {
    await this.agent.close();
  }

  // ---------------------------------------------------------------- hosts

  /** Normalises a registry host and checks it against the allowlist (before any connection). */
  private checkRegistry(registry: string): string {
    let host: string;
    try {
      host = normalizeHost(registry);
    } catch (e) {
      throw e instanceof RegistryError
        ? e
        : new RegistryError(ErrorCodes.INVALID_ARGUMENT, String(e));
    }
    if (!isAllowed(host, this.allow)) {
      throw new RegistryError(
        ErrorCodes.REGISTRY_NOT_ALLOWED,
        `registry ${host} is not on the allowlist (FERRY_REGISTRY_ALLOW: ${this.allow.join(', ') || 'empty'})`,
        { registry: host },
      );
    }
    return host;
  }

  private checkRepo(repo: RepoRef): { reg: string; name: string } {
    if (!repo || typeof repo.repository !== 'string') {
      throw new RegistryError(
        ErrorCodes.INVALID_ARGUMENT,
        'repository reference needs registry and repository',
      );
    }
    const reg = this.checkRegistry(repo.registry);
    validateRepository(repo.repository);
    return { reg, name: repo.repository };
  }

  /** The host requests go to: docker.io is served by registry-1.docker.io. */
  private endpointHost(reg: string): string {
    return reg === DOCKER_HUB ? 'registry-1.docker.io' : reg;
  }

  private baseUrl(reg: string): URL {
    const host = this.endpointHost(reg);
    const scheme = isInsecure(host, this.insecure) ? 'http' : 'https';
    return new URL(`${scheme}://${host}/`);
  }

  private sameOrigin(reg: string, url: URL): boolean {
    return effectiveHostPort(url) === effectiveHostPort(this.baseUrl(reg));
  }

  /**
   * Resolves a Location (relative or absolute) against the URL it came from and
   * refuses it if it leaves the registry's host for one that is not allowed, or
   * drops to plain HTTP for a host that is not insecure.
   */
  private resolveLocation(reg: string, base: URL, loc: string | undefined, what: string): URL {
    if (!loc) {
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `${what}: response has no Location header`,
        { registry: reg },
      );
    }
    let url: URL;
    try {
      url = new URL(loc, base);
    } catch {
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `${what}: Location "${loc}" is not a URL`,
        { registry: reg },
      );
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new RegistryError(
        ErrorCodes.REDIRECT_REFUSED,
        `${what}: Location scheme ${url.protocol} refused`,
        { registry: reg },
      );
    }
    if (url.username || url.password) {
      throw new RegistryError(
        ErrorCodes.REDIRECT_REFUSED,
        `${what}: Location with credentials refused`,
        { registry: reg },
      );
    }
    const target = normalizeHost(url.host);
    if (!this.sameOrigin(reg, url) && !isAllowed(target, this.allow)) {
      throw new RegistryError(
        ErrorCodes.REDIRECT_REFUSED,
        `${what}: ${reg} sent us to ${target}, which is not on the allowlist`,
        { registry: reg },
      );
    }
    if (url.protocol === 'http:' && !isInsecure(target, this.insecure)) {
      throw new RegistryError(
        ErrorCodes.REDIRECT_REFUSED,
        `${what}: Location ${target} over plain HTTP refused (not an insecure registry)`,
        { registry: reg },
      );
    }
    return url;
  }

  // ---------------------------------------------------------------- transport

  /** One HTTP exchange. Credentials are attached only when url is on the registry's own host. */
  private async exchange(
    reg: string,
    method: Dispatcher.HttpMethod,
    url: URL,
    opts: {
      headers?: Headers;
      body?: Dispatcher.DispatchOptions['body'];
      auth?: string;
      signal?: AbortSignal;
      what: string;
      /** 0 disables undici's timer (a streamed body may take longer than any fixed limit). */
      headersTimeout?: number;
    },
  ): Promise<Res> {
    const headers: Headers = { 'user-agent': this.userAgent, ...(opts.headers ?? {}) };
    if (opts.auth && this.sameOrigin(reg, url)) headers.authorization = opts.auth;
    try {
      const r = await this.agent.request({
        origin: url.origin,
        path: url.pathname + url.search,
        method,
        headers,
        body: opts.body ?? null,
        signal: opts.signal,
        ...(opts.headersTimeout !== undefined ? { headersTimeout: opts.headersTimeout } : {}),
      });
      return { status: r.statusCode, headers: r.headers, body: r.body, url };
    } catch (e) {
      throw classifyError(e, reg, opts.what);
    }
  }

  private backoffMs(attempt: number, err: RegistryError): number {
    if (err.retryAfterMs !== undefined) return err.retryAfterMs;
    const exp = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** attempt);
    return Math.round(exp / 2 + Math.random() * (exp / 2));
  }

  /** Sleeps before retry number attempt+1, or rethrows when the error is permanent or attempts are spent. */
  private async backoff(
    reg: string,
    what: string,
    attempt: number,
    err: unknown,
    signal?: AbortSignal,
  ): Promise<void> {
    if (!(err instanceof RegistryError) || !err.transient || attempt + 1 >= this.attempts)
      throw err;
    if (err.retryAfterMs !== undefined && err.retryAfterMs > this.maxRetryAfterMs) throw err;
    const delayMs = this.backoffMs(attempt, err);
    this.log?.warn('registry request failed; retrying', {
      registry: reg,
      what,
      attempt: attempt + 1,
      delayMs,
      code: err.code,
      status: err.status,
    });
    this.onRetry?.({ registry: reg, what, attempt: attempt + 1, delayMs, error: err });
    await sleep(delayMs, signal);
  }

  private async errorOf(
    reg: string,
    res: Res,
    what: string,
    notFound?: ErrorCode,
  ): Promise<RegistryError> {
    const text = await readText(res);
    const err = errorFromResponse(res.status, text, {
      registry: reg,
      what,
      notFound,
      retryAfterMs: parseRetryAfter(header(res, 'retry-after')),
    });
    if (err.code !== ErrorCodes.REGISTRY_UNAUTHORIZED || !this.sameOrigin(reg, res.url)) return err;
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

  /**
   * A request whose body (none or a Buffer) can be sent again: retries transient
   * failures with backoff, refreshes credentials once on a 401, follows
   * redirects by hand (GET/HEAD only) to allowed hosts. Returns the response
   * for an `ok` status with its body unread; everything else becomes an error.
   */
  private async call(
    reg: string,
    method: Dispatcher.HttpMethod,
    pathOrUrl: string | URL,
    opts: {
      scope: string[];
      ok: number[];
      what: string;
      headers?: Headers;
      body?: Buffer;
      notFound?: ErrorCode;
      signal?: AbortSignal;
    },
  ): Promise<Res> {
    let url = typeof pathOrUrl === 'string' ? new URL(pathOrUrl, this.baseUrl(reg)) : pathOrUrl;
    let refreshed = false;
    let redirects = 0;
    for (let attempt = 0; ;) {
      try {
        const auth = await this.authorization(reg, opts.scope, false, opts.signal);
        const res = await this.exchange(reg, method, url, {
          headers: opts.headers,
          body: opts.body,
          auth,
          signal: opts.signal,
          what: opts.what,
        });
        if (opts.ok.includes(res.status)) return res;
        if (res.status === 401 && !refreshed && this.sameOrigin(reg, url)) {
          refreshed = true;
          await dump(res);
          this.onUnauthorized(reg, res, opts.scope);
          continue;
        }
        if ([301, 302, 303, 307, 308].includes(res.status)) {
          await dump(res);
          if ((method !== 'GET' && method !== 'HEAD') || ++redirects > MAX_REDIRECTS) {
            throw new RegistryError(
              ErrorCodes.REGISTRY_PROTOCOL,
              `${opts.what}: unexpected redirect (HTTP ${res.status}) ${redirects > MAX_REDIRECTS ? '— too many' : `for ${method}`}`,
              { status: res.status, registry: reg },
            );
          }
          url = this.resolveLocation(reg, url, header(res, 'location'), opts.what);
          continue;
        }
        throw await this.errorOf(reg, res, opts.what, opts.notFound);
      } catch (e) {
        await this.backoff(reg, opts.what, attempt, e, opts.signal);
        attempt++;
      }
    }
  }

  // ---------------------------------------------------------------- auth

  private state(reg: string): RegistryState {
    let s = this.registries.get(reg);
    if (!s) {
      s = {};
      this.registries.set(reg, s);
    }
    return s;
  }

  /** GET /v2/ without credentials: no challenge (200) or the registry's challenge (401). */
  private async probe(reg: string, signal?: AbortSignal): Promise<Challenge | undefined> {
    const what = `ping ${reg}`;
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await this.exchange(reg, 'GET', new URL('/v2/', this.baseUrl(reg)), {
          what,
          signal,
        });
        if (res.status === 200) {
          await dump(res);
          return undefined;
        }
        if (res.status === 401) {
          await dump(res);
          return this.pickChallenge(reg, res);
        }
        const err = await this.errorOf(reg, res, what);
        if (
          err.code === ErrorCodes.REPOSITORY_NOT_FOUND ||
          err.code === ErrorCodes.REGISTRY_PROTOCOL
        ) {
          throw new RegistryError(
            ErrorCodes.REGISTRY_PROTOCOL,
            `${what}: GET /v2/ answered HTTP ${res.status}; is ${reg} an OCI / Docker v2 registry?`,
            { status: res.status, registry: reg },
          );
        }
        throw err;
      } catch (e) {
        await this.backoff(reg, what, attempt, e, signal);
      }
    }
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

  private challenge(reg: string, signal?: AbortSignal): Promise<Challenge | undefined> {
    const st = this.state(reg);
    if (!st.challenge) {
      const p = this.probe(reg, signal);
      st.challenge = p;
      p.catch(() => {
        if (st.challenge === p) st.challenge = undefined;
      });
    }
    return st.challenge;
  }

  /** A 401 on the registry's own host: take its challenge and drop cached tokens for the scope. */
  private onUnauthorized(reg: string, res: Res, scope: string[]): void {
    let ch: Challenge | undefined;
    try {
      ch = this.pickChallenge(reg, res);
    } catch {
      ch = undefined;
    }
    if (ch) {
      const { scope: _s, error: _e, ...params } = ch.params;
      this.state(reg).challenge = Promise.resolve({ scheme: ch.scheme, params });
    }
    this.tokens.delete(this.tokenKey(reg, scope));
    this.tokens.delete(this.tokenKey(reg, this.widen(scope)));
  }

  private tokenKey(reg: string, scope: string[]): string {
    return `${reg}|${[...scope].sort().join(' ')}`;
  }

  /** A pull-only scope on one repository is covered by a push,pull token for it. */
  private widen(scope: string[]): string[] {
    return scope.map((s) => s.replace(/:pull$/, ':pull,push'));
  }

  private async credentialsFor(reg: string): Promise<Credentials | undefined> {
    return this.creds.get(reg);
  }

  /** The Authorization header value for a request on reg with scope, or undefined. */
  private async authorization(
    reg: string,
    scope: string[],
    forceNew = false,
    signal?: AbortSignal,
  ): Promise<string | undefined> {
    const ch = await this.challenge(reg, signal);
    if (!ch) return undefined;
    if (ch.scheme === 'basic') {
      const c = await this.credentialsFor(reg);
      if (!c || c.username === undefined || c.password === undefined) return undefined;
      return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
    }
    const now = Date.now();
    if (!forceNew) {
      for (const key of [this.tokenKey(reg, scope), this.tokenKey(reg, this.widen(scope))]) {
        const t = this.tokens.get(key);
        if (t && now < t.expiresAt) return `Bearer ${t.token}`;
      }
    }
    const key = this.tokenKey(reg, scope);
    let pending = this.tokenFetches.get(key);
    if (!pending) {
      pending = this.fetchToken(reg, ch, scope, signal).finally(() =>
        this.tokenFetches.delete(key),
      );
      this.tokenFetches.set(key, pending);
    }
    const t = await pending;
    this.tokens.set(key, t);
    return `Bearer ${t.token}`;
  }

  private async fetchToken(
    reg: string,
    ch: Challenge,
    scope: string[],
    signal?: AbortSignal,
  ): Promise<Token> {
    const what = `token for ${reg}`;
    const realmRaw = ch.params.realm;
    if (!realmRaw) {
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `${reg}: Bearer challenge without a realm`,
        { registry: reg },
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
    const realmHost = normalizeHost(realm.host);
    if (!isAllowed(realmHost, this.allow)) {
      throw new RegistryError(
        ErrorCodes.REGISTRY_NOT_ALLOWED,
        `${reg}: token realm host ${realmHost} is not on the allowlist; refusing to send credentials there`,
        { registry: reg },
      );
    }
    if (
      realm.protocol !== 'https:' &&
      !(realm.protocol === 'http:' && isInsecure(realmHost, this.insecure))
    ) {
      throw new RegistryError(
        ErrorCodes.REDIRECT_REFUSED,
        `${reg}: token realm ${realmHost} over ${realm.protocol} refused (not an insecure host)`,
        { registry: reg },
      );
    }
    const creds = await this.credentialsFor(reg);
    const headers: Headers = { accept: 'application/json' };
    let method: Dispatcher.HttpMethod = 'GET';
    let body: string | undefined;
    const url = new URL(realm.toString());
    if (creds?.identityToken) {
      method = 'POST';
      const form = new URLSearchParams({
        grant_type: 'refresh_token',
        refresh_token: creds.identityToken,
        client_id: 'ferry',
        ...(ch.params.service ? { service: ch.params.service } : {}),
      });
      if (scope.length) form.set('scope', scope.join(' '));
      body = form.toString();
      headers['content-type'] = 'application/x-www-form-urlencoded';
    } else {
      if (ch.params.service) url.searchParams.set('service', ch.params.service);
      for (const s of scope) url.searchParams.append('scope', s);
      if (creds?.username !== undefined && creds.password !== undefined) {
        headers.authorization = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
      }
    }
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await this.agent.request({
          origin: url.origin,
          path: url.pathname + url.search,
          method,
          headers: { 'user-agent': this.userAgent, ...headers },
          body: body ?? null,
          signal,
        });
        const res: Res = { status: r.statusCode, headers: r.headers, body: r.body, url };
        if (res.status !== 200) {
          const err = await this.errorOf(reg, res, what);
          if (res.status === 401 || res.status === 403) {
            throw new RegistryError(
              ErrorCodes.REGISTRY_UNAUTHORIZED,
              `${what}: the token server refused ${creds ? 'the configured credentials' : 'anonymous access (no credentials for this host in the docker config)'} (HTTP ${res.status})`,
              { status: res.status, registry: reg, errors: err.errors },
            );
          }
          throw err;
        }
        const text = await readText(res, 1024 * 1024);
        let parsed: {
          token?: string;
          access_token?: string;
          expires_in?: number;
          issued_at?: string;
        };
        try {
          parsed = JSON.parse(text) as typeof parsed;
        } catch {
          throw new RegistryError(
            ErrorCodes.REGISTRY_PROTOCOL,
            `${what}: token response is not JSON`,
            { registry: reg },
          );
        }
        const token = parsed.token || parsed.access_token;
        if (!token) {
          throw new RegistryError(
            ErrorCodes.REGISTRY_PROTOCOL,
            `${what}: token response has no token`,
            { registry: reg },
          );
        }
        const ttlMs =
          (typeof parsed.expires_in === 'number' && parsed.expires_in > 0
            ? parsed.expires_in
            : 60) * 1000;
        const issued = parsed.issued_at ? Date.parse(parsed.issued_at) : NaN;
        const start = Number.isNaN(issued) ? Date.now() : Math.min(issued, Date.now());
        const margin = Math.min(10_000, ttlMs / 4);
        return { token, obtainedAt: Date.now(), expiresAt: start + ttlMs - margin };
      } catch (e) {
        await this.backoff(reg, what, attempt, classifyError(e, reg, what), signal);
      }
    }
  }

  // ---------------------------------------------------------------- public: ping

  /**
   * GET /v2/, and when the registry asks for credentials, authenticates once
   * (Basic, or a token without scope) to prove they work.
   */
  async ping(registry: string): Promise<void> {
    const reg = this.checkRegistry(registry);
    this.state(reg).challenge = undefined;
    const ch = await this.challenge(reg);
    if (!ch) return;
    const res = await this.call(reg, 'GET', '/v2/', { scope: [], ok: [200], what: `ping ${reg}` });
    await dump(res);
  }

  // ---------------------------------------------------------------- public: blobs

  private pull(name: string): string[] {
    return [`repository:${name}:pull`];
  }

  private push(name: string): string[] {
    return [`repository:${name}:pull,push`];
  }

  async blobExists(repo: RepoRef, digest: string): Promise<{ size: number } | undefined> {
    const { reg, name } = this.checkRepo(repo);
    validateDigest(digest);
    const res = await this.call(reg, 'HEAD', `/v2/${name}/blobs/${digest}`, {
      scope: this.pull(name),
      ok: [200, 404],
      what: `HEAD blob ${digest} in ${reg}/${name}`,
    });
    await dump(res);
    if (res.status === 404) return undefined;
    const len = Number(header(res, 'content-length'));
    return { size: Number.isFinite(len) ? len : -1 };
  }

  /** GET a blob (following redirects to allowed hosts). The caller must consume or destroy the stream. */
  async getBlob(
    repo: RepoRef,
    digest: string,
    signal?: AbortSignal,
  ): Promise<{ stream: Readable; size?: number }> {
    const { reg, name } = this.checkRepo(repo);
    validateDigest(digest);
    const res = await this.call(reg, 'GET', `/v2/${name}/blobs/${digest}`, {
      scope: this.pull(name),
      ok: [200],
      what: `GET blob ${digest} from ${reg}/${name}`,
      notFound: ErrorCodes.BLOB_UNKNOWN,
      signal,
    });
    const len = Number(header(res, 'content-length'));
    return {
      stream: res.body as unknown as Readable,
      ...(Number.isFinite(len) ? { size: len } : {}),
    };
  }

  /** DELETE a blob (registries with deletes enabled). true if deleted, false if it was not there. */
  async deleteBlob(repo: RepoRef, digest: string): Promise<boolean> {
    const { reg, name } = this.checkRepo(repo);
    validateDigest(digest);
    const res = await this.call(reg, 'DELETE', `/v2/${name}/blobs/${digest}`, {
      scope: [`repository:${name}:delete`, ...this.push(name)],
      ok: [202, 404],
      what: `DELETE blob ${digest} in ${reg}/${name}`,
    });
    await dump(res);
    return res.status === 202;
  }

  /** POST an upload session, optionally as a mount. */
  private async openSession(
    reg: string,
    name: string,
    scope: string[],
    signal: AbortSignal | undefined,
    mount?: { digest: string; from: string },
  ): Promise<{ mounted: true } | { mounted: false; session: Session }> {
    const path =
      `/v2/${name}/blobs/uploads/` +
      (mount
        ? `?mount=${encodeURIComponent(mount.digest)}&from=${encodeURIComponent(mount.from)}`
        : '');
    const what = mount
      ? `mount ${mount.digest} from ${mount.from} into ${reg}/${name}`
      : `start upload to ${reg}/${name}`;
    const res = await this.call(reg, 'POST', path, {
      scope,
      ok: [201, 202],
      what,
      headers: { 'content-length': '0' },
      signal,
    });
    await dump(res);
    if (res.status === 201) {
      if (!mount) {
        throw new RegistryError(
          ErrorCodes.REGISTRY_PROTOCOL,
          `${what}: 201 to a plain upload POST`,
          { registry: reg },
        );
      }
      return { mounted: true };
    }
    const location = this.resolveLocation(reg, res.url, header(res, 'location'), what);
    const min = Number(header(res, 'oci-chunk-min-length'));
    return {
      mounted: false,
      session: { location, minChunk: Number.isFinite(min) && min > 0 ? min : 0 },
    };
  }

  /** Cross-repository mount. true on 201; on 202 the opened session is cancelled and false returned. */
  async mountBlob(repo: RepoRef, digest: string, from: string): Promise<boolean> {
    const { reg, name } = this.checkRepo(repo);
    validateDigest(digest);
    validateRepository(from);
    const scope = [...this.push(name), ...this.pull(from)];
    const r = await this.openSession(reg, name, scope, undefined, { digest, from });
    if (r.mounted) return true;
    await this.cancelSession(reg, r.session.location, scope);
    return false;
  }

  private async cancelSession(reg: string, location: URL, scope: string[]): Promise<void> {
    try {
      const res = await this.exchange(reg, 'DELETE', location, {
        auth: await this.authorization(reg, scope),
        what: 'cancel upload',
      });
      await dump(res);
    } catch (e) {
      this.log?.debug('cancelling an upload session failed', {
        registry: reg,
        error: (e as Error).message,
      });
    }
  }

  /** DELETE an upload session (a Location as the registry gave it). A session already gone is fine. */
  async cancelUpload(repo: RepoRef, location: string): Promise<void> {
    const { reg, name } = this.checkRepo(repo);
    const url = this.resolveLocation(reg, this.baseUrl(reg), location, 'cancel upload');
    const res = await this.call(reg, 'DELETE', url, {
      scope: this.push(name),
      ok: [200, 202, 204, 404],
      what: `cancel upload in ${reg}/${name}`,
    });
    await dump(res);
  }

  /** GET the session's status: bytes held (from Range), or 'lost' when the registry no longer knows it. */
  private async sessionOffset(
    reg: string,
    session: Session,
    scope: string[],
    signal?: AbortSignal,
  ): Promise<number | 'lost'> {
    const what = 'upload status';
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await this.exchange(reg, 'GET', session.location, {
          auth: await this.authorization(reg, scope, false, signal),
          what,
          signal,
        });
        if (res.status === 204 || res.status === 200) {
          await dump(res);
          const loc = header(res, 'location');
          if (loc) session.location = this.resolveLocation(reg, session.location, loc, what);
          return parseRangeEnd(header(res, 'range')) ?? 0;
        }
        const err = await this.errorOf(reg, res, what, ErrorCodes.UPLOAD_SESSION_LOST);
        if (res.status === 404 || err.code === ErrorCodes.UPLOAD_SESSION_LOST) return 'lost';
        if (res.status === 401) {
          this.onUnauthorized(reg, res, scope);
          if (attempt === 0) continue;
        }
        throw err;
      } catch (e) {
        await this.backoff(reg, what, attempt, e, signal);
      }
    }
  }

  /**
   * Uploads a blob: monolithic PUT, one streamed PATCH, or Content-Range
   * chunks, then PUT ?digest= with the digest computed from the bytes. Resumes
   * from the offset the registry reports; opens a fresh session when the old
   * one is gone; retries transient failures with backoff.
   */
  async uploadBlob(
    repo: RepoRef,
    source: BlobSource,
    opts: UploadOptions = {},
  ): Promise<UploadResult> {
    const { reg, name } = this.checkRepo(repo);
    const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    if (!Number.isInteger(chunkSize) || chunkSize < 0) {
      throw new RegistryError(
        ErrorCodes.INVALID_ARGUMENT,
        `chunkSize must be an integer ≥ 0, got ${chunkSize}`,
      );
    }
    if (
      opts.monolithic &&
      (source.size === undefined || !Number.isInteger(source.size) || source.size < 0)
    ) {
      throw new RegistryError(ErrorCodes.INVALID_ARGUMENT, 'a monolithic upload needs source.size');
    }
    if (source.digest !== undefined) validateDigest(source.digest);
    const signal = opts.signal;
    const mountFrom = opts.mountFrom ?? [];
    for (const f of mountFrom) validateRepository(f);
    const scope = [
      ...this.push(name),
      ...(source.digest ? mountFrom.map((f) => `repository:${f}:pull`) : []),
    ];
    const result: UploadResult = { digest: '', size: 0, bytesSent: 0, restarts: 0, resumes: 0 };

    let session: Session | undefined;
    let startOffset = 0;
    if (opts.resumeSession) {
      const location = this.resolveLocation(
        reg,
        this.baseUrl(reg),
        opts.resumeSession,
        'resume upload',
      );
      const earlier: Session = { location, minChunk: 0 };
      const off = await this.sessionOffset(reg, earlier, scope, signal);
      if (off === 'lost') {
        result.restarts++;
        this.log?.info('the earlier upload session is gone; starting a fresh one', {
          registry: reg,
          repository: name,
        });
      } else {
        session = earlier;
        startOffset = off;
        if (off > 0) result.resumes++;
        this.log?.info('resuming an earlier upload session from the offset the registry reports', {
          registry: reg,
          repository: name,
          offset: off,
        });
      }
    }
    if (!session && source.digest) {
      for (const [i, from] of mountFrom.entries()) {
        const r = await this.openSession(reg, name, scope, signal, { digest: source.digest, from });
        if (r.mounted) {
          const have = await this.blobExists(repo, source.digest).catch(() => undefined);
          return {
            ...result,
            digest: source.digest,
            size: have?.size ?? source.size ?? -1,
            mountedFrom: from,
          };
        }
        if (i < mountFrom.length - 1) await this.cancelSession(reg, r.session.location, scope);
        else session = r.session;
      }
    }
    if (!session)
      session = ((await this.openSession(reg, name, scope, signal)) as { session: Session })
        .session;

    const up = new Upload(
      this.uploadOps(),
      reg,
      name,
      scope,
      source,
      opts,
      result,
      session,
      chunkSize,
    );
    return up.run(startOffset);
  }

  /** The private operations an Upload needs (kept off the public surface). */
  private uploadOps(): UploadOps {
    return {
      exchange: this.exchange.bind(this),
      authorization: this.authorization.bind(this),
      errorOf: this.errorOf.bind(this),
      resolveLocation: this.resolveLocation.bind(this),
      backoff: this.backoff.bind(this),
      onUnauthorized: this.onUnauthorized.bind(this),
      openSession: this.openSession.bind(this),
      cancelSession: this.cancelSession.bind(this),
      sessionOffset: this.sessionOffset.bind(this),
      attempts: this.attempts,
      log: this.log,
    };
  }

  // ---------------------------------------------------------------- public: manifests

  /**
   * PUT a manifest by tag or digest. Checks the registry's Docker-Content-Digest
   * against the digest of the bytes sent (for schema1: of the canonical payload).
   */
  async putManifest(
    repo: RepoRef,
    reference: string,
    body: Buffer,
    mediaType: string,
  ): Promise<{ digest: string }> {
    const { reg, name } = this.checkRepo(repo);
    if (!Buffer.isBuffer(body) || body.length === 0) {
      throw new RegistryError(ErrorCodes.INVALID_ARGUMENT, 'putManifest needs the manifest bytes');
    }
    if (!mediaType)
      throw new RegistryError(ErrorCodes.INVALID_ARGUMENT, 'putManifest needs a media type');
    const expected = manifestDigest(body, mediaType);
    if (reference.includes(':')) {
      validateDigest(reference);
      if (reference !== expected) {
        throw new RegistryError(
          ErrorCodes.DIGEST_MISMATCH,
          `manifest PUT by digest ${reference}, but its bytes${isSchema1(mediaType) ? ' (schema1 payload)' : ''} hash to ${expected}`,
          { registry: reg },
        );
      }
    } else {
      validateTag(reference);
    }
    const what = `PUT manifest ${reg}/${name}:${reference}`;
    const res = await this.call(reg, 'PUT', `/v2/${name}/manifests/${reference}`, {
      scope: this.push(name),
      ok: [200, 201, 202],
      what,
      headers: { 'content-type': mediaType, 'content-length': String(body.length) },
      body,
    });
    await dump(res);
    const got = header(res, 'docker-content-digest');
    if (got !== undefined && got !== expected) {
      throw new RegistryError(
        ErrorCodes.DIGEST_MISMATCH,
        `${what}: registry says its digest is ${got}, but the bytes sent${isSchema1(mediaType) ? ' (schema1 payload)' : ''} hash to ${expected}`,
        { registry: reg, status: res.status },
      );
    }
    return { digest: expected };
  }

  async getManifest(
    repo: RepoRef,
    reference: string,
    accept: string[] = [...MANIFEST_ACCEPT],
  ): Promise<{ body: Buffer; mediaType: string; digest: string }> {
    const { reg, name } = this.checkRepo(repo);
    this.checkManifestRef(reference);
    const what = `GET manifest ${reg}/${name}:${reference}`;
    const res = await this.call(reg, 'GET', `/v2/${name}/manifests/${reference}`, {
      scope: this.pull(name),
      ok: [200],
      what,
      headers: { accept: accept.join(', ') },
      notFound: ErrorCodes.MANIFEST_UNKNOWN,
    });
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of res.body) {
      size += (c as Buffer).length;
      if (size > MAX_MANIFEST_BYTES) {
        res.body.destroy();
        throw new RegistryError(
          ErrorCodes.MANIFEST_INVALID,
          `${what}: manifest larger than ${MAX_MANIFEST_BYTES} bytes`,
          { registry: reg },
        );
      }
      chunks.push(c as Buffer);
    }
    const body = Buffer.concat(chunks);
    const mediaType =
      (header(res, 'content-type') ?? '').split(';')[0]!.trim() || this.sniffMediaType(body);
    const digest = manifestDigest(body, mediaType);
    if (reference.includes(':') && digest !== reference) {
      throw new RegistryError(
        ErrorCodes.DIGEST_MISMATCH,
        `${what}: the bytes received hash to ${digest}`,
        { registry: reg },
      );
    }
    return { body, mediaType, digest };
  }

  private sniffMediaType(body: Buffer): string {
    try {
      const j = JSON.parse(body.toString('utf8')) as {
        mediaType?: string;
        schemaVersion?: number;
        signatures?: unknown;
      };
      if (j.mediaType) return j.mediaType;
      if (j.schemaVersion === 1)
        return j.signatures
          ? SCHEMA1_SIGNED
          : 'application/vnd.docker.distribution.manifest.v1+json';
    } catch {
      // fall through
    }
    return 'application/octet-stream';
  }

  private checkManifestRef(reference: string): void {
    if (typeof reference !== 'string' || !reference) {
      throw new RegistryError(
        ErrorCodes.BAD_REFERENCE,
        'manifest reference (tag or digest) is empty',
      );
    }
    if (reference.includes(':')) validateDigest(reference);
    else validateTag(reference);
  }

  async headManifest(
    repo: RepoRef,
    reference: string,
    accept: string[] = [...MANIFEST_ACCEPT],
  ): Promise<{ digest: string; size: number; mediaType: string } | undefined> {
    const { reg, name } = this.checkRepo(repo);
    this.checkManifestRef(reference);
    const res = await this.call(reg, 'HEAD', `/v2/${name}/manifests/${reference}`, {
      scope: this.pull(name),
      ok: [200, 404],
      what: `HEAD manifest ${reg}/${name}:${reference}`,
      headers: { accept: accept.join(', ') },
    });
    await dump(res);
    if (res.status === 404) return undefined;
    const digest =
      header(res, 'docker-content-digest') ?? (reference.includes(':') ? reference : '');
    return {
      digest,
      size: Number(header(res, 'content-length') ?? -1),
      mediaType: (header(res, 'content-type') ?? '').split(';')[0]!.trim(),
    };
  }

  /** All tags of a repository, following Link pagination on the same host. */
  async listTags(repo: RepoRef): Promise<string[]> {
    const { reg, name } = this.checkRepo(repo);
    const tags: string[] = [];
    let url: URL | undefined = new URL(`/v2/${name}/tags/list`, this.baseUrl(reg));
    for (let page = 0; url && page < 1000; page++) {
      const res: Res = await this.call(reg, 'GET', url, {
        scope: this.pull(name),
        ok: [200],
        what: `list tags of ${reg}/${name}`,
      });
      const text = await readText(res, 16 * 1024 * 1024);
      let parsed: { tags?: string[] | null };
      try {
        parsed = JSON.parse(text) as typeof parsed;
      } catch {
        throw new RegistryError(
          ErrorCodes.REGISTRY_PROTOCOL,
          `tag list of ${reg}/${name} is not JSON`,
          { registry: reg },
        );
      }
      tags.push(...(parsed.tags ?? []));
      const link = header(res, 'link');
      const m = link ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link) : null;
      url = m ? this.resolveLocation(reg, res.url, m[1], 'tag list pagination') : undefined;
    }
    return tags;
  }
}

const SCHEMA1_SIGNED = 'application/vnd.docker.distribution.manifest.v1+prettyjws';

interface UploadOps {
  exchange: RegistryClient['exchange'];
  authorization: RegistryClient['authorization'];
  errorOf: RegistryClient['errorOf'];
  resolveLocation: RegistryClient['resolveLocation'];
  backoff: RegistryClient['backoff'];
  onUnauthorized: RegistryClient['onUnauthorized'];
  openSession: RegistryClient['openSession'];
  cancelSession: RegistryClient['cancelSession'];
  sessionOffset: RegistryClient['sessionOffset'];
  attempts: number;
  log?: Logger;
}

/** What ended one attempt of the upload loop. */
type Outcome =
  | { kind: 'done'; digest: string; size: number }
  | { kind: 'resume' }
  | { kind: 'restart'; why: string };

/** One blob upload: its session, offset and counters. */
class Upload {
  private offset = 0;
  private failures = 0;
  private failuresAt = -1;
  private digestRestartUsed = false;
  private refreshedAt = -1;
  private sourceError: unknown;
  /** Position in the blob of the last byte handed to the request body. */
  private pos = 0;
  /** The offset the registry should hold after the PATCH in flight. */
  private expected = 0;

  constructor(
    private readonly c: UploadOps,
    private readonly reg: string,
    private readonly name: string,
    private readonly scope: string[],
    private readonly source: BlobSource,
    private readonly opts: UploadOptions,
    private readonly result: UploadResult,
    private session: Session,
    private readonly chunkSize: number,
  ) {}

  private get what(): string {
    return `upload to ${this.reg}/${this.name}`;
  }

  async run(startOffset = 0): Promise<UploadResult> {
    this.offset = startOffset;
    this.opts.onSession?.(this.session.location.toString());
    try {
      for (;;) {
        if (this.opts.signal?.aborted) throw abortError();
        const outcome = await this.attempt();
        if (outcome.kind === 'done') {
          this.result.digest = outcome.digest;
          this.result.size = outcome.size;
          this.opts.onSession?.(undefined);
          return this.result;
        }
        if (outcome.kind === 'restart') await this.restart(outcome.why);
        else {
          const off = await this.c.sessionOffset(
            this.reg,
            this.session,
            this.scope,
            this.opts.signal,
          );
          if (off === 'lost') await this.restart('the registry no longer knows the upload session');
          else {
            this.offset = off;
            this.result.resumes++;
            this.opts.onSession?.(this.session.location.toString());
            this.c.log?.info('resuming upload from the offset the registry reports', {
              registry: this.reg,
              repository: this.name,
              offset: off,
            });
          }
        }
      }
    } catch (e) {
      const keep = this.opts.keepSessionOnFailure && e instanceof RegistryError && e.transient;
      if (!keep) {
        await this.c.cancelSession(this.reg, this.session.location, this.scope);
        this.opts.onSession?.(undefined);
      }
      throw e;
    }
  }

  private async restart(why: string): Promise<void> {
    if (this.result.restarts + 1 >= this.c.attempts + 1) {
      throw new RegistryError(
        ErrorCodes.UPLOAD_SESSION_LOST,
        `${this.what}: gave up after ${this.result.restarts} fresh sessions (${why})`,
        { registry: this.reg },
      );
    }
    this.c.log?.warn('upload session is dead; starting a fresh one', {
      registry: this.reg,
      repository: this.name,
      why,
    });
    await this.c.cancelSession(this.reg, this.session.location, this.scope);
    const r = await this.c.openSession(this.reg, this.name, this.scope, this.opts.signal);
    this.session = (r as { session: Session }).session;
    this.opts.onSession?.(this.session.location.toString());
    this.offset = 0;
    this.result.restarts++;
  }

  /** Decides what a failure means: rethrow (permanent), restart, or resume after backoff. */
  private async onFailure(e: unknown): Promise<Outcome> {
    if (this.sourceError !== undefined) throw this.sourceError;
    const err = classifyError(e, this.reg, this.what);
    if (!(err instanceof RegistryError)) throw err;
    if (err.code === ErrorCodes.ABORTED) throw err;
    if (err.code === ErrorCodes.UPLOAD_SESSION_LOST) return { kind: 'restart', why: err.message };
    if (err.status === 416) {
      // The registry holds a different offset than we thought: ask it, no backoff —
      // but a registry that keeps answering 416 without progress must not loop forever.
      this.countFailure(err);
      return { kind: 'resume' };
    }
    if (err.status === 401 || err.code === ErrorCodes.REGISTRY_UNAUTHORIZED) {
      if (this.refreshedAt === this.offset) throw err;
      this.refreshedAt = this.offset;
      return { kind: 'resume' };
    }
    if (!err.transient) throw err;
    const n = this.countFailure(err);
    await this.c.backoff(this.reg, this.what, n - 1, err, this.opts.signal);
    return { kind: 'resume' };
  }

  /** Counts consecutive failures without progress; throws once the retry budget is spent. */
  private countFailure(err: RegistryError): number {
    if (this.offset > this.failuresAt) this.failures = 0;
    this.failuresAt = this.offset;
    this.failures++;
    if (this.failures >= this.c.attempts) throw err;
    return this.failures;
  }

  private sent(n: number, position: number): void {
    this.result.bytesSent += n;
    this.opts.onProgress?.(this.result.bytesSent, position);
  }

  /** Wraps the source stream: counts bytes (unless the caller does) and remembers a source failure. */
  private counted(bs: BlobStream, start: number, count: boolean): Transform {
    this.pos = start;
    const counter = new Transform({
      transform: (chunk: Buffer, _enc, cb) => {
        this.pos += chunk.length;
        if (count) this.sent(chunk.length, this.pos);
        cb(null, chunk);
      },
    });
    counter.on('error', () => undefined);
    const src = bs.stream as Readable;
    src.on('error', (err: Error) => {
      this.sourceError = err;
      counter.destroy(err);
    });
    counter.on('close', () => {
      if (!src.destroyed) src.destroy();
    });
    src.pipe(counter);
    return counter;
  }

  private async attempt(): Promise<Outcome> {
    let bs: BlobStream | undefined;
    let counter: Transform | undefined;
    this.sourceError = undefined;
    try {
      bs = await this.source.open(this.offset);
      bs.done.catch(() => undefined);
      if (this.opts.monolithic) return await this.monolithic(bs);
      counter = this.counted(bs, this.offset, this.chunkSize === 0);
      if (this.chunkSize === 0) await this.streamed(counter);
      else await this.chunked(counter);
      const { digest, size } = await settle(bs.done, DONE_TIMEOUT_MS, 'the blob source');
      return await this.finish(digest, size);
    } catch (e) {
      if (e instanceof RestartSignal) return { kind: 'restart', why: e.message };
      return await this.onFailure(e);
    } finally {
      counter?.destroy();
      const s = bs?.stream as Readable | undefined;
      if (s && !s.destroyed) s.destroy();
    }
  }

  /**
   * Sends one upload request. A stream body gets no fixed headers timeout (it
   * may take longer than any limit to produce); instead the registry must answer
   * within RESPONSE_TIMEOUT_MS once the last byte went out.
   */
  private async send(
    method: Dispatcher.HttpMethod,
    url: URL,
    body: Dispatcher.DispatchOptions['body'],
    headers: Headers,
    what: string,
  ): Promise<Res> {
    const auth = await this.c.authorization(this.reg, this.scope, false, this.opts.signal);
    const base = {
      headers: { 'content-type': 'application/octet-stream', ...headers },
      body,
      auth,
      what,
    };
    if (!(body instanceof Readable)) {
      return this.c.exchange(this.reg, method, url, { ...base, signal: this.opts.signal });
    }
    const ac = new AbortController();
    const outer = this.opts.signal;
    const onAbort = (): void => ac.abort();
    outer?.addEventListener('abort', onAbort, { once: true });
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    body.once('end', () => {
      timer = setTimeout(() => {
        timedOut = true;
        ac.abort();
      }, RESPONSE_TIMEOUT_MS);
    });
    try {
      return await this.c.exchange(this.reg, method, url, {
        ...base,
        signal: ac.signal,
        headersTimeout: 0,
      });
    } catch (e) {
      if (timedOut) {
        throw new RegistryError(
          ErrorCodes.REGISTRY_UNAVAILABLE,
          `${what}: no response within ${RESPONSE_TIMEOUT_MS / 1000} s after the body was sent`,
          { registry: this.reg },
        );
      }
      if (outer?.aborted) throw abortError();
      throw e;
    } finally {
      if (timer) clearTimeout(timer);
      outer?.removeEventListener('abort', onAbort);
    }
  }

  /** The offset after a successful PATCH: what we expect, unless the registry says otherwise. */
  private afterPatch(reported: number | undefined): void {
    if (
      reported !== undefined &&
      reported !== this.expected &&
      !(reported === 0 && this.expected === 1)
    ) {
      throw new RegistryError(
        ErrorCodes.REGISTRY_PROTOCOL,
        `${this.what}: registry holds ${reported} bytes after the PATCH, expected ${this.expected}`,
        { registry: this.reg, status: 416 },
      );
    }
    this.offset = this.expected;
    if (this.failuresAt < this.offset) this.failures = 0;
  }

  /** One PATCH with the rest of the blob; no Content-Length, so undici sends Transfer-Encoding: chunked. */
  private async streamed(counter: Transform): Promise<void> {
    await this.patchWith(counter, {}, () => this.pos);
  }

  private async patchWith(
    body: Dispatcher.DispatchOptions['body'],
    headers: Headers,
    expectedAfter: () => number,
  ): Promise<void> {
    const what = `PATCH ${this.what}`;
    const res = await this.send('PATCH', this.session.location, body, headers, what);
    if (res.status !== 202 && res.status !== 204) {
      if (res.status === 401) this.c.onUnauthorized(this.reg, res, this.scope);
      throw await this.c.errorOf(this.reg, res, what, ErrorCodes.UPLOAD_SESSION_LOST);
    }
    await dump(res);
    const loc = header(res, 'location');
    if (loc) {
      this.session.location = this.c.resolveLocation(this.reg, this.session.location, loc, what);
      this.opts.onSession?.(this.session.location.toString());
    }
    this.expected = expectedAfter();
    this.afterPatch(parseRangeEnd(header(res, 'range')));
  }

  private async chunked(counter: Transform): Promise<void> {
    const size = Math.max(this.chunkSize, this.session.minChunk);
    let pieces: Buffer[] = [];
    let have = 0;
    const send = async (buf: Buffer): Promise<void> => {
      const start = this.offset;
      this.sent(buf.length, start + buf.length);
      await this.patchWith(
        buf,
        {
          'content-length': String(buf.length),
          'content-range': `${start}-${start + buf.length - 1}`,
        },
        () => start + buf.length,
      );
    };
    for await (const chunk of counter) {
      let c = chunk as Buffer;
      while (have + c.length >= size) {
        const take = size - have;
        pieces.push(c.subarray(0, take));
        c = c.subarray(take);
        const buf = Buffer.concat(pieces);
        pieces = [];
        have = 0;
        await send(buf);
      }
      if (c.length) {
        pieces.push(c);
        have += c.length;
      }
    }
    if (have > 0) await send(Buffer.concat(pieces));
  }

  /** Checks what the source produced, then PUT ?digest=. */
  private async finish(digest: string, size: number): Promise<Outcome> {
    this.checkProduced(digest, size);
    if (this.offset !== size) {
      throw new RestartSignal(`the session holds ${this.offset} bytes but the blob has ${size}`);
    }
    return this.put(digest, size, null, { 'content-length': '0' });
  }

  private checkProduced(digest: string, size: number): void {
    if (this.source.digest !== undefined && this.source.digest !== digest) {
      throw new RegistryError(
        ErrorCodes.DIGEST_MISMATCH,
        `${this.what}: the source states ${this.source.digest} but its bytes hash to ${digest}`,
        { registry: this.reg },
      );
    }
    if (this.source.size !== undefined && this.source.size !== size) {
      throw new RegistryError(
        ErrorCodes.DIGEST_MISMATCH,
        `${this.what}: the source states ${this.source.size} bytes but produced ${size}`,
        { registry: this.reg },
      );
    }
  }

  private async put(
    digest: string,
    size: number,
    body: Dispatcher.DispatchOptions['body'],
    headers: Headers,
  ): Promise<Outcome> {
    const what = `PUT ${this.what}`;
    // Append to the registry's query as it is (its opaque _state stays byte for byte).
    const url = new URL(this.session.location.toString());
    const q = `digest=${encodeURIComponent(digest)}`;
    url.search = url.search && url.search !== '?' ? `${url.search}&${q}` : `?${q}`;
    const res = await this.send('PUT', url, body, headers, what);
    if (res.status !== 201 && res.status !== 204 && res.status !== 200) {
      if (res.status === 401) this.c.onUnauthorized(this.reg, res, this.scope);
      const err = await this.c.errorOf(this.reg, res, what, ErrorCodes.UPLOAD_SESSION_LOST);
      if (err.code === ErrorCodes.DIGEST_MISMATCH) {
        if (this.digestRestartUsed) throw err;
        this.digestRestartUsed = true;
        throw new RestartSignal(`the registry rejected the digest (${err.message})`);
      }
      throw err;
    }
    await dump(res);
    const got = header(res, 'docker-content-digest');
    if (got !== undefined && got !== digest) {
      throw new RegistryError(
        ErrorCodes.DIGEST_MISMATCH,
        `${what}: registry stored the blob as ${got}, but its bytes hash to ${digest}`,
        { registry: this.reg, status: res.status },
      );
    }
    return { kind: 'done', digest, size };
  }

  /** One PUT with the whole body. Needs the digest first: stated by the source, or from a hashing pass. */
  private async monolithic(bs: BlobStream): Promise<Outcome> {
    const size = this.source.size!;
    let digest = this.source.digest;
    if (this.offset !== 0) throw new RestartSignal('a monolithic upload cannot resume');
    if (digest === undefined) {
      // first pass: hash only
      (bs.stream as Readable).resume();
      const first = await bs.done; // the whole stream is read here, so done settles
      this.checkProduced(first.digest, first.size);
      digest = first.digest;
      bs = await this.source.open(0);
      bs.done.catch(() => undefined);
    }
    const counter = this.counted(bs, 0, true);
    try {
      const out = await this.put(digest, size, counter, { 'content-length': String(size) });
      const produced = await settle(bs.done, DONE_TIMEOUT_MS, 'the blob source');
      this.checkProduced(produced.digest, produced.size);
      if (produced.digest !== digest) {
        throw new RegistryError(
          ErrorCodes.DIGEST_MISMATCH,
          `${this.what}: the source's bytes changed between passes (${digest} then ${produced.digest})`,
          { registry: this.reg },
        );
      }
      return out;
    } catch (e) {
      const err = classifyError(e, this.reg, this.what);
      const rejected =
        e instanceof RestartSignal ||
        (err instanceof RegistryError && err.code === ErrorCodes.DIGEST_MISMATCH);
      if (rejected && this.source.digest) {
        // Did the source lie about its digest? Then no fresh session will help.
        const produced = await Promise.race([
          bs.done.catch(() => undefined),
          new Promise<undefined>((r) => setTimeout(() => r(undefined), 2000).unref()),
        ]);
        if (produced && produced.digest !== this.source.digest) {
          throw new RegistryError(
            ErrorCodes.DIGEST_MISMATCH,
            `${this.what}: the source states ${this.source.digest} but its bytes hash to ${produced.digest}`,
            { registry: this.reg },
          );
        }
      }
      if (e instanceof RestartSignal) throw e;
      if (err instanceof RegistryError && err.transient && this.sourceError === undefined) {
        // A monolithic PUT has no offset to resume from: back off, then a fresh session.
        const n = this.countFailure(err);
        await this.c.backoff(this.reg, this.what, n - 1, err, this.opts.signal);
        throw new RestartSignal(err.message);
      }
      throw e;
    } finally {
      counter.destroy();
    }
  }
}

class RestartSignal extends Error {}
