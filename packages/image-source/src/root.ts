import { realpath } from 'node:fs/promises';
import { dirname, isAbsolute, relative, resolve, sep } from 'node:path';
import { SourceError, SourceErrorCodes } from './errors';

/** True when `child` (a real path) is `root` or below it. */
export function isInside(root: string, child: string): boolean {
  if (child === root) return true;
  const rel = relative(root, child);
  return rel !== '' && !rel.startsWith('..' + sep) && rel !== '..' && !isAbsolute(rel);
}

/**
 * The real path of `path` (relative paths are taken from `root`), provided it
 * lies inside the real path of `root` — every symlink on the way resolved.
 * Throws FERRY_SOURCE_NOT_FOUND when it does not exist and
 * FERRY_SOURCE_OUTSIDE_ROOT when it (or a symlink in it) leads outside.
 */
export async function resolveInsideRoot(
  root: string,
  path: string,
  field = 'source',
): Promise<string> {
  if (!root)
    throw new SourceError(SourceErrorCodes.BAD_SOURCE, 'no source root configured', 'root');
  let realRoot: string;
  try {
    realRoot = await realpath(resolve(root));
  } catch (e) {
    throw new SourceError(
      SourceErrorCodes.SOURCE_NOT_FOUND,
      `source root ${root} does not exist (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      'root',
      { cause: e },
    );
  }
  const wanted = resolve(realRoot, path);
  // Check the lexical path first, so a "../" escape is named as such even when the target is missing.
  if (!isInside(realRoot, wanted) && !isInside(resolve(root), resolve(root, path))) {
    throw new SourceError(
      SourceErrorCodes.SOURCE_OUTSIDE_ROOT,
      `${path} is outside the source root ${root}`,
      field,
    );
  }
  let real: string;
  try {
    real = await realpath(isAbsolute(path) ? path : resolve(realRoot, path));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // Do not reveal whether something exists outside the root: if the deepest existing
    // ancestor already resolves outside, say so instead of "does not exist".
    let probe = isAbsolute(path) ? path : resolve(realRoot, path);
    while (dirname(probe) !== probe) {
      probe = dirname(probe);
      const r = await realpath(probe).catch(() => undefined);
      if (r !== undefined) {
        if (!isInside(realRoot, r)) {
          throw new SourceError(
            SourceErrorCodes.SOURCE_OUTSIDE_ROOT,
            `${path} is outside the source root ${root}`,
            field,
          );
        }
        break;
      }
    }
    throw new SourceError(
      SourceErrorCodes.SOURCE_NOT_FOUND,
      code === 'ENOENT' || code === 'ENOTDIR'
        ? `${path} does not exist`
        : `${path} cannot be read (${code})`,
      field,
      { cause: e },
    );
  }
  if (!isInside(realRoot, real)) {
    throw new SourceError(
      SourceErrorCodes.SOURCE_OUTSIDE_ROOT,
      `${path} resolves to ${real}, outside the source root ${root}`,
      field,
    );
  }
  return real;
}
