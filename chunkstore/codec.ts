// How one chunk is stored (hash, zero test, compression), shared by the main thread (ChunkStore.add, reads) and
// the hashing workers (chunk-worker.ts), so that both paths give the same bytes.
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { inflateRawSync } from 'node:zlib';
import type * as Zstd from 'zstd-napi';
import type * as ZstdBinding from 'zstd-napi/binding.js';

const require = createRequire(import.meta.url);

/** Record flag: the stored bytes are deflate-raw compressed (packs of format 1; still read). */
export const FLAG_DEFLATE = 1;
/** Record flag: the stored bytes are one zstd frame (level 1), written since pack format 2. */
export const FLAG_ZSTD = 2;
/** The record flags a reader understands: raw (0), deflate, zstd. */
export const KNOWN_FLAGS = new Set([0, FLAG_DEFLATE, FLAG_ZSTD]);

/**
 * Size of a Postgres page. A chunk of this many zero bytes (Postgres extends relations with zero pages) is never
 * hashed, compressed or stored: every store holds it implicitly under its true sha256 ({@link ZERO_PAGE_HASH}).
 */
export const ZERO_PAGE_SIZE = 8192;
const ZERO_PAGE = Buffer.alloc(ZERO_PAGE_SIZE);
/** Hex sha256 of a zero page: the honest hash, so a manifest that names it means exactly those bytes. */
export const ZERO_PAGE_HASH = createHash('sha256').update(ZERO_PAGE).digest('hex');

/** True for a chunk that is one all-zero page. */
export function isZeroPage(data: Uint8Array): boolean {
  return data.length === ZERO_PAGE_SIZE && ZERO_PAGE.equals(data);
}

/** A fresh zero page (callers may write into what they read). */
export function zeroPage(): Buffer {
  return Buffer.alloc(ZERO_PAGE_SIZE);
}

/** A chunk ready to be packed: its stored form and how it was made. */
export interface PackedChunk {
  stored: Buffer;
  flags: number;
}

let compressor: Zstd.Compressor | undefined;
let decompressor: ZstdBinding.DCtx | undefined;

/** zstd-napi is loaded on first use: most commands never compress a page. One context per thread, reused. */
function zstd(): { compressor: Zstd.Compressor; decompressor: ZstdBinding.DCtx } {
  if (!compressor || !decompressor) {
    const { Compressor } = require('zstd-napi') as typeof Zstd;
    compressor = new Compressor();
    // Level 1: measured on pgbench pages 3–5× faster than deflate level 1 and smaller. No frame checksum: the
    // record's sha256 covers the raw bytes.
    compressor.setParameters({ compressionLevel: 1, contentSizeFlag: true, checksumFlag: false, dictIDFlag: false });
    // The low-level context decompresses into a buffer of the record's raw length: a damaged frame that claims
    // more fails instead of allocating what it claims.
    decompressor = new (require('zstd-napi/binding.js') as typeof ZstdBinding).DCtx();
  }
  return { compressor, decompressor };
}

/**
 * Compress a chunk with zstd level 1 and keep the raw bytes when that does not make it smaller (random or
 * already compressed data), so that reading such a chunk costs no decompression. Deterministic: the same bytes
 * give the same stored form on any thread.
 */
export function packChunk(data: Uint8Array): PackedChunk {
  const compressed = zstd().compressor.compress(data);
  return compressed.length < data.length
    ? { stored: compressed, flags: FLAG_ZSTD }
    : { stored: Buffer.from(data.buffer, data.byteOffset, data.length), flags: 0 };
}

/**
 * The raw bytes of a stored body of `raw` bytes with `flags`. Throws a plain Error saying what is wrong (a
 * damaged stream must not expand into gigabytes: output is bounded by `raw`). A zstd body is decompressed into
 * `scratch` when it is long enough (the result is then a view of it, valid until the next call).
 */
export function unpackBody(body: Buffer, flags: number, raw: number, scratch?: Buffer): Buffer {
  if (flags === 0) return body;
  if (flags === FLAG_DEFLATE) {
    try {
      return inflateRawSync(body, { maxOutputLength: Math.max(raw, 1) });
    } catch (error) {
      throw new Error(`its compressed bytes do not inflate (${(error as Error).message})`);
    }
  }
  if (flags === FLAG_ZSTD) {
    const data = scratch && scratch.length >= raw ? scratch.subarray(0, raw) : Buffer.allocUnsafe(raw);
    let length: number;
    try {
      length = zstd().decompressor.decompress(data, body);
    } catch (error) {
      throw new Error(`its compressed bytes do not decompress (${(error as Error).message})`);
    }
    return data.subarray(0, length);
  }
  throw new Error(`unknown record flags ${flags}`);
}

/** Hex sha256 of `data`. Kept as the content hash: with the CPU's SHA extensions it runs at ~1.3 GB/s a core. */
export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Record flag the batch results use for a zero page (never written to a pack). */
export const ZERO_MARK = 0xff;

/**
 * What a batch of chunks becomes: for chunk i, its sha256, its flags, and the length of its stored bytes, which
 * follow each other in the batch's output buffer.
 */
export interface BatchResult {
  /** 32 bytes per chunk. */
  hashes: Uint8Array;
  /** Record flags, or {@link ZERO_MARK} for a zero page (hash filled in, nothing in the output). */
  flags: Uint8Array;
  /** Stored length of each chunk in the output (0 for a zero page). */
  stored: Uint32Array;
}

/**
 * Hash, zero-test and compress the chunks of a batch: chunk i is `input[starts[i] .. starts[i+1])`; the stored
 * bytes go one after another into `out`, which must be at least as long as the input (a chunk is stored raw
 * when compression does not make it smaller). The work of a hashing worker, also run on the main thread when no
 * worker can be started.
 */
export function processBatch(input: Uint8Array, starts: Uint32Array, out: Uint8Array): BatchResult {
  const count = starts.length - 1;
  const hashes = new Uint8Array(count * 32);
  const flags = new Uint8Array(count);
  const stored = new Uint32Array(count);
  let at = 0;
  for (let i = 0; i < count; i++) {
    const data = input.subarray(starts[i], starts[i + 1]);
    if (isZeroPage(data)) {
      hashes.set(ZERO_HASH_BYTES, i * 32);
      flags[i] = ZERO_MARK;
      continue;
    }
    hashes.set(createHash('sha256').update(data).digest(), i * 32);
    const chunk = packChunk(data);
    flags[i] = chunk.flags;
    stored[i] = chunk.stored.length;
    out.set(chunk.stored, at);
    at += chunk.stored.length;
  }
  return { hashes, flags, stored };
}

const ZERO_HASH_BYTES = Buffer.from(ZERO_PAGE_HASH, 'hex');

let checkScratch: Buffer | undefined;

/** Numbers per record in the list {@link checkPack} takes: hash offset, body offset, stored, raw, flags. */
export const CHECK_FIELDS = 5;

/** What {@link checkPack} found. */
export interface PackCheck {
  /** Hex sha256 of the whole pack (its id when it is intact). */
  digest: string;
  /** Index of the first record whose bytes do not match its hash, or -1 when every record does. */
  bad: number;
  /** What is wrong with that record. */
  reason?: string;
}

/**
 * Hash a whole pack and check each of its records: record i's stored bytes, `records[i*5+1 ..]` long
 * `records[i*5+2]` with flags `records[i*5+4]`, must unpack to `records[i*5+3]` bytes whose sha256 is the 32
 * bytes at `records[i*5]`. Stops at the first record that does not (a pusher's damaged or malicious pack must
 * not put wrong bytes under a hash into the store). The work of a pull, run on a hashing worker (see workers.ts).
 */
export function checkPack(pack: Uint8Array, records: Uint32Array): PackCheck {
  const digest = createHash('sha256').update(pack).digest('hex');
  const view = Buffer.from(pack.buffer, pack.byteOffset, pack.length);
  // One buffer for every page: fresh memory per record is what costs most on some machines (see sync.ts).
  const scratch = (checkScratch ??= Buffer.allocUnsafe(ZERO_PAGE_SIZE));
  for (let i = 0; i * CHECK_FIELDS < records.length; i++) {
    const at = i * CHECK_FIELDS;
    const [hashAt, bodyAt, stored, raw, flags] = records.subarray(at, at + CHECK_FIELDS);
    try {
      if (bodyAt + stored > view.length || hashAt + 32 > view.length) throw new Error('is cut short');
      const data = unpackBody(view.subarray(bodyAt, bodyAt + stored), flags, raw, scratch);
      if (data.length !== raw) throw new Error(`it inflates to ${data.length} bytes, not ${raw}`);
      const hash = createHash('sha256').update(data).digest();
      if (!hash.equals(view.subarray(hashAt, hashAt + 32))) throw new Error('its bytes do not match its sha256');
    } catch (error) {
      return { digest, bad: i, reason: (error as Error).message };
    }
  }
  return { digest, bad: -1 };
}
