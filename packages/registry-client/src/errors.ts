/**
 * One table of error codes for the registry client. Whether an error is worth
 * retrying (transient) or must fail the job at once (permanent) is decided
 * here and nowhere else: see TRANSIENT_CODES and isTransient().
 */

export const ErrorCodes = {
  /** A reference (host/repo:tag@digest) that does not follow Docker's grammar. */
  BAD_REFERENCE: 'FERRY_BAD_REFERENCE',
  /** A caller passed something unusable (missing size for a monolithic upload, bad option). */
  INVALID_ARGUMENT: 'FERRY_INVALID_ARGUMENT',
  /** The registry host is not on the allowlist; no connection was made. */
  REGISTRY_NOT_ALLOWED: 'FERRY_REGISTRY_NOT_ALLOWED',
  /** 401 that a fresh token or the configured credentials did not cure. */
  REGISTRY_UNAUTHORIZED: 'FERRY_REGISTRY_UNAUTHORIZED',
  /** 403 / DENIED: the account may not do this. */
  REGISTRY_DENIED: 'FERRY_REGISTRY_DENIED',
  /** 404 NAME_UNKNOWN or a 404 on the repository. */
  REPOSITORY_NOT_FOUND: 'FERRY_REPOSITORY_NOT_FOUND',
  /** BLOB_UNKNOWN, or a blob GET that answered 404. */
  BLOB_UNKNOWN: 'FERRY_BLOB_UNKNOWN',
  /** MANIFEST_UNKNOWN / a manifest GET that answered 404. */
  MANIFEST_UNKNOWN: 'FERRY_MANIFEST_UNKNOWN',
  /** Registry DIGEST_INVALID, or our own check of the bytes against a stated digest. */
  DIGEST_MISMATCH: 'FERRY_DIGEST_MISMATCH',
  /** BLOB_UPLOAD_UNKNOWN: the upload session is gone (a new session may succeed). */
  UPLOAD_SESSION_LOST: 'FERRY_UPLOAD_SESSION_LOST',
  /** 5xx, 408, connection refused/reset, timeouts. */
  REGISTRY_UNAVAILABLE: 'FERRY_REGISTRY_UNAVAILABLE',
  /** 429 / TOOMANYREQUESTS. */
  RATE_LIMITED: 'FERRY_RATE_LIMITED',
  /** MANIFEST_INVALID, MANIFEST_BLOB_UNKNOWN, MANIFEST_UNVERIFIED, TAG_INVALID, SIZE_INVALID... */
  MANIFEST_INVALID: 'FERRY_MANIFEST_INVALID',
  /** A redirect or Location to a host that is not allowed (or to plain HTTP for a secure host). */
  REDIRECT_REFUSED: 'FERRY_REDIRECT_REFUSED',
  /** The registry answered something the protocol does not allow here. */
  REGISTRY_PROTOCOL: 'FERRY_REGISTRY_PROTOCOL',
  /** UNSUPPORTED from the registry (e.g. schema1 disabled, a missing API). */
  UNSUPPORTED: 'FERRY_UNSUPPORTED',
  /** The TLS handshake failed: unknown CA, wrong host name, expired certificate. */
  TLS: 'FERRY_TLS',
  /** docker config.json or a credential helper failed. */
  CREDENTIALS: 'FERRY_CREDENTIALS',
  /** The operation was cancelled through its AbortSignal. */
  ABORTED: 'FERRY_ABORTED',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/**
 * The codes a retry (with backoff, or a fresh session) may cure. Every other
 * FERRY_ code of this table is permanent: retrying cannot change the answer.
 */
export const TRANSIENT_CODES: ReadonlySet<string> = new Set<string>([
  ErrorCodes.REGISTRY_UNAVAILABLE,
  ErrorCodes.RATE_LIMITED,
  ErrorCodes.UPLOAD_SESSION_LOST,
]);

/**
 * The single place that decides transient vs permanent for registry errors.
 * Takes a code (`'FERRY_RATE_LIMITED'`) or anything thrown: a RegistryError,
 * an undici / socket error (classified first: a reset is transient), or any
 * object with a string `code`. Everything else is not transient.
 */
export function isTransient(codeOrError: unknown): boolean {
  if (typeof codeOrError === 'string') return TRANSIENT_CODES.has(codeOrError);
  const c = classifyError(codeOrError);
  const code = (c as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' && TRANSIENT_CODES.has(code);
}

export interface OciError {
  code: string;
  message: string;
  detail?: unknown;
}

export interface RegistryErrorInit {
  status?: number;
  errors?: OciError[];
  registry?: string;
  /** Seconds (already parsed) the registry asked us to wait. */
  retryAfterMs?: number;
  cause?: unknown;
}

export class RegistryError extends Error {
  override name = 'RegistryError';
  readonly code: ErrorCode;
  readonly status?: number;
  readonly errors?: OciError[];
  readonly registry?: string;
  readonly retryAfterMs?: number;

  constructor(code: ErrorCode, message: string, init: RegistryErrorInit = {}) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.code = code;
    if (init.status !== undefined) this.status = init.status;
    if (init.errors !== undefined) this.errors = init.errors;
    if (init.registry !== undefined) this.registry = init.registry;
    if (init.retryAfterMs !== undefined) this.retryAfterMs = init.retryAfterMs;
  }

  get transient(): boolean {
    return isTransient(this.code);
  }

  toJSON(): Record<string, unknown> {
    return {
      name: this.name,
      code: this.code,
      message: this.message,
      status: this.status,
      registry: this.registry,
      errors: this.errors,
    };
  }
}

/** OCI error code (from the registry's JSON body) → Ferry code. */
const OCI_CODE_MAP: Record<string, ErrorCode> = {
  BLOB_UNKNOWN: ErrorCodes.BLOB_UNKNOWN,
  BLOB_UPLOAD_UNKNOWN: ErrorCodes.UPLOAD_SESSION_LOST,
  BLOB_UPLOAD_INVALID: ErrorCodes.REGISTRY_PROTOCOL,
  DIGEST_INVALID: ErrorCodes.DIGEST_MISMATCH,
  MANIFEST_BLOB_UNKNOWN: ErrorCodes.MANIFEST_INVALID,
  MANIFEST_INVALID: ErrorCodes.MANIFEST_INVALID,
  MANIFEST_UNVERIFIED: ErrorCodes.MANIFEST_INVALID,
  MANIFEST_UNKNOWN: ErrorCodes.MANIFEST_UNKNOWN,
  NAME_INVALID: ErrorCodes.BAD_REFERENCE,
  NAME_UNKNOWN: ErrorCodes.REPOSITORY_NOT_FOUND,
  SIZE_INVALID: ErrorCodes.MANIFEST_INVALID,
  TAG_INVALID: ErrorCodes.MANIFEST_INVALID,
  UNAUTHORIZED: ErrorCodes.REGISTRY_UNAUTHORIZED,
  DENIED: ErrorCodes.REGISTRY_DENIED,
  UNSUPPORTED: ErrorCodes.UNSUPPORTED,
  TOOMANYREQUESTS: ErrorCodes.RATE_LIMITED,
};

/** Parses an OCI error body ({"errors":[...]}); tolerant of anything else. */
export function parseOciErrors(text: string): OciError[] | undefined {
  if (!text) return undefined;
  try {
    const parsed = JSON.parse(text) as { errors?: unknown };
    if (!Array.isArray(parsed.errors)) return undefined;
    const out: OciError[] = [];
    for (const e of parsed.errors as unknown[]) {
      if (e && typeof e === 'object') {
        const r = e as Record<string, unknown>;
        out.push({
          code: typeof r.code === 'string' ? r.code : 'UNKNOWN',
          message: typeof r.message === 'string' ? r.message : '',
          ...(r.detail !== undefined ? { detail: r.detail } : {}),
        });
      }
    }
    return out;
  } catch {
    return undefined;
  }
}

/**
 * Maps an HTTP error response to a RegistryError. The OCI error list wins over
 * the status code where it names something more precise; `notFound` says what a
 * bare 404 means for this endpoint.
 */
export function errorFromResponse(
  status: number,
  bodyText: string,
  ctx: { registry?: string; what: string; notFound?: ErrorCode; retryAfterMs?: number },
): RegistryError {
  const errors = parseOciErrors(bodyText);
  let code: ErrorCode | undefined;
  for (const e of errors ?? []) {
    const mapped = OCI_CODE_MAP[e.code];
    if (mapped) {
      code = mapped;
      break;
    }
  }
  if (status >= 500 || status === 408) code = ErrorCodes.REGISTRY_UNAVAILABLE;
  else if (status === 429) code = ErrorCodes.RATE_LIMITED;
  if (!code) {
    if (status === 401) code = ErrorCodes.REGISTRY_UNAUTHORIZED;
    else if (status === 403) code = ErrorCodes.REGISTRY_DENIED;
    else if (status === 404) code = ctx.notFound ?? ErrorCodes.REPOSITORY_NOT_FOUND;
    else code = ErrorCodes.REGISTRY_PROTOCOL;
  }
  const detail = errors?.length
    ? errors.map((e) => `${e.code}: ${e.message}`).join('; ')
    : bodyText.slice(0, 200).trim();
  const msg = `${ctx.what}: HTTP ${status}${detail ? ` (${detail})` : ''}`;
  return new RegistryError(code, msg, {
    status,
    errors,
    registry: ctx.registry,
    retryAfterMs: ctx.retryAfterMs,
  });
}

const TLS_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_GET_ISSUER_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'CERT_SIGNATURE_FAILURE',
  'ERR_SSL_WRONG_VERSION_NUMBER',
]);

const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);

/**
 * Turns whatever a request threw (undici, node:net, TLS, abort) into a
 * RegistryError; a RegistryError passes through unchanged. Errors that are
 * none of these (e.g. a failing source stream) are returned as they are.
 */
export function classifyError(err: unknown, registry?: string, what = 'request'): unknown {
  if (err instanceof RegistryError) return err;
  if (!(err instanceof Error)) return err;
  const code = (err as { code?: string }).code ?? '';
  const causeCode = ((err as { cause?: { code?: string } }).cause?.code ?? '') as string;
  if (err.name === 'AbortError' || code === 'UND_ERR_ABORTED' || code === 'ABORT_ERR') {
    return new RegistryError(ErrorCodes.ABORTED, `${what}: aborted`, { registry, cause: err });
  }
  if (TLS_CODES.has(code) || TLS_CODES.has(causeCode)) {
    return new RegistryError(
      ErrorCodes.TLS,
      `${what}: TLS verification of ${registry ?? 'the registry'} failed (${code || causeCode}: ${err.message}); set FERRY_CA_FILE to the CA that signed its certificate`,
      { registry, cause: err },
    );
  }
  if (NETWORK_CODES.has(code) || NETWORK_CODES.has(causeCode)) {
    return new RegistryError(
      ErrorCodes.REGISTRY_UNAVAILABLE,
      `${what}: ${code || causeCode} (${err.message})`,
      { registry, cause: err },
    );
  }
  return err;
}

/** True for errors worth retrying, whatever their type (the same decision as isTransient). */
export function isTransientError(err: unknown): boolean {
  return isTransient(err);
}
