import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { gunzip, gzip } from 'node:zlib';
import { NeonError } from '../core/errors.js';
import { type Lsn } from '../core/wal.js';

/** One entry of a base image: a folder, a symlink, or a file and the chunks (sha256 of 8 KiB pages) it is made of. */
export interface ImageFile {
  path: string;
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  size: number;
  chunks?: string[];
  link?: string;
}

/**
 * A base image: what a data directory held at a point of a branch's history. It is consistent from `endLsn`
 * (replaying WAL from `startLsn`, the redo point of its checkpoint). Written after every chunk it names.
 */
export interface ImageManifest {
  format: 'neon-image';
  version: 1;
  branch: string;
  timeline: number;
  startLsn: string;
  endLsn: string;
  systemId: string;
  pgVersion: number;
  /**
   * online: BASE_BACKUP of a running server; offline: a stopped data directory; incremental: the previous image
   * advanced by WAL replay, with only the pages the WAL changed read again (see incremental.ts).
   */
  kind: 'online' | 'offline' | 'incremental';
  /** Incremental images: the image it was made from, and how many incrementals in a row lead to it. */
  parent?: string;
  chain?: number;
  /** Incremental images: pages read from the replayed copy (the rest are the parent's chunks). */
  pagesRead?: number;
  createdAt: string;
  files: ImageFile[];
  /** Bytes of all files. */
  rawBytes: number;
  /** Stored (compressed) bytes of the chunks this image added: its incremental cost. */
  newBytes: number;
  /** sha256 of the manifest's JSON without this field. */
  checksum: string;
}

const gzipAsync = promisify(gzip);
const gunzipAsync = promisify(gunzip);

/** Storage key of an image: ordered by LSN within a branch. */
export function imageKey(branch: string, endLsn: Lsn): string {
  return `images/${branch}/${endLsn.toString(16).padStart(16, '0')}.json.gz`;
}

/** Parse the LSN back out of an image key. */
export function lsnOfImageKey(key: string): Lsn | undefined {
  const match = /\/([0-9a-f]{16})\.json\.gz$/.exec(key);
  return match ? BigInt('0x' + match[1]) : undefined;
}

function checksumOf(manifest: Omit<ImageManifest, 'checksum'>): string {
  return createHash('sha256')
    .update(JSON.stringify({ ...manifest, checksum: undefined }))
    .digest('hex');
}

/** Serialise a manifest (checksum computed here), gzip-compressed. */
export async function encodeManifest(manifest: Omit<ImageManifest, 'checksum'>): Promise<Buffer> {
  return gzipAsync(JSON.stringify({ ...manifest, checksum: checksumOf(manifest) }));
}

/** Read and check a manifest: damage, an unknown format version or a wrong checksum are clear errors. */
export async function decodeManifest(key: string, data: Buffer): Promise<ImageManifest> {
  let manifest: ImageManifest;
  try {
    manifest = JSON.parse((await gunzipAsync(data)).toString('utf8')) as ImageManifest;
  } catch (error) {
    throw new NeonError('corrupt', `image manifest ${key} is damaged or truncated (${(error as Error).message})`, { status: 500 });
  }
  if (manifest.format !== 'neon-image') throw new NeonError('bad_format', `${key} is not a neon image manifest`, { status: 500 });
  if (manifest.version !== 1) {
    throw new NeonError(
      'bad_format',
      `image manifest ${key} has format version ${manifest.version}; this neon reads version 1 (upgrade neon)`,
      {
        status: 500,
      },
    );
  }
  const { checksum, ...rest } = manifest;
  if (checksumOf(rest) !== checksum) throw new NeonError('corrupt', `image manifest ${key} fails its checksum`, { status: 500 });
  return manifest;
}
