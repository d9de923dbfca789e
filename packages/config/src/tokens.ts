/**
 * API token entries (FERRY_API_TOKENS, FERRY_ADMIN_TOKENS): `TOKEN`, or
 * `NAME=TOKEN@PATTERN[;PATTERN…]` where each pattern `HOST[:PORT]/REPO` limits
 * the targets the token may push to (`*` wildcards; host normalised as the
 * registry allowlist does, so `127.1` is `127.0.0.1`). An entry without `@` is
 * a bare token (it may contain `=`, as base64 does); an entry with `@` must be
 * the named form; `NAME=TOKEN@*` names a token without limiting it. Problems name the variable and the entry's position or name,
 * never the token value.
 */

export type TokenScope = 'push' | 'admin';

export interface TokenEntry {
  /** NAME, or `api#N` / `admin#N` (position in the variable) for a bare token. Never the token. */
  readonly name: string;
  readonly token: string;
  /** push: REST API and Bull Board read-only; admin: also Bull Board's writes. */
  readonly scope: TokenScope;
  /** Normalised `host[:port]/repo` globs; empty: any allowed target. */
  readonly patterns: readonly string[];
}

export interface TokenProblem {
  variable: string;
  message: string;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** Visible ASCII without the separators of the syntax (`,` lists, `@` patterns). */
const TOKEN_RE = /^[\x21-\x2b\x2d-\x3f\x41-\x7e]+$/;
/** A repository glob: lower-case path components, `*` anywhere. */
const REPO_RE = /^[a-z0-9*](?:[a-z0-9*._/-]*[a-z0-9*])?$/;

/** `host[:port]` lower-cased with IP literals normalised (as the allowlist does); undefined if no host. */
export function normalizePatternHost(host: string): string | undefined {
  if (!host || /[\s@?#\\/]/.test(host)) return undefined;
  if (host.includes('*')) {
    // a wildcard host is matched as a glob; only lower-case it
    return /^[A-Za-z0-9*.-]+(:[0-9*]{1,5})?$/.test(host) ? host.toLowerCase() : undefined;
  }
  const m = /^(\[[^\]]+\]|[^:]+)(?::([0-9]{1,5}))?$/.exec(host);
  if (!m) return undefined;
  const name = m[1]!;
  const port = m[2];
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) return undefined;
  try {
    const hostname = new URL(`http://${name}/`).hostname;
    if (!hostname) return undefined;
    return port === undefined ? hostname : `${hostname}:${port}`;
  } catch {
    return undefined;
  }
}

/** `HOST[:PORT]/REPO` with the host normalised (or `*`: any target); undefined when it is not such a pattern. */
export function normalizePattern(pattern: string): string | undefined {
  if (pattern === '*') return '*'; // any allowed target
  const slash = pattern.indexOf('/');
  if (slash <= 0) return undefined;
  const host = normalizePatternHost(pattern.slice(0, slash));
  const repo = pattern.slice(slash + 1);
  if (!host || !REPO_RE.test(repo) || repo.includes('//')) return undefined;
  return `${host}/${repo}`;
}

/** Parses one variable's entries; appends problems (never quoting a token) and returns the good entries. */
export function parseTokenEntries(
  variable: string,
  entries: readonly string[],
  scope: TokenScope,
  problems: TokenProblem[],
): TokenEntry[] {
  const out: TokenEntry[] = [];
  const prefix = scope === 'admin' ? 'admin' : 'api';
  entries.forEach((entry, i) => {
    const where = `entry ${i + 1}`;
    const at = entry.indexOf('@');
    if (at < 0) {
      if (/=[^=]/.test(entry)) {
        // "name=token" would silently become a token with that whole value
        problems.push({
          variable,
          message: `${where}: looks like NAME=TOKEN without @PATTERN; write NAME=TOKEN@* to name a token without limiting its targets`,
        });
        return;
      }
      if (!TOKEN_RE.test(entry)) {
        problems.push({
          variable,
          message: `${where}: a token is visible ASCII without spaces, "," or "@"`,
        });
        return;
      }
      out.push({ name: `${prefix}#${i + 1}`, token: entry, scope, patterns: [] });
      return;
    }
    const eq = entry.indexOf('=');
    const name = eq > 0 && eq < at ? entry.slice(0, eq) : '';
    if (!NAME_RE.test(name)) {
      problems.push({
        variable,
        message: `${where}: expected NAME=TOKEN@PATTERN[;PATTERN…] with NAME of letters, digits, ".", "_", "-"`,
      });
      return;
    }
    const token = entry.slice(eq + 1, at);
    if (!TOKEN_RE.test(token)) {
      problems.push({
        variable,
        message: `${where} (${name}): the token is empty or holds spaces, "," or "@"`,
      });
      return;
    }
    const patterns: string[] = [];
    for (const raw of entry.slice(at + 1).split(';')) {
      const p = normalizePattern(raw.trim());
      if (!p) {
        problems.push({
          variable,
          message: `${where} (${name}): pattern ${JSON.stringify(raw.trim())} is not HOST[:PORT]/REPOSITORY (\`*\` wildcards)`,
        });
        return;
      }
      patterns.push(p);
    }
    out.push({ name, token, scope, patterns });
  });
  return out;
}

/** Both variables' entries; a name or token given twice is a problem (which scope would it have?). */
export function parseTokens(
  apiTokens: readonly string[],
  adminTokens: readonly string[],
  problems: TokenProblem[],
): TokenEntry[] {
  const all = [
    ...parseTokenEntries('FERRY_API_TOKENS', apiTokens, 'push', problems),
    ...parseTokenEntries('FERRY_ADMIN_TOKENS', adminTokens, 'admin', problems),
  ];
  const names = new Set<string>();
  const tokens = new Set<string>();
  for (const e of all) {
    const variable = e.scope === 'admin' ? 'FERRY_ADMIN_TOKENS' : 'FERRY_API_TOKENS';
    if (names.has(e.name)) {
      problems.push({ variable, message: `the name ${e.name} is given to two tokens` });
    }
    if (tokens.has(e.token)) {
      problems.push({ variable, message: `${e.name}: the same token is listed twice` });
    }
    names.add(e.name);
    tokens.add(e.token);
  }
  return all;
}
