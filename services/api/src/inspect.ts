import {
  formatSource,
  openSource,
  type OpenedSource,
  snapshotKey,
  SourceError,
  SourceErrorCodes,
} from '@ferry/image-source';
import type { DirOptions, PushLayout, SourcePin } from '@ferry/queue';
import { isAllowed, normalizeHost, parseReference } from '@ferry/registry-client';
import { pushLayoutOf, type SourceRef } from '@ferry/runtime';
import { ApiError } from './errors';

/*
 * Source and target checks made before anything is enqueued. The source is
 * opened (metadata only: index, manifests, directory listing — never layer
 * bytes) to count each image's layers for the flow.
 */

export interface InspectedSource {
  /** transport:REALPATH[:REF] — the path as checked, inside the root. */
  source: string;
  layout: PushLayout;
  /** What the source is now: every job reads it through this. */
  pin: SourcePin;
}

/** A problem in the content of a source (not in the request): the push is recorded as failed. */
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
    opts: { root: string; platform?: string; gzipLevel?: number; dirOptions?: DirOptions },
  ): Promise<InspectedSource>;
  /** Returns the normalised target (tag defaulted to latest) and its registry host. */
  checkTarget(target: string, allow: readonly string[]): { target: string; registry: string };
}

/** Errors the caller can fix; every other SourceError is about the content of the source. */
const REQUEST_ERRORS = new Set<string>([
  SourceErrorCodes.BAD_SOURCE,
  SourceErrorCodes.SOURCE_NOT_FOUND,
  SourceErrorCodes.SOURCE_OUTSIDE_ROOT,
  SourceErrorCodes.PLATFORM_NOT_FOUND,
]);

/** Told of each source the inspector opened and pinned (the workers of this process may reuse it). */
export type OnOpened = (ref: SourceRef, opened: OpenedSource) => void;

/** The inspector; `onOpened` gets each pinned opening as the jobs will name it. */
export function makeInspector(onOpened?: OnOpened): Inspector {
  return { ...defaultInspector, inspectSource: (s, o) => inspect(s, o, onOpened) };
}

async function inspect(
  source: string,
  opts: Parameters<Inspector['inspectSource']>[1],
  onOpened?: OnOpened,
): Promise<InspectedSource> {
  try {
    const opened = await openSource(source, {
      root: opts.root,
      platform: opts.platform,
      gzipLevel: opts.gzipLevel,
      ...(opts.dirOptions ? { dirOptions: opts.dirOptions } : {}),
    });
    const inspected = {
      source: formatSource({ ...opened.spec, path: opened.realPath }),
      layout: pushLayoutOf(opened.images),
      pin: {
        key: snapshotKey(opened.snapshot),
        snapshot: opened.snapshot as unknown as Record<string, unknown>,
      },
    };
    if (onOpened && opts.gzipLevel !== undefined) {
      onOpened(
        {
          source: inspected.source,
          pin: inspected.pin,
          gzipLevel: opts.gzipLevel,
          ...(opts.platform !== undefined ? { platform: opts.platform } : {}),
          ...(opts.dirOptions ? { dirOptions: opts.dirOptions } : {}),
        },
        opened,
      );
    }
    return inspected;
  } catch (err) {
    if (!(err instanceof SourceError)) throw err;
    if (err.code === SourceErrorCodes.XATTRS_UNAVAILABLE) {
      throw new ApiError(err.code, err.message);
    }
    if (REQUEST_ERRORS.has(err.code)) {
      const field = err.field === 'platform' || err.field === 'source' ? err.field : 'source';
      throw new ApiError(err.code, err.message, field);
    }
    throw new SourceContentError(err.code, err.message);
  }
}

export const defaultInspector: Inspector = {
  inspectSource: (source, opts) => inspect(source, opts),

  checkTarget(target, allow) {
    let ref;
    try {
      ref = parseReference(target);
    } catch (err) {
      const e = err as { code?: string; message?: string };
      throw new ApiError(
        e.code ?? 'FERRY_BAD_REFERENCE',
        e.message ?? 'invalid reference',
        'target',
      );
    }
    if (ref.digest) {
      throw new ApiError(
        'FERRY_BAD_REFERENCE',
        `target ${JSON.stringify(target)} names a digest; a push target names a tag`,
        'target',
      );
    }
    if (!isAllowed(ref.registry, allow)) {
      throw new ApiError(
        'FERRY_REGISTRY_NOT_ALLOWED',
        `registry ${ref.registry} is not in FERRY_REGISTRY_ALLOW`,
        'target',
      );
    }
    // Stored as the allowlist sees it (0x7f.1:5000 → 127.0.0.1:5000): the push state, the jobs
    // and the token's patterns all name the host the workers will connect to.
    const registry = normalizeHost(ref.registry);
    return { target: `${registry}/${ref.repository}:${ref.tag ?? 'latest'}`, registry };
  },
};
