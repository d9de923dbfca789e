export * from './ports';
export * from './tmp';
export * from './processes';
export * from './runtime';
export * from './redis';
export * from './registry';
export * from './proxy';
export * from './skopeo';
