import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';

const TRANSPORTS = ['oci', 'docker-archive', 'dir'];

/**
 * SOURCE as sent to the server: a local PATH that exists is made absolute
 * (the server resolves it inside its source root); anything else is sent as
 * written and the server explains what is wrong with it.
 */
export function absolutizeSource(source: string, cwd: string): string {
  const colon = source.indexOf(':');
  if (colon < 0) return source;
  const transport = source.slice(0, colon);
  if (!TRANSPORTS.includes(transport)) return source;
  const rest = source.slice(colon + 1);
  let path = rest;
  let ref = '';
  if (transport !== 'dir') {
    const c2 = rest.indexOf(':');
    if (c2 >= 0) {
      path = rest.slice(0, c2);
      ref = rest.slice(c2);
    }
  }
  if (!path || isAbsolute(path)) return source;
  const abs = resolve(cwd, path);
  return existsSync(abs) ? `${transport}:${abs}${ref}` : source;
}
