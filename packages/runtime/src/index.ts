/**
 * Process wiring shared by every role: the registry client built from config,
 * a small cache of opened sources, the worker health server, and shutdown with
 * a deadline. Services import this; the library packages never do.
 */
export * from './shutdown';
export * from './health';
export * from './clients';
export * from './errors';
export * from './worker';
export * from './finish';
export * from './layers';
export * from './budget';
