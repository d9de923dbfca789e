/**
 * Real-service test harness. Typical use:
 *
 *   const redis = await startRedis();                        // redis.url
 *   const registry = await startRegistry({ auth: 'token' }); // registry.host, .dockerConfigPath, .tokenServer
 *   const proxy = await startProxy({ host: '127.0.0.1', port: registry.port }); // proxy.host, bytesUp, cutOnceAfter
 *   after(() => Promise.all([proxy.stop(), registry.stop(), redis.stop()]));
 *
 * Everything listens on 127.0.0.1 on free ports with temp dirs; services are
 * stopped by pid at process exit and by the mocha root hook (mocha-hooks.ts).
 */
export * from './ports';
export * from './tmp';
export * from './processes';
export * from './runtime';
export * from './redis';
export * from './certs';
export * from './token-server';
export * from './registry';
export * from './proxy';
export * from './skopeo';
export * from './sse';
export * from './source-env';
export * from './durable-redis';
