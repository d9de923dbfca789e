/**
 * API errors: `{"error": {"code": "FERRY_…", "message": "…", "field": "…"}}`.
 * The code → HTTP status mapping lives here and nowhere else.
 */

export const STATUS_BY_CODE: Readonly<Record<string, number>> = {
  // the request itself is malformed
  FERRY_VALIDATION: 400,
  FERRY_BAD_JSON: 400,
  FERRY_BAD_SOURCE: 400,
  FERRY_BAD_REFERENCE: 400,
  FERRY_BAD_EVENT_ID: 400,
  // who may ask
  FERRY_UNAUTHORIZED: 401,
  FERRY_FORBIDDEN: 403,
  FERRY_SOURCE_OUTSIDE_ROOT: 403,
  FERRY_REGISTRY_NOT_ALLOWED: 403,
  // what does not exist
  FERRY_NOT_FOUND: 404,
  FERRY_PUSH_NOT_FOUND: 404,
  FERRY_NOT_CONFIGURED: 404,
  FERRY_PUSH_FINISHED: 409,
  FERRY_BODY_TOO_LARGE: 413,
  FERRY_UNSUPPORTED_MEDIA_TYPE: 415,
  // well-formed, but names something unusable
  FERRY_SOURCE_NOT_FOUND: 422,
  FERRY_PLATFORM_NOT_FOUND: 422,
  FERRY_IDEMPOTENCY_CONFLICT: 422,
  FERRY_SIGNING_NOT_CONFIGURED: 422,
  /** An option that would rewrite the bytes of a docker:// copy (schema1, format, dirOptions). */
  FERRY_COPY_UNSUPPORTED: 422,
  FERRY_SCHEMA1_UNSUPPORTED: 422,
  FERRY_METHOD_NOT_ALLOWED: 405,
  FERRY_TOO_MANY_REQUESTS: 429,
  // ours
  FERRY_UNAVAILABLE: 503,
  FERRY_INTERNAL: 500,
  // this server cannot read file capabilities (the xattr addon is missing): refuse, never drop them
  FERRY_XATTRS_UNAVAILABLE: 500,
};

/** The HTTP status of a code: the table above; a code missing from it is our bug (500). */
export function statusOf(code: string): number {
  return STATUS_BY_CODE[code] ?? 500;
}

export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
  get status(): number {
    return statusOf(this.code);
  }
  toBody(): { error: { code: string; message: string; field?: string } } {
    return {
      error: {
        code: this.code,
        message: this.message,
        ...(this.field ? { field: this.field } : {}),
      },
    };
  }
}
