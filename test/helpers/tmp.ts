import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const created = new Set<string>();
let hooked = false;

function cleanupAll(): void {
  for (const dir of created) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // best effort at exit: a directory still in use is left for the OS to reclaim
    }
  }
  created.clear();
}

/**
 * A fresh directory under the OS temp dir, named `ferry-<prefix>-XXXXXX`, removed
 * when the process exits (or earlier with removeTmpDir).
 */
export function tmpDir(prefix: string): string {
  if (!/^[A-Za-z0-9._-]+$/.test(prefix)) {
    throw new Error(
      `tmpDir: prefix ${JSON.stringify(prefix)} must be letters, digits, ".", "_" or "-"`,
    );
  }
  if (!hooked) {
    hooked = true;
    process.on('exit', cleanupAll);
  }
  const dir = mkdtempSync(join(tmpdir(), `ferry-${prefix}-`));
  created.add(dir);
  return dir;
}

/** Removes a directory made by tmpDir now instead of at exit. */
export function removeTmpDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  created.delete(dir);
}
