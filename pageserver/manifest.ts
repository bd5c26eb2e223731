import { createHash } from 'node:crypto';
import { setImmediate } from 'node:timers/promises';
import { promisify } from 'node:util';
import { gunzip, gzip } from 'node:zlib';
import { ChunkList, ChunkSet, HASH_BYTES } from '../chunkstore/chunk-list.js';
import { NeonError } from '../core/errors.js';
import { type Lsn } from '../core/wal.js';

/** One entry of a base image: a folder, a symlink, or a file and the chunks (sha256 of 8 KiB pages) it is made of. */
export interface ImageFile {
  path: string;
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  size: number;
  /** The sha256 of each page, in order (32 bytes each, see chunk-list.ts). */
  chunks?: ChunkList;
  link?: string;
}

/**
 * A base image: what a data directory held at a point of a branch's history. It is consistent from `endLsn`
 * (replaying WAL from `startLsn`, the redo point of its checkpoint). Written after every chunk it names.
 */
export interface ImageManifest {
  format: 'neon-image';
  /** The format version it was read from; {@link encodeManifest} always writes {@link MANIFEST_VERSION}. */
  version: 1 | 2;
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
  /** Version 2: sha256 of the encoded manifest before its trailer; version 1: of its JSON without this field. */
  checksum: string;
}

/** The manifest format version written (version 1, JSON with hex hashes, still reads). */
export const MANIFEST_VERSION = 2;

/** Start of a version-2 manifest (gzip-decompressed); a version-1 manifest starts with `{`. */
const MAGIC = Buffer.from('NEONIMG\n');
/** Magic, version (uint32 BE), header length (uint32 BE). */
const PREFIX = MAGIC.length + 8;

const gzipAsync = promisify(gzip);
const gunzipAsync = promisify(gunzip);

/** The distinct chunks `images` name (a compact sorted set: no string per page, see chunk-list.ts). */
export function chunkSetOf(images: Iterable<Pick<ImageManifest, 'files'>>): ChunkSet {
  let set = ChunkSet.empty();
  // One image at a time, merged: memory follows the distinct chunks, not the sum over images.
  for (const image of images) set = set.union(ChunkSet.of(image.files.map((file) => file.chunks)));
  return set;
}

/** Storage key of an image: ordered by LSN within a branch. */
export function imageKey(branch: string, endLsn: Lsn): string {
  return `images/${branch}/${endLsn.toString(16).padStart(16, '0')}.json.gz`;
}

/** Parse the LSN back out of an image key. */
export function lsnOfImageKey(key: string): Lsn | undefined {
  const match = /\/([0-9a-f]{16})\.json\.gz$/.exec(key);
  return match ? BigInt('0x' + match[1]) : undefined;
}

/**
 * Serialise a manifest, gzip-compressed, in format version 2:
 *
 *   "NEONIMG\n" | version u32 BE | header length u32 BE | header | hashes | sha256 of all before it
 *
 * The header is the manifest's JSON with each file's `chunks` replaced by its count; the hashes section holds
 * every file's hashes, 32 bytes each, in file order. Nothing is made per page: the lists' buffers are written as
 * they are, and the checksum is one pass over the same bytes.
 */
export async function encodeManifest(manifest: Omit<ImageManifest, 'checksum'>): Promise<Buffer> {
  const files = manifest.files.map(({ chunks, ...file }) => (chunks ? { ...file, chunks: chunks.length } : file));
  const header = Buffer.from(JSON.stringify({ ...manifest, version: MANIFEST_VERSION, checksum: undefined, files }));
  const prefix = Buffer.alloc(PREFIX);
  MAGIC.copy(prefix);
  prefix.writeUInt32BE(MANIFEST_VERSION, MAGIC.length);
  prefix.writeUInt32BE(header.length, MAGIC.length + 4);
  const parts = [prefix, header, ...manifest.files.flatMap((file) => (file.chunks?.length ? [file.chunks.raw] : []))];
  parts.push(await sha256Of(parts));
  // Stored (level 0): sha256 hashes do not compress. On a 1 GB image's 4 MB of them level 1 saved nothing and took
  // 90–125 ms, a seventh of an incremental image; level 0 takes 13 ms. Only runs of one repeated page (a file of
  // all-zero pages) lose: level 1 made them ~1/160th of their size. Every reader gunzips either.
  return gzipAsync(Buffer.concat(parts), { level: 0 });
}

/** Read and check a manifest (version 1 or 2): damage, a newer format version or a wrong checksum are clear errors. */
export async function decodeManifest(key: string, data: Buffer): Promise<ImageManifest> {
  let buf: Buffer;
  try {
    buf = await gunzipAsync(data);
  } catch (error) {
    throw damaged(key, (error as Error).message);
  }
  if (buf[0] === 0x7b) return decodeVersion1(key, buf);
  if (buf.length < PREFIX || !buf.subarray(0, MAGIC.length).equals(MAGIC)) throw damaged(key, 'it does not start as a manifest does');
  checkVersion(key, buf.readUInt32BE(MAGIC.length));
  const headerEnd = PREFIX + buf.readUInt32BE(MAGIC.length + 4);
  const end = buf.length - HASH_BYTES;
  if (headerEnd > end) throw damaged(key, 'it ends inside its header');
  const trailer = buf.subarray(end);
  if (!(await sha256Of([buf.subarray(0, end)])).equals(trailer)) {
    throw new NeonError('corrupt', `image manifest ${key} fails its checksum`, { status: 500 });
  }
  let manifest: ImageManifest;
  try {
    manifest = JSON.parse(buf.toString('utf8', PREFIX, headerEnd)) as ImageManifest;
  } catch (error) {
    throw damaged(key, (error as Error).message);
  }
  checkFormat(key, manifest);
  // Each file's list is a view of the one decompressed buffer: no copy, no string per page.
  let at = headerEnd;
  for (const file of manifest.files) {
    const count = file.chunks as unknown as number | undefined;
    if (count === undefined) continue;
    if (!Number.isInteger(count) || count < 0 || at + count * HASH_BYTES > end) throw damaged(key, `the chunks of ${file.path} run past its end`);
    file.chunks = new ChunkList(buf.subarray(at, at + count * HASH_BYTES));
    at += count * HASH_BYTES;
  }
  if (at !== end) throw damaged(key, `${end - at} bytes of hashes belong to no file`);
  return { ...manifest, checksum: trailer.toString('hex') };
}

/** A manifest of format version 1: JSON with hex hashes, checksummed over its JSON. */
function decodeVersion1(key: string, buf: Buffer): ImageManifest {
  type Version1 = Omit<ImageManifest, 'files'> & { files: (Omit<ImageFile, 'chunks'> & { chunks?: string[] })[] };
  let manifest: Version1;
  try {
    manifest = JSON.parse(buf.toString('utf8')) as Version1;
  } catch (error) {
    throw damaged(key, (error as Error).message);
  }
  checkFormat(key, manifest);
  checkVersion(key, manifest.version);
  const { checksum, ...rest } = manifest;
  const sum = createHash('sha256')
    .update(JSON.stringify({ ...rest, checksum: undefined }))
    .digest('hex');
  if (sum !== checksum) throw new NeonError('corrupt', `image manifest ${key} fails its checksum`, { status: 500 });
  let files: ImageFile[];
  try {
    files = manifest.files.map(({ chunks, ...file }) => (chunks ? { ...file, chunks: ChunkList.fromHex(chunks) } : file));
  } catch (error) {
    throw damaged(key, (error as Error).message);
  }
  return { ...manifest, files };
}

/** Bytes hashed between two turns of the event loop: ~3 ms of sha256, so REST calls are answered meanwhile. */
const HASH_SLICE = 4 * 1024 * 1024;

/** sha256 of `parts` in order, in slices: a 10 GB image's manifest holds 40 MB of hashes. */
async function sha256Of(parts: Buffer[]): Promise<Buffer> {
  const hash = createHash('sha256');
  let since = 0;
  for (const part of parts) {
    for (let at = 0; at < part.length; at += HASH_SLICE) {
      const slice = part.subarray(at, at + HASH_SLICE);
      hash.update(slice);
      since += slice.length;
      if (since >= HASH_SLICE) {
        since = 0;
        await setImmediate();
      }
    }
  }
  return hash.digest();
}

function damaged(key: string, why: string): NeonError {
  return new NeonError('corrupt', `image manifest ${key} is damaged or truncated (${why})`, { status: 500 });
}

function checkFormat(key: string, manifest: { format?: unknown }): void {
  if (manifest?.format !== 'neon-image') throw new NeonError('bad_format', `${key} is not a neon image manifest`, { status: 500 });
}

function checkVersion(key: string, version: unknown): void {
  if (version === 1 || version === MANIFEST_VERSION) return;
  throw new NeonError(
    'bad_format',
    `image manifest ${key} has format version ${String(version)}; this neon reads versions 1 and ${MANIFEST_VERSION} (upgrade neon)`,
    { status: 500 },
  );
}
