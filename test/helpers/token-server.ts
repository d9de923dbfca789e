import { createPrivateKey, createPublicKey, randomUUID, sign, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { makeCertificate, libtrustKeyId, type KeyAndCert } from './certs';

export interface TokenRequestRecord {
  /** The requested scopes, space-separated as in the spec ("" when none was asked for). */
  scope: string;
  /** The authenticated user, when credentials were sent. */
  account?: string;
  service?: string;
  /** 'GET' (docker token flow) or 'POST' (OAuth2 password grant). */
  method: string;
  /** The HTTP status the server answered. */
  status: number;
}

export interface TokenServerOptions {
  /** The registry's `auth.token.service`; also the token's `aud`. */
  service: string;
  /** The registry's `auth.token.issuer`; the token's `iss`. */
  issuer: string;
  users: { username: string; password: string }[];
  /** Token lifetime in seconds; default 300. */
  ttlSeconds?: number;
  /** Let requests without credentials have tokens (for pull-only anonymous tests); default false. */
  allowAnonymous?: boolean;
  /** Repositories whose tokens grant `pull` only: a push there is refused (insufficient scope). */
  readOnlyRepositories?: RegExp;
}

export interface TokenServer {
  /** http://127.0.0.1:PORT/token — the realm. */
  url: string;
  /** "127.0.0.1:PORT" */
  host: string;
  port: number;
  /** Every token request so far, in order. */
  readonly requests: TokenRequestRecord[];
  /** Tokens issued so far. */
  readonly issued: number;
  /** The PEM certificate bundle the registry must trust (auth.token.rootcertbundle). */
  readonly rootCertPem: string;
  /** The current signing key's libtrust key ID (also sent as `kid`). */
  readonly keyId: string;
  /**
   * Lifetime of tokens issued from now on (seconds, > 0). docker-registry allows
   * 60 s of clock leeway past `exp`, so a short TTL shows up in `expires_in` (what
   * clients refresh by) long before the registry itself refuses the token.
   */
  setTokenTtl(seconds: number): void;
  /**
   * Signs a token directly (tests that need one without HTTP). `keyIn` picks how
   * the header names the key: both `x5c` and `kid` (default), or only one of them.
   */
  issue(account: string, scopes: string[], keyIn?: 'both' | 'x5c' | 'kid'): string;
  /** Switches to a fresh signing key and certificate (old tokens then fail once the registry trusts only the new one). */
  rotateKey(): void;
  stop(): Promise<void>;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

interface Access {
  type: string;
  name: string;
  actions: string[];
}

/** "repository:team/app:pull,push" → access entry; the name may hold ':' (registry host ports). */
function parseScope(scope: string): Access | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first < 0 || last <= first) return undefined;
  const actions = scope
    .slice(last + 1)
    .split(',')
    .filter((a) => a.length > 0);
  return { type: scope.slice(0, first), name: scope.slice(first + 1, last), actions };
}

function credentialsOk(
  users: TokenServerOptions['users'],
  username: string,
  password: string,
): boolean {
  const user = users.find((u) => u.username === username);
  if (!user) return false;
  const a = Buffer.from(user.password);
  const b = Buffer.from(password);
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * A Docker token-auth server (distribution's token spec) on 127.0.0.1: GET
 * /token?service=&scope=&account= with Basic auth, and the OAuth2 POST form.
 * Tokens are RS256 JWTs whose header carries the signing certificate (`x5c`) and
 * its libtrust `kid`; the registry trusts that certificate through
 * `rootcertbundle`. Every authenticated user gets every action it asks for.
 */
export async function startTokenServer(opts: TokenServerOptions): Promise<TokenServer> {
  if (!opts.service || !opts.issuer)
    throw new Error('startTokenServer: service and issuer are required');
  if (!Array.isArray(opts.users) || opts.users.length === 0) {
    throw new Error('startTokenServer: at least one user is required');
  }
  let ttl = opts.ttlSeconds ?? 300;
  let issued = 0;
  const requests: TokenRequestRecord[] = [];
  let signing: KeyAndCert;
  let keyId: string;
  const newKey = () => {
    signing = makeCertificate({ commonName: 'Ferry test token signer', days: 2 });
    const spki = createPublicKey(signing.keyPem).export({ type: 'spki', format: 'der' });
    keyId = libtrustKeyId(spki);
  };
  newKey();

  const issue = (
    account: string,
    scopes: string[],
    keyIn: 'both' | 'x5c' | 'kid' = 'both',
  ): string => {
    const now = Math.floor(Date.now() / 1000);
    const header = {
      typ: 'JWT',
      alg: 'RS256',
      ...(keyIn !== 'x5c' ? { kid: keyId } : {}),
      ...(keyIn !== 'kid' ? { x5c: [signing.certDer.toString('base64')] } : {}),
    };
    const readOnly = opts.readOnlyRepositories;
    const access = scopes
      .map(parseScope)
      .filter((a): a is Access => a !== undefined)
      .map((a) =>
        readOnly && a.type === 'repository' && readOnly.test(a.name)
          ? { ...a, actions: a.actions.filter((x) => x === 'pull') }
          : a,
      );
    const claims = {
      iss: opts.issuer,
      sub: account,
      aud: opts.service,
      exp: now + ttl,
      nbf: now - 1,
      iat: now,
      jti: randomUUID(),
      access,
    };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const signature = sign('sha256', Buffer.from(input), createPrivateKey(signing.keyPem));
    issued++;
    return `${input}.${b64url(signature)}`;
  };

  const reply = (
    res: ServerResponse,
    status: number,
    body: unknown,
    headers: Record<string, string> = {},
  ) => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    if (url.pathname !== '/token')
      return reply(res, 404, { errors: [{ code: 'NOT_FOUND', message: 'no such path' }] });
    let scopes: string[];
    let service: string | undefined;
    let username: string | undefined;
    let password: string | undefined;
    if (req.method === 'GET') {
      scopes = url.searchParams.getAll('scope').flatMap((s) => s.split(' '));
      service = url.searchParams.get('service') ?? undefined;
      const header = req.headers.authorization ?? '';
      if (/^basic /i.test(header)) {
        const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
        const colon = decoded.indexOf(':');
        username = colon < 0 ? decoded : decoded.slice(0, colon);
        password = colon < 0 ? '' : decoded.slice(colon + 1);
      }
    } else if (req.method === 'POST') {
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
      scopes = (form.get('scope') ?? '').split(' ');
      service = form.get('service') ?? undefined;
      if (form.get('grant_type') !== 'password') {
        return reply(res, 400, {
          error: 'unsupported_grant_type',
          error_description: 'only grant_type=password',
        });
      }
      username = form.get('username') ?? undefined;
      password = form.get('password') ?? '';
    } else {
      return reply(res, 405, { errors: [{ code: 'UNSUPPORTED', message: 'GET or POST only' }] });
    }
    scopes = scopes.filter((s) => s.length > 0);
    const record: TokenRequestRecord = {
      scope: scopes.join(' '),
      account: username,
      service,
      method: req.method,
      status: 0,
    };
    requests.push(record);
    if (service !== undefined && service !== opts.service) {
      record.status = 400;
      return reply(res, 400, {
        errors: [{ code: 'DENIED', message: `unknown service ${JSON.stringify(service)}` }],
      });
    }
    if (username === undefined && !opts.allowAnonymous) {
      record.status = 401;
      return reply(
        res,
        401,
        { errors: [{ code: 'UNAUTHORIZED', message: 'credentials required' }] },
        {
          'www-authenticate': 'Basic realm="ferry-test-token"',
        },
      );
    }
    if (username !== undefined && !credentialsOk(opts.users, username, password ?? '')) {
      record.status = 401;
      return reply(
        res,
        401,
        { errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] },
        {
          'www-authenticate': 'Basic realm="ferry-test-token"',
        },
      );
    }
    const token = issue(username ?? '', scopes);
    record.status = 200;
    reply(res, 200, {
      token,
      access_token: token,
      expires_in: ttl,
      issued_at: new Date().toISOString(),
    });
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: Error) => {
      if (!res.headersSent)
        reply(res, 500, { errors: [{ code: 'UNKNOWN', message: err.message }] });
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => resolve());
  });
  const address = server.address();
  if (address === null || typeof address === 'string')
    throw new Error('startTokenServer: no TCP address');
  const port = address.port;
  let stopped: Promise<void> | undefined;
  return {
    url: `http://127.0.0.1:${port}/token`,
    host: `127.0.0.1:${port}`,
    port,
    requests,
    get issued() {
      return issued;
    },
    get rootCertPem() {
      return signing.certPem;
    },
    get keyId() {
      return keyId;
    },
    setTokenTtl(seconds: number) {
      if (!Number.isInteger(seconds) || seconds <= 0) {
        throw new Error(`setTokenTtl: seconds must be a positive integer, got ${seconds}`);
      }
      ttl = seconds;
    },
    issue,
    rotateKey: newKey,
    stop() {
      stopped ??= new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      });
      return stopped;
    },
  };
}
