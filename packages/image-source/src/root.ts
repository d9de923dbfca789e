import { constants as fsConstants, readlink as readlinkCb } from 'node:fs';
import { open as openFile, realpath, type FileHandle } from 'node:fs/promises';
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
  return (await resolveWithRoot(root, path, field)).real;
}

/** resolveInsideRoot, also giving the root's real path it checked against. */
async function resolveWithRoot(
  root: string,
  path: string,
  field: string,
): Promise<{ real: string; realRoot: string }> {
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
  return { real, realRoot };
}

/** The real path of the root (for checks on opened descriptors). */
export async function realRootOf(root: string): Promise<string> {
  try {
    return await realpath(resolve(root));
  } catch (e) {
    throw new SourceError(
      SourceErrorCodes.SOURCE_NOT_FOUND,
      `source root ${root} does not exist`,
      'root',
      {
        cause: e,
      },
    );
  }
}

/**
 * Where an open descriptor really points (Linux: /proc/self/fd), or undefined
 * where that cannot be known.
 */
export function fdPath(fd: number, cb: (path: string | undefined) => void): void {
  readlinkCb(`/proc/self/fd/${fd}`, (err, target) => cb(err ? undefined : target));
}

/** Flags for reading source files: never through a final symlink, never blocking on a FIFO. */
export const SAFE_READ_FLAGS =
  fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK;

/**
 * Opens a regular file inside the root for reading. The path is resolved and
 * checked (resolveInsideRoot), opened without following a final symlink, and
 * the descriptor itself is checked to point inside the root — so a path
 * swapped for a symlink between the check and the open is refused.
 */
export async function openInsideRoot(
  root: string,
  path: string,
  field = 'source',
): Promise<FileHandle> {
  // The root's real path as the path was checked against it (one realpath of the root, not two).
  const { real, realRoot } = await resolveWithRoot(root, path, field);
  let fh: FileHandle;
  try {
    fh = await openFile(real, SAFE_READ_FLAGS);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new SourceError(
      code === 'ELOOP' ? SourceErrorCodes.SOURCE_OUTSIDE_ROOT : SourceErrorCodes.SOURCE_NOT_FOUND,
      code === 'ELOOP'
        ? `${path} became a symlink while it was opened`
        : `${path} cannot be opened (${code})`,
      field,
      { cause: e },
    );
  }
  try {
    const actual = await new Promise<string | undefined>((r) => fdPath(fh.fd, r));
    if (actual !== undefined && !isInside(realRoot, actual)) {
      throw new SourceError(
        SourceErrorCodes.SOURCE_OUTSIDE_ROOT,
        `${path} resolved to ${actual} while it was opened, outside the source root ${root}`,
        field,
      );
    }
    const st = await fh.stat();
    if (!st.isFile()) {
      throw new SourceError(SourceErrorCodes.BAD_SOURCE, `${path} is not a regular file`, field);
    }
  } catch (e) {
    await fh.close();
    throw e;
  }
  return fh;
}
