import { promisify } from 'node:util';
import { gunzip, gzip } from 'node:zlib';
import { NeonError } from './errors.js';

// How WAL is laid out in a storage_dest: one object per segment, keyed by branch and segment name, gzip
// compressed. gzip's trailer holds the CRC-32 and length of the segment, so every read verifies the bytes:
// a flipped byte anywhere fails the decompression.

const gzipAsync = promisify(gzip);
const gunzipAsync = promisify(gunzip);

/** Key of a finished segment (or history file) of a branch: `wal/main/000000010000000000000003.gz`. */
export function walObjectKey(branch: string, fileName: string): string {
  return `wal/${branch}/${fileName}.gz`;
}

/** Key of the newest unfinished segment of a branch, replaced as it grows. */
export function partialObjectKey(branch: string, segmentName: string): string {
  return `wal/${branch}/${segmentName}.partial.gz`;
}

/** Compress a segment for upload (level 1: WAL compresses well even so, and offload must keep up). */
export function packWal(data: Buffer): Promise<Buffer> {
  return gzipAsync(data, { level: 1 });
}

/** Decompress and verify a WAL object; a damaged one is a `corrupt` error naming the key. */
export async function unpackWal(key: string, packed: Buffer): Promise<Buffer> {
  try {
    return await gunzipAsync(packed);
  } catch (error) {
    throw new NeonError('corrupt', `WAL object ${key} is corrupt (${(error as Error).message})`, { status: 500 });
  }
}
