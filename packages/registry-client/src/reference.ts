/**
 * Docker image references, parsed with the grammar of distribution/reference:
 *
 *   reference  := name [ ":" tag ] [ "@" digest ]
 *   name       := [domain "/"] path-component ["/" path-component]*
 *   domain     := host [":" port]        host: dns name, IPv4, or [IPv6]
 *   path-comp  := [a-z0-9]+ ( ( [._] | "__" | "-"+ ) [a-z0-9]+ )*
 *   tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
 *   digest     := algorithm ":" hex      (sha256: 64 lower-case hex)
 *
 * The first component is a registry host only if it contains "." or ":" or
 * is "localhost" (Docker's rule); otherwise the reference is on docker.io and
 * a single-component name gets "library/".
 */
import { ErrorCodes, RegistryError } from './errors';

export interface Reference {
  /** host[:port]; 'docker.io' for Docker Hub ('index.docker.io' is folded into it). */
  registry: string;
  /** Repository path, 'library/' added for single Docker Hub names. */
  repository: string;
  tag?: string;
  digest?: string;
  toString(): string;
}

export const DOCKER_HUB = 'docker.io';
const NAME_MAX = 255;

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;
const IPV6_BRACKETED = /^\[[0-9A-Fa-f:.]+(?:%[0-9A-Za-z.]+)?\]$/;
const DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

function bad(input: string, why: string): RegistryError {
  return new RegistryError(ErrorCodes.BAD_REFERENCE, `invalid reference "${input}": ${why}`);
}

/** Checks a digest string; returns it or throws FERRY_BAD_REFERENCE explaining what is wrong. */
export function validateDigest(d: string, input = d): string {
  if (!DIGEST.test(d)) return fail();
  const [alg, hex] = [d.slice(0, d.indexOf(':')), d.slice(d.indexOf(':') + 1)];
  if (alg === 'sha256') {
    if (!/^[a-f0-9]{64}$/.test(hex))
      throw bad(input, `digest "${d}": sha256 needs 64 lower-case hex characters`);
  } else if (alg === 'sha512') {
    if (!/^[a-f0-9]{128}$/.test(hex))
      throw bad(input, `digest "${d}": sha512 needs 128 lower-case hex characters`);
  } else if (!/^[a-fA-F0-9]{32,}$/.test(hex)) {
    throw bad(input, `digest "${d}": unsupported algorithm "${alg}"`);
  }
  return d;
  function fail(): never {
    throw bad(input, `digest "${d}" is not ALGORITHM:HEX`);
  }
}

/** Checks a host[:port] as it may appear as the first component of a reference. */
export function validateRegistryHost(host: string, input = host): void {
  let h = host;
  let port: string | undefined;
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    if (end < 0) throw bad(input, `registry host "${host}" has an unclosed "["`);
    if (h.length > end + 1) {
      if (h[end + 1] !== ':') throw bad(input, `registry host "${host}" is malformed`);
      port = h.slice(end + 2);
    }
    h = h.slice(0, end + 1);
    if (!IPV6_BRACKETED.test(h)) throw bad(input, `"${h}" is not an IPv6 address`);
  } else {
    const i = h.lastIndexOf(':');
    if (i >= 0) {
      port = h.slice(i + 1);
      h = h.slice(0, i);
    }
    if (!h) throw bad(input, `registry host "${host}" has no host name`);
    for (const c of h.split('.')) {
      if (!DOMAIN_COMPONENT.test(c)) {
        throw bad(input, `registry host "${host}": "${c}" is not a valid host name component`);
      }
    }
  }
  if (port !== undefined) {
    if (!/^[0-9]+$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
      throw bad(input, `registry port "${port}" must be a number from 1 to 65535`);
    }
  }
}

/** Checks a repository path; throws naming the bad component. */
export function validateRepository(repo: string, input = repo): void {
  if (!repo) throw bad(input, 'missing repository name');
  if (repo.length > NAME_MAX)
    throw bad(input, `repository name is ${repo.length} characters, more than ${NAME_MAX}`);
  for (const c of repo.split('/')) {
    if (!c) throw bad(input, 'repository name has an empty path component');
    if (!PATH_COMPONENT.test(c)) {
      if (c !== c.toLowerCase()) throw bad(input, 'repository name must be lowercase');
      throw bad(
        input,
        `repository path component "${c}" may only hold a-z, 0-9 and single separators (".", "_", "__", "-") between them`,
      );
    }
  }
}

/** Checks a tag; throws naming what is wrong. */
export function validateTag(tag: string, input = tag): void {
  if (!tag) throw bad(input, 'empty tag');
  if (tag.length > 128) throw bad(input, `tag is ${tag.length} characters, more than 128`);
  if (!TAG.test(tag)) {
    throw bad(
      input,
      `tag "${tag}" may only hold A-Z, a-z, 0-9, "_", "." and "-" and must not start with "." or "-"`,
    );
  }
}

function isDomain(first: string): boolean {
  return (
    first.includes('.') ||
    first.includes(':') ||
    first === 'localhost' ||
    first.startsWith('[') ||
    first !== first.toLowerCase()
  );
}

class ParsedReference implements Reference {
  constructor(
    readonly registry: string,
    readonly repository: string,
    readonly tag?: string,
    readonly digest?: string,
  ) {}
  toString(): string {
    return (
      `${this.registry}/${this.repository}` +
      (this.tag ? `:${this.tag}` : '') +
      (this.digest ? `@${this.digest}` : '')
    );
  }
}

/** Builds a Reference from parts (validated). */
export function makeReference(
  registry: string,
  repository: string,
  tag?: string,
  digest?: string,
): Reference {
  validateRegistryHost(registry);
  validateRepository(repository);
  if (tag !== undefined) validateTag(tag);
  if (digest !== undefined) validateDigest(digest);
  return new ParsedReference(registry, repository, tag, digest);
}

/** Parses a Docker reference; throws RegistryError FERRY_BAD_REFERENCE naming what is wrong. */
export function parseReference(s: string): Reference {
  if (typeof s !== 'string' || s.length === 0) throw bad(String(s), 'reference is empty');
  if (/\s/.test(s)) throw bad(s, 'reference contains white space');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(s)) {
    throw bad(s, 'a reference has no scheme; write HOST[:PORT]/REPOSITORY[:TAG]');
  }
  let rest = s;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = validateDigest(rest.slice(at + 1), s);
    rest = rest.slice(0, at);
  }
  let registry = DOCKER_HUB;
  const slash = rest.indexOf('/');
  if (slash >= 0 && isDomain(rest.slice(0, slash))) {
    registry = rest.slice(0, slash);
    rest = rest.slice(slash + 1);
    validateRegistryHost(registry, s);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.indexOf(':', lastSlash + 1);
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    validateTag(tag, s);
  }
  if (!rest) throw bad(s, 'missing repository name');
  validateRepository(rest, s);
  if (registry.length + 1 + rest.length > NAME_MAX) {
    throw bad(s, `name is longer than ${NAME_MAX} characters`);
  }
  const lower = registry.toLowerCase();
  if (lower === 'index.docker.io' || lower === 'docker.io') {
    registry = DOCKER_HUB;
    if (!rest.includes('/')) rest = `library/${rest}`;
  }
  return new ParsedReference(registry, rest, tag, digest);
}
