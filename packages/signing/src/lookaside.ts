/**
 * The lookaside ("sigstore" in registries.d) layout containers/image reads
 * simple signatures from: `<repository path>@<algorithm>=<hex>/signature-<n>`,
 * n counting from 1, under the configured base URL. The repository is the
 * reference's path without the registry host, tag or digest.
 */
import { isValidDigest } from '@ferry/manifest';

const REPO_PATH =
  /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;

/** `team/app@sha256=<hex>/signature-<index>` (index ≥ 1). */
export function lookasidePath(repository: string, manifestDigest: string, index: number): string {
  if (!REPO_PATH.test(repository)) {
    throw new TypeError(
      `lookasidePath: ${JSON.stringify(repository)} is not a repository path (no host, tag or digest)`,
    );
  }
  if (!isValidDigest(manifestDigest)) {
    throw new TypeError(`lookasidePath: ${JSON.stringify(manifestDigest)} is not a digest`);
  }
  if (!Number.isInteger(index) || index < 1) {
    throw new TypeError(`lookasidePath: index must be an integer ≥ 1, got ${index}`);
  }
  const [alg, hex] = manifestDigest.split(':') as [string, string];
  return `${repository}@${alg}=${hex}/signature-${index}`;
}

/** The parts of a lookaside path, or undefined when it is not one (for a server routing /sigstore/…). */
export function parseLookasidePath(
  path: string,
): { repository: string; manifestDigest: string; index: number } | undefined {
  const m = /^\/?(.+)@([a-z0-9]+)=([a-f0-9]+)\/signature-([1-9][0-9]{0,5})$/.exec(path);
  if (!m) return undefined;
  const [, repository, alg, hex, n] = m as unknown as [string, string, string, string, string];
  const manifestDigest = `${alg}:${hex}`;
  if (!REPO_PATH.test(repository) || !isValidDigest(manifestDigest)) return undefined;
  return { repository, manifestDigest, index: Number(n) };
}
