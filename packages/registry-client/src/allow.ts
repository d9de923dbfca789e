/**
 * Registry allowlist and insecure (plain HTTP) list. Hosts are compared after
 * normalisation — lower-case, IP literals in their canonical form (127.1 →
 * 127.0.0.1, [0:0::1] → [::1]) — and ports as written (":443" stays).
 */
import { BlockList, isIP } from 'node:net';
import { ErrorCodes, RegistryError } from './errors';

export interface HostParts {
  /** Host name or IP; IPv6 in brackets. */
  hostname: string;
  port?: string;
}

function invalid(host: string, why: string): RegistryError {
  return new RegistryError(ErrorCodes.INVALID_ARGUMENT, `invalid registry host "${host}": ${why}`);
}

/** Splits and normalises host[:port]. Throws FERRY_INVALID_ARGUMENT for something that is no host. */
export function splitHost(input: string): HostParts {
  const host = input.trim();
  if (!host) throw invalid(input, 'empty');
  if (/[/\s@?#\\]/.test(host))
    throw invalid(input, 'a host may not contain "/", "@", "?", "#" or spaces');
  let name: string;
  let port: string | undefined;
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    if (end < 0) throw invalid(input, 'unclosed "["');
    name = host.slice(0, end + 1);
    const tail = host.slice(end + 1);
    if (tail) {
      if (!tail.startsWith(':')) throw invalid(input, `unexpected "${tail}" after the address`);
      port = tail.slice(1);
    }
  } else if ((host.match(/:/g) ?? []).length > 1) {
    name = `[${host}]`; // a bare IPv6 literal
  } else {
    const i = host.indexOf(':');
    name = i >= 0 ? host.slice(0, i) : host;
    port = i >= 0 ? host.slice(i + 1) : undefined;
  }
  if (port !== undefined && !/^[0-9]{1,5}$/.test(port)) {
    throw invalid(input, `port "${port}" is not a number`);
  }
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) {
    throw invalid(input, `port ${port} is out of range`);
  }
  let hostname: string;
  try {
    hostname = new URL(`http://${name}/`).hostname;
  } catch {
    throw invalid(input, `"${name}" is not a host name or IP address`);
  }
  if (!hostname) throw invalid(input, 'no host name');
  return port === undefined ? { hostname } : { hostname, port };
}

/** host[:port] with IP literals normalised and the name lower-cased; the port kept as written. */
export function normalizeHost(host: string): string {
  const p = splitHost(host);
  return p.port === undefined ? p.hostname : `${p.hostname}:${p.port}`;
}

function globToRegExp(glob: string): RegExp {
  const esc = glob
    .split('*')
    .map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${esc}$`, 'i');
}

function splitEntry(entry: string): { host: string; port?: string } {
  const e = entry.trim().toLowerCase();
  if (e.startsWith('[')) {
    const end = e.indexOf(']');
    const tail = end >= 0 ? e.slice(end + 1) : '';
    return tail.startsWith(':') ? { host: e.slice(0, end + 1), port: tail.slice(1) } : { host: e };
  }
  if ((e.match(/:/g) ?? []).length > 1) return { host: `[${e}]` };
  const i = e.indexOf(':');
  return i >= 0 ? { host: e.slice(0, i), port: e.slice(i + 1) } : { host: e };
}

/** Matches one entry (host[:port], `*` wildcards; no port = any port) against a normalised host. */
function entryMatches(entry: string, target: HostParts): boolean {
  const { host, port } = splitEntry(entry);
  if (!host) return false;
  if (port !== undefined && port !== '*' && port !== target.port) {
    if (!port.includes('*') || !globToRegExp(port).test(target.port ?? '')) return false;
  }
  if (host.includes('*')) return globToRegExp(host).test(target.hostname);
  let norm: string;
  try {
    norm = splitHost(host).hostname;
  } catch {
    return false;
  }
  return norm === target.hostname;
}

/**
 * True when host (host[:port]) matches an allowlist entry: `host[:port]` with
 * `*` wildcards; an entry without a port allows every port of that host.
 */
export function isAllowed(host: string, allow: readonly string[]): boolean {
  let target: HostParts;
  try {
    target = splitHost(host);
  } catch {
    return false;
  }
  return allow.some((entry) => entry.trim() !== '' && entryMatches(entry, target));
}

function ipFamily(hostname: string): { addr: string; type: 'ipv4' | 'ipv6' } | undefined {
  const bare = hostname.startsWith('[') ? hostname.slice(1, -1) : hostname;
  const v = isIP(bare);
  if (v === 4) return { addr: bare, type: 'ipv4' };
  if (v === 6) return { addr: bare, type: 'ipv6' };
  return undefined;
}

/** True when host is reached over plain HTTP: entries are host names, IPs, host:port, or CIDRs (127.0.0.0/8). */
export function isInsecure(host: string, insecure: readonly string[]): boolean {
  let target: HostParts;
  try {
    target = splitHost(host);
  } catch {
    return false;
  }
  const ip = ipFamily(target.hostname);
  for (const raw of insecure) {
    const entry = raw.trim();
    if (!entry) continue;
    const slash = entry.indexOf('/');
    if (slash >= 0) {
      if (!ip) continue;
      const base = entry.slice(0, slash).replace(/^\[|\]$/g, '');
      const bits = Number(entry.slice(slash + 1));
      const type = isIP(base) === 6 ? 'ipv6' : isIP(base) === 4 ? 'ipv4' : undefined;
      if (!type || !Number.isInteger(bits)) continue;
      const list = new BlockList();
      try {
        list.addSubnet(base, bits, type);
      } catch {
        continue;
      }
      if (list.check(ip.addr, ip.type)) return true;
      continue;
    }
    if (entryMatches(entry, target)) return true;
  }
  return false;
}
