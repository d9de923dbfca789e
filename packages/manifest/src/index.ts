/**
 * @ferry/manifest — OCI / Docker image config, manifest and index types and
 * builders. Everything Ferry builds is canonical JSON whose digest is computed
 * once, from the bytes that will be sent.
 */
export * from './media-types';
export * from './errors';
export * from './canonical';
export * from './descriptor';
export * from './build';
export * from './parse';
