import { SourceError, SourceErrorCodes } from './errors';

export type Transport = 'oci' | 'docker-archive' | 'dir';

export interface SourceSpec {
  transport: Transport;
  path: string;
  /** oci: the org.opencontainers.image.ref.name; docker-archive: a `name:tag` or `@N` (index in manifest.json). */
  ref?: string;
}

const TRANSPORTS: readonly Transport[] = ['oci', 'docker-archive', 'dir'];
// containers/image's refRegexp for oci: references (image names / tags).
const OCI_REF_RE = /^[a-zA-Z0-9._-]+(?:[:/@+][a-zA-Z0-9._-]+)*$/;
const ARCHIVE_REF_RE =
  /^(?:@\d+|[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d+)?(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?)$/;

function bad(message: string): SourceError {
  return new SourceError(SourceErrorCodes.BAD_SOURCE, message, 'source');
}

/**
 * Parses skopeo's transport syntax: `oci:PATH[:REF]`,
 * `docker-archive:PATH[:REF]`, `dir:PATH`. As in containers/image, PATH ends
 * at the first `:` for oci: and docker-archive:; dir: takes everything.
 */
export function parseSource(s: string): SourceSpec {
  if (typeof s !== 'string' || s.length === 0) throw bad('source must be a non-empty string');
  if (s.length > 4096) throw bad('source is longer than 4096 characters');
  if (s.includes('\0')) throw bad('source contains a NUL byte');
  const colon = s.indexOf(':');
  if (colon < 0) {
    throw bad(
      `source ${JSON.stringify(s)} has no transport; use oci:PATH[:REF], docker-archive:PATH[:REF] or dir:PATH`,
    );
  }
  const transport = s.slice(0, colon) as Transport;
  if (!TRANSPORTS.includes(transport)) {
    throw bad(
      `unknown transport ${JSON.stringify(s.slice(0, colon))} in ${JSON.stringify(s)}; use oci:, docker-archive: or dir:`,
    );
  }
  const rest = s.slice(colon + 1);
  if (transport === 'dir') {
    if (!rest) throw bad('dir: needs a PATH');
    return { transport, path: rest };
  }
  const c2 = rest.indexOf(':');
  const path = c2 < 0 ? rest : rest.slice(0, c2);
  const ref = c2 < 0 ? undefined : rest.slice(c2 + 1);
  if (!path) throw bad(`${transport}: needs a PATH`);
  if (ref !== undefined) {
    if (ref === '') throw bad(`${transport}:${path}: has an empty REF after ":"`);
    const re = transport === 'oci' ? OCI_REF_RE : ARCHIVE_REF_RE;
    if (!re.test(ref)) {
      throw bad(
        `${JSON.stringify(ref)} is not a valid ${transport} reference in ${JSON.stringify(s)}`,
      );
    }
  }
  return ref === undefined ? { transport, path } : { transport, path, ref };
}

export function formatSource(spec: SourceSpec): string {
  return `${spec.transport}:${spec.path}${spec.ref ? ':' + spec.ref : ''}`;
}
