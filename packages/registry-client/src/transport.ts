/**
 * The HTTP layer: one undici Agent, the allowlist checked before any
 * connection, the scheme per host (plain HTTP only for insecure hosts), and
 * the policy for every Location a registry sends (redirects, upload sessions,
 * tag-list pages): same host, or another allowed host, never userinfo, never
 * down to plain HTTP. Credentials go only to the registry's own host.
 * (go-containerregistry: transport/schemer.go and the transport wrapper.)
 */
import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { Agent, type Dispatcher } from 'undici';
import { isAllowed, isInsecure, normalizeHost } from './allow';
import { classifyError, ErrorCodes, RegistryError } from './errors';
import { DOCKER_HUB, validateRepository } from './reference';
import type { RepoRef } from './types';

export type Headers = Record<string, string>;

export interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
  url: URL;
}

export interface ExchangeOptions {
  headers?: Headers;
  body?: Dispatcher.DispatchOptions['body'];
  /** Sent only when the URL is on the registry's own host. */
  auth?: string;
  signal?: AbortSignal;
  what: string;
  /** 0 disables undici's timer (a streamed body may take longer than any fixed limit). */
  headersTimeout?: number;
}

export interface TransportOptions {
  allow: readonly string[];
  insecure: readonly string[];
  caFile?: string;
  userAgent: string;
  connections: number;
}

export function header(res: { headers: Res['headers'] }, name: string): string | undefined {
  const v = res.headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

export async function readText(res: Res, limit = 64 * 1024): Promise<string> {
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

/** undici needs every body consumed or dumped, or the connection is not reused. */
export async function dump(res: Res): Promise<void> {
  try {
    await res.body.dump();
  } catch {
    // ignore
  }
}

function effectiveHostPort(url: URL): string {
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  return `${url.hostname.toLowerCase()}:${port}`;
}

function readCa(caFile: string): string[] {
  let pem: string;
  try {
    pem = readFileSync(caFile, 'utf8');
  } catch (e) {
    throw new RegistryError(
      ErrorCodes.INVALID_ARGUMENT,
      `cannot read CA file ${caFile}: ${(e as Error).message}`,
    );
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new RegistryError(
      ErrorCodes.INVALID_ARGUMENT,
      `CA file ${caFile} holds no PEM certificate`,
    );
  }
  return [...rootCertificates, pem];
}

function protocolError(reg: string, message: string): RegistryError {
  return new RegistryError(ErrorCodes.REGISTRY_PROTOCOL, message, { registry: reg });
}

function refused(reg: string, message: string): RegistryError {
  return new RegistryError(ErrorCodes.REDIRECT_REFUSED, message, { registry: reg });
}

export class Transport {
  readonly allow: readonly string[];
  readonly insecure: readonly string[];
  private readonly agent: Agent;
  private readonly userAgent: string;

  constructor(opts: TransportOptions) {
    this.allow = [...opts.allow];
    this.insecure = [...opts.insecure];
    this.userAgent = opts.userAgent;
    const ca = opts.caFile ? readCa(opts.caFile) : undefined;
    this.agent = new Agent({
      connections: opts.connections,
      pipelining: 1,
      ...(ca ? { connect: { ca } } : {}),
    });
  }

  close(): Promise<void> {
    return this.agent.close();
  }

  /** Registries checkRegistry allowed already, by the name asked: the allowlist is fixed. */
  private readonly allowedHosts = new Map<string, string>();

  /** Normalises a registry host and checks it against the allowlist (before any connection). */
  checkRegistry(registry: string): string {
    const known = this.allowedHosts.get(registry);
    if (known !== undefined) return known;
    const host = this.judgeRegistry(registry);
    if (this.allowedHosts.size >= 1000) this.allowedHosts.clear();
    this.allowedHosts.set(registry, host);
    return host;
  }

  private judgeRegistry(registry: string): string {
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

  checkRepo(repo: RepoRef): { reg: string; name: string } {
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

  /** Hosts already judged by isInsecure (its subnet entries are parsed on every call). */
  private readonly insecureHosts = new Map<string, boolean>();

  /** isInsecure against this transport's list, remembered per host (every request asks). */
  private isInsecure(host: string): boolean {
    let v = this.insecureHosts.get(host);
    if (v === undefined) {
      if (this.insecureHosts.size >= 1000) this.insecureHosts.clear();
      v = isInsecure(host, this.insecure);
      this.insecureHosts.set(host, v);
    }
    return v;
  }

  /** The URL requests to reg start from (docker.io is served by registry-1.docker.io). */
  baseUrl(reg: string): URL {
    const host = reg === DOCKER_HUB ? 'registry-1.docker.io' : reg;
    const scheme = this.isInsecure(host) ? 'http' : 'https';
    return new URL(`${scheme}://${host}/`);
  }

  sameOrigin(reg: string, url: URL): boolean {
    return effectiveHostPort(url) === effectiveHostPort(this.baseUrl(reg));
  }

  /** May a request (a token fetch) go to this URL at all? Allowed host, and HTTPS unless insecure. */
  checkForeignUrl(reg: string, url: URL, what: string): void {
    const host = normalizeHost(url.host);
    if (!isAllowed(host, this.allow)) {
      throw new RegistryError(
        ErrorCodes.REGISTRY_NOT_ALLOWED,
        `${reg}: ${what} host ${host} is not on the allowlist; refusing to send credentials there`,
        { registry: reg },
      );
    }
    if (url.protocol !== 'https:' && !(url.protocol === 'http:' && this.isInsecure(host)))
      throw refused(
        reg,
        `${reg}: ${what} ${host} over ${url.protocol} refused (not an insecure host)`,
      );
  }

  /**
   * Resolves a Location (relative or absolute) against the URL it came from and
   * refuses it if it leaves the registry's host for one that is not allowed, or
   * drops to plain HTTP for a host that is not insecure.
   */
  resolveLocation(reg: string, base: URL, loc: string | undefined, what: string): URL {
    if (!loc) throw protocolError(reg, `${what}: response has no Location header`);
    let url: URL;
    try {
      url = new URL(loc, base);
    } catch {
      throw protocolError(reg, `${what}: Location "${loc}" is not a URL`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:')
      throw refused(reg, `${what}: Location scheme ${url.protocol} refused`);
    if (url.username || url.password)
      throw refused(reg, `${what}: Location with credentials refused`);
    const target = normalizeHost(url.host);
    if (!this.sameOrigin(reg, url) && !isAllowed(target, this.allow))
      throw refused(reg, `${what}: ${reg} sent us to ${target}, which is not on the allowlist`);
    if (url.protocol === 'http:' && !this.isInsecure(target)) {
      throw refused(
        reg,
        `${what}: Location ${target} over plain HTTP refused (not an insecure registry)`,
      );
    }
    return url;
  }

  /** One HTTP exchange. Credentials are attached only when url is on the registry's own host. */
  async exchange(
    reg: string,
    method: Dispatcher.HttpMethod,
    url: URL,
    opts: ExchangeOptions,
  ): Promise<Res> {
    const headers: Headers = { 'user-agent': this.userAgent, ...(opts.headers ?? {}) };
    if (opts.auth && this.sameOrigin(reg, url)) headers.authorization = opts.auth;
    return this.send(reg, method, url, headers, opts);
  }

  /** One exchange with another host the caller has checked (a token realm); no registry credentials. */
  exchangeForeign(
    reg: string,
    method: Dispatcher.HttpMethod,
    url: URL,
    opts: ExchangeOptions,
  ): Promise<Res> {
    return this.send(
      reg,
      method,
      url,
      { 'user-agent': this.userAgent, ...(opts.headers ?? {}) },
      opts,
    );
  }

  private async send(
    reg: string,
    method: Dispatcher.HttpMethod,
    url: URL,
    headers: Headers,
    opts: ExchangeOptions,
  ): Promise<Res> {
    try {
      const r = await this.agent.request({
        origin: url.origin,
        path: url.pathname + url.search,
        method,
        headers,
        body: opts.body ?? null,
        signal: opts.signal,
        ...(opts.headersTimeout !== undefined ? { headersTimeout: opts.headersTimeout } : {}),
        // undici closes a connection after every HEAD, in case a server sends a body with the
        // reply; registries answer HEAD as HTTP says, and a connection per existence check costs
        // a TCP connect and an error object each. A server that says `Connection: close` still
        // gets its connection closed.
        ...(method === 'HEAD' ? { reset: false } : {}),
      });
      return { status: r.statusCode, headers: r.headers, body: r.body, url };
    } catch (e) {
      throw classifyError(e, reg, opts.what);
    }
  }
}
