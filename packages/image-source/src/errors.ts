/** Error codes of @ferry/image-source (the API maps code → HTTP status in one place). */
export const SourceErrorCodes = {
  /** The source string or options are malformed (caller can fix). */
  BAD_SOURCE: 'FERRY_BAD_SOURCE',
  /** The path, file, image or reference does not exist. */
  SOURCE_NOT_FOUND: 'FERRY_SOURCE_NOT_FOUND',
  /** The path (or a symlink on the way) leads outside the source root. */
  SOURCE_OUTSIDE_ROOT: 'FERRY_SOURCE_OUTSIDE_ROOT',
  /** A blob's bytes do not hash to its digest (or do not have its size). */
  BLOB_DIGEST_MISMATCH: 'FERRY_BLOB_DIGEST_MISMATCH',
  /** A layer's uncompressed bytes do not hash to the diffID the config states. */
  DIFFID_MISMATCH: 'FERRY_DIFFID_MISMATCH',
  /** A manifest, index, config or manifest.json in the source is malformed. */
  MANIFEST_INVALID: 'FERRY_MANIFEST_INVALID',
  /** A file tar cannot represent (a name that is not UTF-8, ...). */
  UNSUPPORTED_FILE: 'FERRY_UNSUPPORTED_FILE',
  /** `platform` names no image of the source. */
  PLATFORM_NOT_FOUND: 'FERRY_PLATFORM_NOT_FOUND',
  /** open(offset) with an offset past the end of the layer. */
  OFFSET_OUT_OF_RANGE: 'FERRY_OFFSET_OUT_OF_RANGE',
  /** The layer stream was destroyed by its consumer before it ended. */
  STREAM_ABORTED: 'FERRY_STREAM_ABORTED',
  /**
   * The source is no longer what its snapshot recorded (an archive replaced, a dir: layer,
   * its layer list or config.json edited), or changed while a layer was read. The message
   * names what changed; the push must fail rather than mix two versions of the source.
   */
  SOURCE_CHANGED: 'FERRY_SOURCE_CHANGED',
  /**
   * dir: extended attributes (file capabilities) cannot be read on this machine (the native
   * fs-xattr addon failed to load, or a read failed): a server-side problem, never skipped.
   */
  XATTRS_UNAVAILABLE: 'FERRY_XATTRS_UNAVAILABLE',
} as const;

export type SourceErrorCode = (typeof SourceErrorCodes)[keyof typeof SourceErrorCodes];

export class SourceError extends Error {
  override readonly name = 'SourceError';
  readonly code: SourceErrorCode;
  /** What was wrong: `source`, `platform`, a blob digest, a file path inside the source... */
  readonly field?: string;
  constructor(
    code: SourceErrorCode,
    message: string,
    field?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.code = code;
    if (field !== undefined) this.field = field;
  }
}
