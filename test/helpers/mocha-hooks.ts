import { stopAllServices } from './processes';
import { sourceNodeOptions } from './source-env';

// Children the tests spawn with process.env (`node bin/ferry.js serve`, the CLI)
// run the TypeScript sources under test, not a possibly stale dist/. A test of
// the compiled tree passes its own env without this.
process.env.NODE_OPTIONS = [process.env.NODE_OPTIONS, sourceNodeOptions()]
  .filter(Boolean)
  .join(' ');

/**
 * Mocha root hook plugin (listed in .mocharc.json "require"): after the whole run,
 * stop every service a suite started and forgot — by pid, never by name.
 */
export const mochaHooks = {
  async afterAll(): Promise<void> {
    await stopAllServices();
  },
};
