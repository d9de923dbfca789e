import { stopAllServices } from './processes';

/**
 * Mocha root hook plugin (listed in .mocharc.json "require"): after the whole run,
 * stop every service a suite started and forgot — by pid, never by name.
 */
export const mochaHooks = {
  async afterAll(): Promise<void> {
    await stopAllServices();
  },
};
