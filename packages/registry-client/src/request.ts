/**
 * A registry request as callers see it: authorization for a scope, retries
 * with backoff (permit released around each sleep), one credential refresh on
 * a 401, redirects followed by hand (GET/HEAD only) to allowed hosts.
 * Everything above this file (blobs, sessions, uploads, manifests) talks to
 * the registry through a Requester.
 */
import type { Dispatcher } from 'undici';
import type { Logger } from '@ferry/log';
import { ErrorCodes, RegistryError, type ErrorCode } from './errors';
import type { RetryPolicy } from './retry';
import type { Authenticator } from './token';
import { dump, header, type Headers, type Res, type Transport } from './transport';
import type { CallOptions } from './types';

const MAX_REDIRECTS = 5;
const REDIRECTS = [301, 302, 303, 307, 308];

export interface CallSpec extends CallOptions {
  scope: string[];
  ok: number[];
  what: string;
  headers?: Headers;
  body?: Buffer;
  notFound?: ErrorCode;
}

export function pullScope(name: string): string[] {
  return [`repository:${name}:pull`];
}

export function pushScope(name: string): string[] {
  return [`repository:${name}:pull,push`];
}

export class Requester {
  constructor(
    readonly transport: Transport,
    readonly retry: RetryPolicy,
    readonly auth: Authenticator,
    readonly log?: Logger,
  ) {}

  /**
   * Runs one attempt after another until one succeeds, the error is
   * permanent, or the attempts are spent; sleeps between them without the
   * caller's permit.
   */
  async retrying<T>(
    reg: string,
    what: string,
    call: CallOptions,
    attemptOnce: (attempt: number) => Promise<T>,
  ): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await attemptOnce(attempt);
      } catch (e) {
        await this.retry.backoff(reg, what, attempt, e, call);
      }
    }
  }

  /**
   * A request whose body (none or a Buffer) can be sent again. Returns the
   * response for an `ok` status with its body unread; everything else becomes
   * an error.
   */
  async call(
    reg: string,
    method: Dispatcher.HttpMethod,
    pathOrUrl: string | URL,
    spec: CallSpec,
  ): Promise<Res> {
    const t = this.transport;
    let url = typeof pathOrUrl === 'string' ? new URL(pathOrUrl, t.baseUrl(reg)) : pathOrUrl;
    let refreshed = false;
    let redirects = 0;
    for (let attempt = 0; ;) {
      try {
        const auth = await this.auth.authorization(reg, spec.scope, spec.signal);
        const res = await t.exchange(reg, method, url, {
          headers: spec.headers,
          body: spec.body,
          auth,
          signal: spec.signal,
          what: spec.what,
        });
        if (spec.ok.includes(res.status)) return res;
        if (res.status === 401 && t.sameOrigin(reg, url)) {
          // The challenge is re-read from every 401 (the next call starts from it too);
          // the request itself is refreshed once.
          if (!refreshed) {
            refreshed = true;
            await dump(res);
            this.auth.onUnauthorized(reg, res, spec.scope);
            continue;
          }
          const err = await this.auth.errorOf(reg, res, spec.what, spec.notFound);
          this.auth.onUnauthorized(reg, res, spec.scope);
          throw err;
        }
        if (REDIRECTS.includes(res.status)) {
          await dump(res);
          if ((method !== 'GET' && method !== 'HEAD') || ++redirects > MAX_REDIRECTS) {
            throw new RegistryError(
              ErrorCodes.REGISTRY_PROTOCOL,
              `${spec.what}: unexpected redirect (HTTP ${res.status}) ${redirects > MAX_REDIRECTS ? '— too many' : `for ${method}`}`,
              { status: res.status, registry: reg },
            );
          }
          url = t.resolveLocation(reg, url, header(res, 'location'), spec.what);
          continue;
        }
        throw await this.auth.errorOf(reg, res, spec.what, spec.notFound);
      } catch (e) {
        await this.retry.backoff(reg, spec.what, attempt, e, spec);
        attempt++;
      }
    }
  }
}
