import { RegistryError, parseReference } from '@ferry/registry-client';
import { SourceError, SourceErrorCodes } from './errors';

/** Transports read from files below the source root. */
export type LocalTransport = 'oci' | 'docker-archive' | 'dir';
export type Transport = LocalTransport | 'docker';

export interface LocalSourceSpec {
  transport: LocalTransport;
  path: string;
  /** oci: the org.opencontainers.image.ref.name; docker-archive: a `name:tag` or `@N` (index in manifest.json). */
  ref?: string;
}

/** `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: an image in a registry. */
export interface DockerSourceSpec {
  transport: 'docker';
  /** What follows `docker://`, as written: `HOST[:PORT]/REPO[:TAG|@DIGEST]` (for messages). */
  path: string;
  /** `host[:port]` as written (Docker Hub's names folded into `docker.io`). */
  registry: string;
  repository: string;
  /**
   * The tag to resolve. When the source names neither a tag nor a digest it is `latest`
   * (as docker and skopeo do) and `tagGiven` is false; undefined when a digest is given.
   */
  tag?: string;
  /** Whether the source string named a tag (false: `latest` implied, or every tag with --all-tags). */
  tagGiven: boolean;
  /** The manifest digest named with `@`, when given. */
  digest?: string;
  ref?: undefined;
}

export type SourceSpec = LocalSourceSpec | DockerSourceSpec;

const TRANSPORTS: readonly Transport[] = ['oci', 'docker-archive', 'dir', 'docker'];
// containers/image's refRegexp for oci: references (image names / tags).
const OCI_REF_RE = /^[a-zA-Z0-9._-]+(?:[:/@+][a-zA-Z0-9._-]+)*$/;
const ARCHIVE_REF_RE =
  /^(?:@\d+|[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d+)?(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?)$/;

function bad(message: string): SourceError {
  return new SourceError(SourceErrorCodes.BAD_SOURCE, message, 'source');
}

/** Docker Hub's spellings: a source on them names the registry as `docker.io`. */
const HUB_NAMES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

/**
 * `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` → DockerSourceSpec. The host is
 * required (no implicit Docker Hub: the allowlist names hosts), and a tag
 * and a digest together are refused, as containers/image does.
 */
function parseDocker(s: string): DockerSourceSpec {
  const rest = s.slice('docker://'.length);
  const usage = 'write docker://HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]';
  if (!rest) throw bad(`docker:// needs a registry host and a repository; ${usage}`);
  const slash = rest.indexOf('/');
  const first = slash < 0 ? rest : rest.slice(0, slash);
  const looksLikeHost =
    first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('[');
  if (slash < 0 || !looksLikeHost) {
    throw bad(
      `${JSON.stringify(s)} names no registry host (${JSON.stringify(first)} is not HOST[:PORT]); ${usage}, e.g. docker://docker.io/library/busybox:latest`,
    );
  }
  if (slash === rest.length - 1) throw bad(`${JSON.stringify(s)} names no repository; ${usage}`);
  let ref;
  try {
    ref = parseReference(rest);
  } catch (e) {
    if (e instanceof RegistryError) {
      throw new SourceError(
        SourceErrorCodes.BAD_SOURCE,
        `docker:// source: ${e.message.replace(/^invalid reference "[^"]*": /, '')} in ${JSON.stringify(s)}; ${usage}`,
        'source',
        { cause: e },
      );
    }
    throw e;
  }
  const registry = HUB_NAMES.has(ref.registry.toLowerCase()) ? 'docker.io' : ref.registry;
  if (ref.tag !== undefined && ref.digest !== undefined) {
    throw bad(
      `${JSON.stringify(s)} names both a tag (${ref.tag}) and a digest; name one: docker://${registry}/${ref.repository}@${ref.digest}`,
    );
  }
  if (ref.digest !== undefined && !ref.digest.startsWith('sha256:')) {
    throw bad(`${JSON.stringify(s)}: only sha256 manifest digests are supported`);
  }
  const spec: DockerSourceSpec = {
    transport: 'docker',
    path: rest,
    registry,
    repository: ref.repository,
    tagGiven: ref.tag !== undefined,
  };
  if (ref.digest !== undefined) spec.digest = ref.digest;
  else spec.tag = ref.tag ?? 'latest';
  return spec;
}

/**
 * Parses skopeo's transport syntax: `oci:PATH[:REF]`,
 * `docker-archive:PATH[:REF]`, `dir:PATH`, `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`.
 * As in containers/image, PATH ends at the first `:` for oci: and
 * docker-archive:; dir: takes everything.
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
      `unknown transport ${JSON.stringify(s.slice(0, colon))} in ${JSON.stringify(s)}; use oci:, docker-archive:, dir: or docker://`,
    );
  }
  if (transport === 'docker') {
    if (!s.startsWith('docker://')) {
      throw bad(
        `${JSON.stringify(s)}: the docker transport is written docker://HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]`,
      );
    }
    return parseDocker(s);
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
  if (spec.transport === 'docker') {
    const ref = spec.digest ? `@${spec.digest}` : spec.tagGiven && spec.tag ? `:${spec.tag}` : '';
    return `docker://${spec.registry}/${spec.repository}${ref}`;
  }
  return `${spec.transport}:${spec.path}${spec.ref ? ':' + spec.ref : ''}`;
}
