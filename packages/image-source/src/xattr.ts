/**
 * File capabilities (`security.capability`) of dir: layer files. Node has no
 * xattr API: the native addon fs-xattr (ESM-only, hence the dynamic import)
 * reads them. It is loaded when a dir: source is opened; if it cannot be
 * loaded, or a read fails for any reason other than "no such attribute",
 * the open / the layer fails — capabilities are never dropped silently.
 */
import { SourceError, SourceErrorCodes } from './errors';

/** The only extended attribute Ferry stores (as PAX SCHILY.xattr.security.capability). */
export const CAPABILITY_XATTR = 'security.capability';

type GetAttribute = (path: string, attr: string) => Promise<Buffer>;

export interface XattrReader {
  /**
   * The capability of the file open as `fd` (read through /proc/self/fd/N, so it is that very
   * file, never a path swapped since), or undefined when it has none.
   */
  capability(fd: number, label: string): Promise<Buffer | undefined>;
}

let loaded: Promise<GetAttribute> | undefined;

function unavailable(message: string, cause?: unknown): SourceError {
  return new SourceError(
    SourceErrorCodes.XATTRS_UNAVAILABLE,
    message,
    'source',
    cause ? { cause } : undefined,
  );
}

async function load(): Promise<GetAttribute> {
  try {
    const mod = (await import('fs-xattr')) as { getAttribute?: GetAttribute };
    if (typeof mod.getAttribute !== 'function') throw new Error('fs-xattr has no getAttribute');
    return mod.getAttribute;
  } catch (e) {
    throw unavailable(
      `dir: sources need the native addon fs-xattr to read file capabilities, and it cannot be loaded ` +
        `(${(e as Error).message}); reinstall with a C toolchain (npm rebuild fs-xattr)`,
      e,
    );
  }
}

/** Loads the addon once; throws FERRY_XATTRS_UNAVAILABLE when it cannot be loaded. */
export async function xattrReader(): Promise<XattrReader> {
  loaded ??= load();
  let get: GetAttribute;
  try {
    get = await loaded;
  } catch (e) {
    loaded = undefined; // a later open may try again (e.g. after a rebuild)
    throw e;
  }
  return {
    async capability(fd, label) {
      try {
        return await get(`/proc/self/fd/${fd}`, CAPABILITY_XATTR);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        // No attribute, or a file system without xattrs (which cannot carry a capability).
        if (code === 'ENODATA' || code === 'ENOATTR' || code === 'ENOTSUP' || code === 'EOPNOTSUPP')
          return undefined;
        throw unavailable(`${label}: cannot read ${CAPABILITY_XATTR}: ${(e as Error).message}`, e);
      }
    },
  };
}
