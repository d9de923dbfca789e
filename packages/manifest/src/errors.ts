/** Error codes of @ferry/manifest (the API maps code → HTTP status in one place). */
export const ManifestErrorCodes = {
  /** A manifest, index or descriptor that does not have the required shape. */
  MANIFEST_INVALID: 'FERRY_MANIFEST_INVALID',
  /** config.json fields (of a dir: source) of the wrong type. */
  CONFIG_INVALID: 'FERRY_CONFIG_INVALID',
} as const;

export type ManifestErrorCode = (typeof ManifestErrorCodes)[keyof typeof ManifestErrorCodes];

export class ManifestError extends Error {
  override readonly name = 'ManifestError';
  readonly code: ManifestErrorCode;
  /** The JSON path of the offending field, e.g. `layers[2].digest`. */
  readonly field?: string;
  constructor(code: ManifestErrorCode, message: string, field?: string) {
    super(message);
    this.code = code;
    if (field !== undefined) this.field = field;
  }
}
