import { readdir, readFile, realpath } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import type { PushLayout } from '@ferry/queue';
import { ApiError } from './errors';

/*
 * Source and target checks made before anything is enqueued.
 * TEMPORARY: local stand-ins until @ferry/image-source (parseSource,
 * openSource) and @ferry/registry-client (parseReference, isAllowed) export
 * their entry points; then this file delegates to them.
 */

export interface InspectedSource {
  /** transport:REALPATH[:REF] — the path as checked, inside the root. */
  source: string;
  layout: PushLayout;
}

/** Errors in the content of a source (not in the request): the push is recorded as failed. */
export class SourceContentError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface Inspector {
  inspectSource(
    source: string,
    opts: { root: string; platform?: string },
  ): Promise<InspectedSource>;
  /** Returns the normalised target (tag defaulted to latest) and its registry host. */
  checkTarget(target: string, allow: readonly string[]): { target: string; registry: string };
}

function isInside(root: string, child: string): boolean {
  const rel = relative(root, child);
  return rel === '' || (!rel.startsWith('..' + sep) && rel !== '..' && !isAbsolute(rel));
}

async function resolveInRoot(root: string, path: string): Promise<string> {
  const realRoot = await realpath(resolve(root));
  const lexical = resolve(realRoot, path);
  if (!isInside(realRoot, lexical) && !isInside(resolve(root), resolve(root, path))) {
    throw new ApiError('FERRY_SOURCE_OUTSIDE_ROOT', `${path} is outside the source root`, 'source');
  }
  let real: string;
  try {
    real = await realpath(isAbsolute(path) ? path : lexical);
  } catch {
    throw new ApiError('FERRY_SOURCE_NOT_FOUND', `${path} does not exist`, 'source');
  }
  if (!isInside(realRoot, real)) {
    throw new ApiError(
      'FERRY_SOURCE_OUTSIDE_ROOT',
      `${path} resolves outside the source root`,
      'source',
    );
  }
  return real;
}

function parseSourceLocal(s: string): { transport: string; path: string; ref?: string } {
  const m = /^(oci|docker-archive|dir):(.+)$/s.exec(s);
  if (!m) {
    const t = s.includes(':') ? s.slice(0, s.indexOf(':')) : '';
    throw new ApiError(
      'FERRY_BAD_SOURCE',
      t
        ? `unknown transport ${JSON.stringify(t)}; use oci:PATH[:REF], docker-archive:PATH[:REF] or dir:PATH`
        : 'source has no transport; use oci:PATH[:REF], docker-archive:PATH[:REF] or dir:PATH',
      'source',
    );
  }
  if (m[1] === 'dir') return { transport: 'dir', path: m[2] };
  const c = m[2].indexOf(':');
  return c < 0
    ? { transport: m[1], path: m[2] }
    : { transport: m[1], path: m[2].slice(0, c), ref: m[2].slice(c + 1) };
}

async function countLayers(transport: string, real: string): Promise<PushLayout> {
  if (transport === 'dir') {
    let entries;
    try {
      entries = await readdir(join(real, 'layers'), { withFileTypes: true });
    } catch {
      throw new ApiError('FERRY_SOURCE_NOT_FOUND', `${real}/layers does not exist`, 'source');
    }
    return { images: [{ layers: entries.filter((e) => e.isDirectory()).length }] };
  }
  if (transport === 'oci') {
    try {
      const index = JSON.parse(await readFile(join(real, 'index.json'), 'utf8')) as {
        manifests: { digest: string }[];
      };
      const d = index.manifests[0].digest.split(':');
      const manifest = JSON.parse(await readFile(join(real, 'blobs', d[0], d[1]), 'utf8')) as {
        layers: unknown[];
      };
      return { images: [{ layers: manifest.layers.length }] };
    } catch (e) {
      throw new SourceContentError(
        'FERRY_MANIFEST_INVALID',
        `cannot read the OCI layout: ${(e as Error).message}`,
      );
    }
  }
  throw new ApiError(
    'FERRY_BAD_SOURCE',
    `${transport}: sources need @ferry/image-source`,
    'source',
  );
}

const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;

function checkTargetLocal(
  target: string,
  allow: readonly string[],
): { target: string; registry: string } {
  const bad = (why: string) =>
    new ApiError(
      'FERRY_BAD_REFERENCE',
      `invalid reference ${JSON.stringify(target)}: ${why}`,
      'target',
    );
  if (target.includes('@')) throw bad('a push target names a tag, not a digest');
  const slash = target.indexOf('/');
  if (slash < 0) throw bad('write HOST[:PORT]/REPOSITORY[:TAG]');
  const registry = target.slice(0, slash);
  let rest = target.slice(slash + 1);
  let tag = 'latest';
  const colon = rest.lastIndexOf(':');
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(`bad tag ${JSON.stringify(tag)}`);
  }
  if (
    !/^[A-Za-z0-9.-]+(:\d{1,5})?$/.test(registry) ||
    !(registry.includes('.') || registry.includes(':') || registry === 'localhost')
  ) {
    throw bad('the first component must be a registry host');
  }
  if (!rest.split('/').every((c) => COMPONENT.test(c))) throw bad('bad repository name');
  const host = registry.toLowerCase();
  const allowed = allow.some((entry) => {
    const re = new RegExp(
      '^' +
        entry
          .toLowerCase()
          .replace(/[.+?^${}()|[\]\\]/g, '\\$&')
          .replace(/\*/g, '[^.:]*') +
        (entry.includes(':') ? '$' : '(:\\d+)?$'),
    );
    return re.test(host);
  });
  if (!allowed)
    throw new ApiError(
      'FERRY_REGISTRY_NOT_ALLOWED',
      `registry ${registry} is not in FERRY_REGISTRY_ALLOW`,
      'target',
    );
  return { target: `${registry}/${rest}:${tag}`, registry };
}

export const defaultInspector: Inspector = {
  async inspectSource(source, opts) {
    const spec = parseSourceLocal(source);
    const real = await resolveInRoot(opts.root, spec.path);
    const layout = await countLayers(spec.transport, real);
    return { source: `${spec.transport}:${real}${spec.ref ? ':' + spec.ref : ''}`, layout };
  },
  checkTarget: checkTargetLocal,
};
