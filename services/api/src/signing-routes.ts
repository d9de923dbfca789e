/**
 * What the coordinators publish to Redis for verifiers, served read-only:
 * the cosign verification key, the armored OpenPGP public key, and the
 * OpenPGP signatures in the lookaside layout containers/image reads
 * (registries.d `lookaside: <ferry>/sigstore`). The API never sees a private
 * key: only what SigningStore holds.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { SigningStore, type KeyKind } from '@ferry/queue';
import { ApiError } from './errors';
import type { AddRoute, ApiDeps } from './app';

/** containers/image numbers signatures from 1; SigningStore keeps at most this many per manifest. */
export const MAX_LOOKASIDE_INDEX = 64;
/** Docker's limit on a repository name. */
const REPO_MAX = 255;
/** A repository path component (distribution/reference grammar): no empty, `.` or `..` segment. */
const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const LOOKASIDE =
  /^(?<repo>[a-z0-9._/-]+)@sha256=(?<hex>[a-f0-9]{64})\/signature-(?<n>[1-9][0-9]?)$/;

export interface LookasideRef {
  /** Repository path without host, e.g. `team/app`. */
  repoPath: string;
  /** `sha256:<hex>` */
  digest: string;
  /** Signature number, 1 … MAX_LOOKASIDE_INDEX. */
  n: number;
}

/**
 * Parses `<repo>@sha256=<hex>/signature-<n>` (what follows /sigstore/), or
 * undefined when it is not exactly that: repository characters [a-z0-9._/-]
 * in Docker's component grammar (so no `..`, `.`, empty or leading/trailing
 * segment), 64 lower-case hex digits, 1 ≤ n ≤ 64.
 */
export function parseLookaside(path: string): LookasideRef | undefined {
  const m = LOOKASIDE.exec(path);
  if (!m?.groups) return undefined;
  const { repo, hex, n } = m.groups as { repo: string; hex: string; n: string };
  if (repo.length > REPO_MAX || !repo.split('/').every((c) => COMPONENT.test(c))) return undefined;
  const index = Number(n);
  if (index < 1 || index > MAX_LOOKASIDE_INDEX) return undefined;
  return { repoPath: repo, digest: `sha256:${hex}`, n: index };
}

/** The request path after /sigstore/, as sent (no query string), percent-decoded; undefined if undecodable. */
function lookasideTail(req: FastifyRequest): string | undefined {
  const url = req.url;
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  try {
    return decodeURIComponent(path.slice('/sigstore/'.length));
  } catch {
    return undefined;
  }
}

export function signingRoutes(route: AddRoute, deps: Pick<ApiDeps, 'redis' | 'config'>): void {
  const signing = new SigningStore(deps.redis, { prefix: deps.config.queuePrefix });

  const serveKey =
    (kind: KeyKind, what: string, contentType: string) =>
    async (_req: FastifyRequest, reply: FastifyReply) => {
      const published = await signing.getKey(kind);
      if (!published?.key) {
        throw new ApiError(
          'FERRY_NOT_CONFIGURED',
          `no ${what} is published: no coordinator with one has started`,
        );
      }
      return reply
        .header('content-type', contentType)
        .header('x-ferry-key-fingerprint', published.fingerprint)
        .send(published.key);
    };
  route(
    'GET',
    '/v1/signing/public-key',
    serveKey('cosign', 'cosign verification key', 'application/x-pem-file'),
  );
  route(
    'GET',
    '/v1/signing/pgp-key',
    serveKey('pgp', 'OpenPGP public key', 'application/pgp-keys'),
  );

  route('GET', '/sigstore/*', async (req, reply) => {
    const tail = lookasideTail(req);
    const ref = tail === undefined ? undefined : parseLookaside(tail);
    if (!ref) {
      throw new ApiError(
        'FERRY_VALIDATION',
        `not a lookaside signature path: expected /sigstore/<repository>@sha256=<64 hex>/signature-<1…${MAX_LOOKASIDE_INDEX}>`,
        'path',
      );
    }
    const signature = await signing.getLookaside(ref.repoPath, ref.digest, ref.n);
    if (!signature) {
      throw new ApiError(
        'FERRY_NOT_FOUND',
        `no signature ${ref.n} of ${ref.repoPath}@${ref.digest}`,
      );
    }
    return reply
      .header('content-type', 'application/octet-stream')
      .header('x-content-type-options', 'nosniff')
      .send(signature);
  });
}
