import type { FerryConfig } from '@ferry/config';
import type { Logger } from '@ferry/log';
import { closeWithDeadline } from '@ferry/runtime';
import { ROLES, type Role } from './roles';

export { ROLES, type Role };

/** The package that implements each role; each exports start(config, logger) → { close() }. */
export const ROLE_PACKAGES: Record<Role, string> = {
  api: '@ferry/api',
  lookup: '@ferry/lookup-worker',
  upload: '@ferry/upload-worker',
  coordinator: '@ferry/coordinator',
};

export interface RunningRole {
  close(): Promise<void>;
}

type StartFn = (config: FerryConfig, logger: Logger) => Promise<RunningRole>;

/** Loads a role's start() or explains why it cannot. */
export function loadRole(role: Role, requireFn: (id: string) => unknown = require): StartFn {
  const pkg = ROLE_PACKAGES[role];
  let mod: { start?: unknown };
  try {
    mod = requireFn(pkg) as { start?: unknown };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const missing = e.code === 'MODULE_NOT_FOUND' && String(e.message).includes(pkg);
    throw new Error(
      missing
        ? `role ${role} is not available: ${pkg} has no entry point yet`
        : `role ${role}: loading ${pkg} failed: ${e.message}`,
      { cause: err },
    );
  }
  if (typeof mod.start !== 'function') {
    throw new Error(`role ${role} is not available: ${pkg} exports no start(config, logger)`);
  }
  return mod.start as StartFn;
}

/** Closes roles (in the given order) within timeoutMs overall; false if one overran or failed. */
export async function closeAll(
  running: { role: Role; handle: RunningRole }[],
  timeoutMs: number,
  logger: Logger,
): Promise<boolean> {
  return closeWithDeadline(
    running.map(({ role, handle }) => ({ name: `role ${role}`, close: () => handle.close() })),
    timeoutMs,
    logger,
  );
}

/**
 * Starts the roles in one process and resolves with the exit status once a
 * SIGTERM/SIGINT has stopped them (FERRY_SHUTDOWN_TIMEOUT deadline; a
 * second signal exits at once).
 */
export async function serve(
  roles: Role[],
  config: FerryConfig,
  logger: Logger,
  opts: { requireFn?: (id: string) => unknown; signals?: NodeJS.Signals[] } = {},
): Promise<number> {
  const starts = roles.map((role) => ({ role, start: loadRole(role, opts.requireFn) }));
  const running: { role: Role; handle: RunningRole }[] = [];
  try {
    for (const { role, start } of starts) {
      running.push({ role, handle: await start(config, logger.child({ role })) });
      logger.info(`serve: ${role} started`);
    }
  } catch (err) {
    logger.error(`serve: starting failed: ${(err as Error).message}`);
    await closeAll(running.reverse(), config.shutdownTimeout * 1000, logger);
    throw err;
  }
  const signals = opts.signals ?? ['SIGTERM', 'SIGINT'];
  return new Promise<number>((resolve) => {
    let stopping = false;
    const handler = (signal: NodeJS.Signals) => {
      if (stopping) {
        logger.warn(`serve: second ${signal}, exiting now`);
        process.exit(130);
      }
      stopping = true;
      logger.info(
        `serve: ${signal}, stopping ${roles.join(', ')} (deadline ${config.shutdownTimeout}s)`,
      );
      // The API stops first (no new pushes), then the workers hand back or finish their jobs.
      const order = [...running].sort((a, b) => (a.role === 'api' ? -1 : b.role === 'api' ? 1 : 0));
      void closeAll(order, config.shutdownTimeout * 1000, logger).then((clean) => {
        for (const s of signals) process.off(s, handler);
        resolve(clean ? 0 : 1);
      });
    };
    for (const s of signals) process.on(s, handler);
  });
}
