/**
 * What a Node child process needs to run Ferry's TypeScript sources rather
 * than the compiled dist/: the `ferry-source` export condition and tsx.
 * bin/ferry.js sees the condition and skips its "run npm run build" check.
 */
export function sourceNodeOptions(): string {
  return `--conditions=ferry-source --require=${require.resolve('tsx/cjs')}`;
}

/** Env entries that make a spawned `node bin/ferry.js` run the sources. */
export function sourceEnv(): { NODE_OPTIONS: string } {
  return { NODE_OPTIONS: sourceNodeOptions() };
}
