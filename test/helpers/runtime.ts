import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** One line that tells a developer what to do when nothing can run the services. */
export const INSTALL_HINT =
  'install redis-server docker-registry skopeo: bash scripts/install-system-deps.sh';

/** Absolute path of an executable found on PATH (or in /usr/bin, /usr/sbin), or undefined. */
export function findBinary(name: string): string | undefined {
  const dirs = [
    ...(process.env.PATH ?? '').split(delimiter),
    '/usr/bin',
    '/usr/sbin',
    '/usr/local/bin',
  ];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

let engineProbe: Promise<boolean> | undefined;

/**
 * Whether a container engine answers testcontainers, probed once per process and
 * cached; gives up after 2 s. FERRY_TEST_CONTAINERS=0 skips the probe.
 */
export function containerEngineAvailable(): Promise<boolean> {
  if (process.env.FERRY_TEST_CONTAINERS === '0') return Promise.resolve(false);
  engineProbe ??= (async () => {
    let timer: NodeJS.Timeout | undefined;
    try {
      const { getContainerRuntimeClient } = await import('testcontainers');
      const timeout = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), 2_000);
        timer.unref();
      });
      return await Promise.race([getContainerRuntimeClient().then(() => true), timeout]);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  })();
  return engineProbe;
}

export type Backend = { kind: 'binary'; path: string } | { kind: 'container' };

/**
 * How to run a service: the local binary when it is installed (no image pulls,
 * works offline), otherwise testcontainers when an engine answers, otherwise a
 * one-line error saying what to install. FERRY_TEST_CONTAINERS=1 prefers containers.
 */
export async function chooseBackend(binary: string): Promise<Backend> {
  const path = findBinary(binary);
  const preferContainers = process.env.FERRY_TEST_CONTAINERS === '1';
  if (path && !preferContainers) return { kind: 'binary', path };
  if (await containerEngineAvailable()) return { kind: 'container' };
  if (path) return { kind: 'binary', path };
  throw new Error(`${binary} not found and no container engine answers — ${INSTALL_HINT}`);
}
