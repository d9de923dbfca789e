/** Media types of the OCI image spec and Docker's schema2 / schema1. */
export const MediaTypes = {
  ociLayout: 'application/vnd.oci.layout.header.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayerTar: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNondistributableTar: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  ociLayerNondistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  ociEmpty: 'application/vnd.oci.empty.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerLayerTar: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
} as const;

export type MediaType = (typeof MediaTypes)[keyof typeof MediaTypes];

export type ManifestFormat = 'oci' | 'docker';

/** Media types of an image manifest (one platform). */
export const IMAGE_MANIFEST_TYPES: readonly string[] = [
  MediaTypes.ociManifest,
  MediaTypes.dockerManifest,
];
/** Media types of an index / manifest list. */
export const INDEX_TYPES: readonly string[] = [MediaTypes.ociIndex, MediaTypes.dockerManifestList];
/** Media types of an image config. */
export const CONFIG_TYPES: readonly string[] = [MediaTypes.ociConfig, MediaTypes.dockerConfig];

export function isIndexMediaType(mt: string | undefined): boolean {
  return mt !== undefined && INDEX_TYPES.includes(mt);
}
export function isImageManifestMediaType(mt: string | undefined): boolean {
  return mt !== undefined && IMAGE_MANIFEST_TYPES.includes(mt);
}

/** The compression a layer media type declares: gzip, zstd, none (plain tar) or unknown. */
export function layerCompression(mt: string): 'gzip' | 'zstd' | 'none' | 'unknown' {
  if (mt.endsWith('+gzip') || mt.endsWith('.tar.gzip')) return 'gzip';
  if (mt.endsWith('+zstd')) return 'zstd';
  if (mt.endsWith('.tar') || mt === MediaTypes.dockerLayerTar) return 'none';
  return 'unknown';
}

const LAYER_TO_DOCKER: Record<string, string> = {
  [MediaTypes.ociLayerGzip]: MediaTypes.dockerLayerGzip,
  [MediaTypes.ociLayerTar]: MediaTypes.dockerLayerTar,
  [MediaTypes.ociLayerNondistributableGzip]: MediaTypes.dockerForeignLayerGzip,
};
const LAYER_TO_OCI: Record<string, string> = {
  [MediaTypes.dockerLayerGzip]: MediaTypes.ociLayerGzip,
  [MediaTypes.dockerLayerTar]: MediaTypes.ociLayerTar,
  [MediaTypes.dockerForeignLayerGzip]: MediaTypes.ociLayerNondistributableGzip,
};

/**
 * The layer media type to use in a manifest of `format`. Types that already
 * belong to the format, or that have no counterpart (zstd in Docker), are
 * returned unchanged.
 */
export function convertLayerMediaType(mt: string, format: ManifestFormat): string {
  if (format === 'docker') return LAYER_TO_DOCKER[mt] ?? mt;
  return LAYER_TO_OCI[mt] ?? mt;
}

/** The config media type to use in a manifest of `format` (only the two image-config types convert). */
export function convertConfigMediaType(mt: string, format: ManifestFormat): string {
  if (!CONFIG_TYPES.includes(mt)) return mt;
  return format === 'docker' ? MediaTypes.dockerConfig : MediaTypes.ociConfig;
}
