// Image manifests as older and newer neons write them, for the tests that check this one still reads (or
// clearly refuses) them.
import { createHash } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import type { ImageManifest } from '../pageserver/manifest.js';

/**
 * A manifest in format version 1, byte for byte as the neon before binary chunk lists wrote it: gzip of the JSON,
 * hashes as hex strings, `checksum` the sha256 of the JSON without it.
 */
export function encodeManifestV1(manifest: Omit<ImageManifest, 'checksum'>): Buffer {
  const files = manifest.files.map(({ chunks, ...file }) => (chunks ? { ...file, chunks: [...chunks] } : file));
  const body = { ...manifest, version: 1, files };
  const checksum = createHash('sha256')
    .update(JSON.stringify({ ...body, checksum: undefined }))
    .digest('hex');
  return gzipSync(JSON.stringify({ ...body, checksum }));
}

/** An encoded version-2 manifest relabelled as format `version` (what a newer neon could write). */
export function relabelVersion(encoded: Buffer, version: number): Buffer {
  const buf = gunzipSync(encoded);
  buf.writeUInt32BE(version, 8); // after the 8-byte magic
  return gzipSync(buf);
}
