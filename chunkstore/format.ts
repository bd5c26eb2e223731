import { createHash } from 'node:crypto';
import { NeonError } from '../core/errors.js';
import { KNOWN_FLAGS, sha256, unpackBody } from './codec.js';

export { FLAG_DEFLATE, FLAG_ZSTD, sha256 } from './codec.js';

/*
 * The two on-disk formats of the chunk store, also the formats of the objects in storage (a pack and its index
 * travel byte for byte). All integers are big-endian.
 *
 * Pack `<id>.pack` (id = hex sha256 of the whole file):
 *   header  "NEONPACK" | version u32
 *   records sha256 of the raw chunk (32) | raw length u32 | stored length u32 | flags u8 | stored bytes
 *   flags   0 raw, 1 deflate-raw, 2 zstd (one frame with its content size)
 *
 * Index `<id>.idx`:
 *   header  "NEONPIDX" | version u32 | entry count u32 | pack length u64 | pack id (32)
 *   entries sha256 (32) | record offset u32 | stored length u32 | raw length u32 | flags u8   (in pack order)
 *   trailer sha256 of everything before it (32)
 *
 * The index names its pack (id and length) so that an index can never be applied to the wrong file, and it
 * carries its own checksum so that a damaged index is noticed at open and rebuilt from the pack.
 *
 * Versions: 1 wrote raw and deflate records; 2 adds zstd records (and the same index layout). This code writes
 * 2 and reads both. The index version is bumped with the pack's so that a neon that reads only 1 refuses a new
 * store when it opens it (its indexes come first), not at the first read of a zstd chunk.
 */

/** Version of the pack format this code writes. */
export const PACK_VERSION = 2;
/** Version of the index format this code writes. */
export const INDEX_VERSION = 2;
/** Pack and index versions this code reads. */
const READ_VERSIONS = new Set([1, 2]);
/** Bytes before the first record of a pack. */
export const PACK_HEADER = 12;
/** Bytes of a record before its stored bytes. */
export const RECORD_HEADER = 41;

const PACK_MAGIC = Buffer.from('NEONPACK');
const INDEX_MAGIC = Buffer.from('NEONPIDX');
const INDEX_HEADER = 56;
const INDEX_ENTRY = 45;
const INDEX_TRAILER = 32;
const HASH = /^[0-9a-f]{64}$/;

/**
 * Where the chunks of one pack are. Arrays may be longer than `count` (a pack being filled grows them by
 * doubling); only the first `count` items are meaningful.
 */
export interface PackEntries {
  count: number;
  /** Hex sha256 of each raw chunk. */
  hashes: string[];
  /** Offset of each record (its header) in the pack file. */
  offsets: Uint32Array;
  stored: Uint32Array;
  raw: Uint32Array;
  flags: Uint8Array;
}

/** True for a lowercase hex sha256, the only form chunk hashes and pack ids take. */
export function isHash(value: string): boolean {
  return HASH.test(value);
}

/** A `corrupt` error: stored bytes are not what was written. */
export function corrupt(message: string): NeonError {
  return new NeonError('corrupt', message, { status: 500 });
}

/** A `bad_format` error: a file written by another version of the format. */
function badFormat(file: string, kind: string, version: number): NeonError {
  return new NeonError(
    'bad_format',
    `${file} is a ${kind} of format version ${version}, but this neon reads versions ${[...READ_VERSIONS].join(' and ')}: it was written by a newer neon (upgrade), or it is not a neon ${kind}`,
    { status: 500 },
  );
}

/** The header every pack starts with. */
export function packHeader(): Buffer {
  const header = Buffer.alloc(PACK_HEADER);
  PACK_MAGIC.copy(header, 0);
  header.writeUInt32BE(PACK_VERSION, 8);
  return header;
}

/** Check the first bytes of a pack file; `file` names it in the error. */
export function checkPackHeader(head: Buffer, file: string): void {
  if (head.length < PACK_HEADER || !head.subarray(0, 8).equals(PACK_MAGIC)) {
    throw corrupt(`${file} is damaged: it does not start with a neon pack header`);
  }
  const version = head.readUInt32BE(8);
  if (!READ_VERSIONS.has(version)) throw badFormat(file, 'pack', version);
}

/** Write a record header at `at`. */
export function writeRecordHeader(buf: Buffer, at: number, hash: Buffer, raw: number, stored: number, flags: number): void {
  hash.copy(buf, at);
  buf.writeUInt32BE(raw, at + 32);
  buf.writeUInt32BE(stored, at + 36);
  buf[at + 40] = flags;
}

/**
 * The raw bytes of the chunk whose record starts at `at` in `buf`, after checking everything the index promised
 * and the sha256 of the result. Throws a plain Error saying what is wrong; callers name the file.
 */
export function unpackChunk(buf: Buffer, at: number, entries: PackEntries, i: number): Buffer {
  const hash = entries.hashes[i];
  const stored = entries.stored[i];
  const raw = entries.raw[i];
  const flags = entries.flags[i];
  if (at + RECORD_HEADER + stored > buf.length) throw new Error(`the record at byte ${entries.offsets[i]} is cut short`);
  if (buf.toString('hex', at, at + 32) !== hash) throw new Error(`the record at byte ${entries.offsets[i]} holds another chunk`);
  if (buf.readUInt32BE(at + 32) !== raw || buf.readUInt32BE(at + 36) !== stored || buf[at + 40] !== flags) {
    throw new Error(`the record header at byte ${entries.offsets[i]} disagrees with the index`);
  }
  const data = unpackBody(buf.subarray(at + RECORD_HEADER, at + RECORD_HEADER + stored), flags, raw);
  if (data.length !== raw) throw new Error(`it inflates to ${data.length} bytes, not ${raw}`);
  if (sha256(data) !== hash) throw new Error('its bytes do not match its sha256');
  return data;
}

/**
 * List the records of a whole pack file. With `id`, the file must hash to it (a pack whose index is lost is
 * trusted only when it is intact). Throws `corrupt` for a damaged or truncated pack, `bad_format` for another
 * version.
 */
export function scanPack(bytes: Buffer, file: string, id?: string): PackEntries {
  checkPackHeader(bytes, file);
  if (id !== undefined) {
    const actual = sha256(bytes);
    if (actual !== id) throw corrupt(`${file} is damaged or truncated: its content hashes to ${actual}, not to its name`);
  }
  const hashes: string[] = [];
  const offsets: number[] = [];
  const stored: number[] = [];
  const raw: number[] = [];
  const flags: number[] = [];
  let at = PACK_HEADER;
  while (at < bytes.length) {
    if (at + RECORD_HEADER > bytes.length)
      throw corrupt(`${file} is truncated: record ${hashes.length} at byte ${at} has no complete header`);
    const size = bytes.readUInt32BE(at + 36);
    const flag = bytes[at + 40];
    if (!KNOWN_FLAGS.has(flag))
      throw corrupt(`${file} is damaged: record ${hashes.length} at byte ${at} has unknown flags ${flag}`);
    if (at + RECORD_HEADER + size > bytes.length) throw corrupt(`${file} is truncated: record ${hashes.length} at byte ${at} is cut short`);
    hashes.push(bytes.toString('hex', at, at + 32));
    offsets.push(at);
    stored.push(size);
    raw.push(bytes.readUInt32BE(at + 32));
    flags.push(flag);
    at += RECORD_HEADER + size;
  }
  return {
    count: hashes.length,
    hashes,
    offsets: Uint32Array.from(offsets),
    stored: Uint32Array.from(stored),
    raw: Uint32Array.from(raw),
    flags: Uint8Array.from(flags),
  };
}

/** The index of pack `id` (`packLength` bytes), holding `entries`. Deterministic: one pack, one index. */
export function encodeIndex(entries: PackEntries, id: string, packLength: number): Buffer {
  const out = Buffer.alloc(INDEX_HEADER + entries.count * INDEX_ENTRY + INDEX_TRAILER);
  INDEX_MAGIC.copy(out, 0);
  out.writeUInt32BE(INDEX_VERSION, 8);
  out.writeUInt32BE(entries.count, 12);
  out.writeBigUInt64BE(BigInt(packLength), 16);
  out.write(id, 24, 'hex');
  let at = INDEX_HEADER;
  for (let i = 0; i < entries.count; i++, at += INDEX_ENTRY) {
    out.write(entries.hashes[i], at, 'hex');
    out.writeUInt32BE(entries.offsets[i], at + 32);
    out.writeUInt32BE(entries.stored[i], at + 36);
    out.writeUInt32BE(entries.raw[i], at + 40);
    out[at + 44] = entries.flags[i];
  }
  createHash('sha256').update(out.subarray(0, at)).digest().copy(out, at);
  return out;
}

/** A decoded index: its entries and the length of the pack it describes. */
export interface PackIndex {
  entries: PackEntries;
  packLength: number;
}

/**
 * Read an index, checking its checksum and that it describes pack `id`. Throws `corrupt` for a damaged index
 * (callers rebuild it from the pack) and `bad_format` for another version (callers must not).
 */
export function decodeIndex(buf: Buffer, file: string, id: string): PackIndex {
  if (buf.length < INDEX_HEADER + INDEX_TRAILER || !buf.subarray(0, 8).equals(INDEX_MAGIC)) {
    throw corrupt(`${file} is damaged: it is not a neon pack index`);
  }
  const version = buf.readUInt32BE(8);
  if (!READ_VERSIONS.has(version)) throw badFormat(file, 'pack index', version);
  const count = buf.readUInt32BE(12);
  const end = INDEX_HEADER + count * INDEX_ENTRY;
  if (buf.length !== end + INDEX_TRAILER) throw corrupt(`${file} is damaged: ${buf.length} bytes for ${count} entries`);
  const sum = createHash('sha256').update(buf.subarray(0, end)).digest();
  if (!sum.equals(buf.subarray(end))) throw corrupt(`${file} is damaged: its checksum does not match`);
  if (buf.toString('hex', 24, 56) !== id) throw corrupt(`${file} describes another pack (${buf.toString('hex', 24, 56)})`);
  const entries: PackEntries = {
    count,
    hashes: new Array<string>(count),
    offsets: new Uint32Array(count),
    stored: new Uint32Array(count),
    raw: new Uint32Array(count),
    flags: new Uint8Array(count),
  };
  for (let i = 0, at = INDEX_HEADER; i < count; i++, at += INDEX_ENTRY) {
    entries.hashes[i] = buf.toString('hex', at, at + 32);
    entries.offsets[i] = buf.readUInt32BE(at + 32);
    entries.stored[i] = buf.readUInt32BE(at + 36);
    entries.raw[i] = buf.readUInt32BE(at + 40);
    entries.flags[i] = buf[at + 44];
  }
  return { entries, packLength: Number(buf.readBigUInt64BE(16)) };
}

/** Size of the index of a pack of `count` chunks. */
export function indexLength(count: number): number {
  return INDEX_HEADER + count * INDEX_ENTRY + INDEX_TRAILER;
}
