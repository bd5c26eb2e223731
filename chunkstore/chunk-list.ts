// Compact lists and sets of chunk hashes: raw 32-byte sha256 values in one Buffer rather than a 64-character hex
// string each. A 10 GB image names 1.2 M pages: as strings that was ~150 MB of heap (and a string made on the
// main thread per page); as bytes it is 38 MB outside the heap, read and written without a string per page.
import { ZERO_PAGE_HASH } from './codec.js';

/** Bytes of one hash (sha256). */
export const HASH_BYTES = 32;
/** The all-zero page's sha256 as bytes (see codec.ts ZERO_PAGE_HASH). */
export const ZERO_PAGE_HASH_RAW = Buffer.from(ZERO_PAGE_HASH, 'hex');

/**
 * The chunk hashes of one file, in page order, in one Buffer. Iterating yields hex strings (made one at a time,
 * for the APIs that take `Iterable<string>`); {@link rawAt} and {@link hexAt} read one entry.
 */
export class ChunkList implements Iterable<string> {
  private buf: Buffer;
  private count: number;

  /** A list over `raw` (its length a multiple of 32; not copied: a view of a decoded manifest stays a view). */
  constructor(raw: Buffer = Buffer.alloc(0), count = raw.length / HASH_BYTES) {
    if (!Number.isInteger(count) || count * HASH_BYTES > raw.length) throw new Error(`a chunk list of ${raw.length} bytes cannot hold ${count} hashes`);
    this.buf = raw;
    this.count = count;
  }

  /** A list of `length` entries, all zero bytes until set. */
  static alloc(length: number): ChunkList {
    return new ChunkList(Buffer.alloc(length * HASH_BYTES));
  }

  /** A list from hex hashes (tests, and manifests of format version 1). */
  static fromHex(hashes: readonly string[]): ChunkList {
    const list = ChunkList.alloc(hashes.length);
    hashes.forEach((hash, i) => list.setHex(i, hash));
    return list;
  }

  /** Number of hashes. */
  get length(): number {
    return this.count;
  }

  /** The hashes' bytes, 32 per entry (a view: do not keep it across {@link push}). */
  get raw(): Buffer {
    return this.buf.subarray(0, this.count * HASH_BYTES);
  }

  /** Hash `i` as 32 bytes (a view into the list). */
  rawAt(i: number): Buffer {
    this.check(i);
    return this.buf.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES);
  }

  /** Hash `i` as lowercase hex. */
  hexAt(i: number): string {
    this.check(i);
    return this.buf.toString('hex', i * HASH_BYTES, (i + 1) * HASH_BYTES);
  }

  /** True when entry `i` of this list and entry `j` of `other` are the same hash. */
  sameAt(i: number, other: ChunkList, j = i): boolean {
    if (i >= this.count || j >= other.count) return false;
    return this.buf.compare(other.buf, j * HASH_BYTES, (j + 1) * HASH_BYTES, i * HASH_BYTES, (i + 1) * HASH_BYTES) === 0;
  }

  /** Set entry `i` from `source` bytes `[offset, offset + 32)`. */
  setRaw(i: number, source: Uint8Array, offset = 0): void {
    this.check(i);
    Buffer.prototype.copy.call(source, this.buf, i * HASH_BYTES, offset, offset + HASH_BYTES);
  }

  /** Set entry `i` from a hex hash. */
  setHex(i: number, hash: string): void {
    this.check(i);
    if (this.buf.write(hash, i * HASH_BYTES, HASH_BYTES, 'hex') !== HASH_BYTES) throw new Error(`"${hash}" is not a sha256 in hex`);
  }

  /** Append an entry left zero until set (its index is returned); the buffer grows by doubling. */
  push(): number {
    if ((this.count + 1) * HASH_BYTES > this.buf.length) {
      const grown = Buffer.alloc(Math.max(16, this.count * 2) * HASH_BYTES);
      this.buf.copy(grown, 0, 0, this.count * HASH_BYTES);
      this.buf = grown;
    }
    return this.count++;
  }

  /** Drop the spare room {@link push} left (a copy when more than a few entries are unused). */
  trim(): void {
    if (this.buf.length - this.count * HASH_BYTES > 4 * HASH_BYTES) this.buf = Buffer.from(this.raw);
  }

  /** A copy with `length` entries: the first ones of this list, zero entries after its end. */
  resized(length: number): ChunkList {
    const list = ChunkList.alloc(length);
    this.buf.copy(list.buf, 0, 0, Math.min(length, this.count) * HASH_BYTES);
    return list;
  }

  *[Symbol.iterator](): Iterator<string> {
    for (let i = 0; i < this.count; i++) yield this.buf.toString('hex', i * HASH_BYTES, (i + 1) * HASH_BYTES);
  }

  /** JSON (for logs and tests) is the hex array a version-1 manifest held. */
  toJSON(): string[] {
    return [...this];
  }

  private check(i: number): void {
    if (!(i >= 0 && i < this.count)) throw new RangeError(`chunk ${i} of a list of ${this.count}`);
  }
}

/**
 * A set of chunk hashes (the chunks of many images) as one sorted Buffer of distinct 32-byte hashes, with a
 * table of where each leading-bits bucket starts: membership is a bucket lookup and a short binary search,
 * memory is 32 bytes per hash. Immutable; build it with {@link ChunkSet.of} and {@link union}.
 */
export class ChunkSet implements Iterable<string> {
  private readonly scratch = Buffer.alloc(HASH_BYTES);

  private constructor(
    private readonly sorted: Buffer,
    private readonly bits: number,
    private readonly starts: Uint32Array,
  ) {}

  /** The distinct hashes of `lists`. */
  static of(lists: Iterable<ChunkList | undefined>): ChunkSet {
    const all = [...lists].filter((list): list is ChunkList => !!list && list.length > 0);
    const total = all.reduce((n, list) => n + list.length, 0);
    const bits = bucketBits(total);
    // Counting sort on the leading bits straight from the lists (no concatenated copy), then each small bucket
    // sorted in place, then duplicates squeezed out.
    const counts = new Uint32Array((1 << bits) + 1);
    for (const list of all) {
      const raw = list.raw;
      for (let at = 0; at < raw.length; at += HASH_BYTES) counts[(raw.readUInt32BE(at) >>> (32 - bits)) + 1]++;
    }
    for (let b = 1; b < counts.length; b++) counts[b] += counts[b - 1];
    const next = counts.slice();
    const out = Buffer.allocUnsafe(total * HASH_BYTES);
    for (const list of all) {
      const raw = list.raw;
      for (let at = 0; at < raw.length; at += HASH_BYTES) {
        const bucket = raw.readUInt32BE(at) >>> (32 - bits);
        raw.copy(out, next[bucket]++ * HASH_BYTES, at, at + HASH_BYTES);
      }
    }
    for (let b = 0; b < 1 << bits; b++) if (counts[b + 1] - counts[b] > 1) sortRecords(out, counts[b], counts[b + 1]);
    return ChunkSet.fromSorted(out, total);
  }

  /** The empty set. */
  static empty(): ChunkSet {
    return ChunkSet.fromSorted(Buffer.alloc(0), 0);
  }

  /** Number of distinct hashes. */
  get size(): number {
    return this.sorted.length / HASH_BYTES;
  }

  /** True when the set holds the hex hash `hash`. */
  has(hash: string): boolean {
    if (this.scratch.write(hash, 0, HASH_BYTES, 'hex') !== HASH_BYTES || hash.length !== HASH_BYTES * 2) return false;
    return this.hasRaw(this.scratch);
  }

  /** True when the set holds the hash in `source` bytes `[offset, offset + 32)`. */
  hasRaw(source: Buffer, offset = 0): boolean {
    const bucket = source.readUInt32BE(offset) >>> (32 - this.bits);
    let lo = this.starts[bucket];
    let hi = this.starts[bucket + 1];
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const order = source.compare(this.sorted, mid * HASH_BYTES, (mid + 1) * HASH_BYTES, offset, offset + HASH_BYTES);
      if (order === 0) return true;
      if (order < 0) hi = mid;
      else lo = mid + 1;
    }
    return false;
  }

  /** The hashes of both sets (a merge of the two sorted buffers). */
  union(other: ChunkSet): ChunkSet {
    if (!other.size) return this;
    if (!this.size) return other;
    const a = this.sorted;
    const b = other.sorted;
    const out = Buffer.allocUnsafe(a.length + b.length);
    let i = 0;
    let j = 0;
    let n = 0;
    while (i < a.length || j < b.length) {
      const order = i >= a.length ? 1 : j >= b.length ? -1 : a.compare(b, j, j + HASH_BYTES, i, i + HASH_BYTES);
      if (order <= 0) {
        a.copy(out, n, i, i + HASH_BYTES);
        i += HASH_BYTES;
        if (order === 0) j += HASH_BYTES;
      } else {
        b.copy(out, n, j, j + HASH_BYTES);
        j += HASH_BYTES;
      }
      n += HASH_BYTES;
    }
    return ChunkSet.fromSorted(out, n / HASH_BYTES, true);
  }

  *[Symbol.iterator](): Iterator<string> {
    for (let at = 0; at < this.sorted.length; at += HASH_BYTES) yield this.sorted.toString('hex', at, at + HASH_BYTES);
  }

  /** A set over `count` sorted records of `buf`: duplicates squeezed out (unless `distinct`), buckets indexed. */
  private static fromSorted(buf: Buffer, count: number, distinct = false): ChunkSet {
    let n = count;
    if (!distinct && count > 1) {
      n = 1;
      for (let i = 1; i < count; i++) {
        if (buf.compare(buf, (n - 1) * HASH_BYTES, n * HASH_BYTES, i * HASH_BYTES, (i + 1) * HASH_BYTES) === 0) continue;
        if (n !== i) buf.copy(buf, n * HASH_BYTES, i * HASH_BYTES, (i + 1) * HASH_BYTES);
        n++;
      }
    }
    // Keep only what is used: a set may live as long as a gc or a verify.
    const sorted = n * HASH_BYTES === buf.length ? buf : Buffer.from(buf.subarray(0, n * HASH_BYTES));
    const bits = bucketBits(n);
    const starts = new Uint32Array((1 << bits) + 1);
    for (let at = 0; at < sorted.length; at += HASH_BYTES) starts[(sorted.readUInt32BE(at) >>> (32 - bits)) + 1]++;
    for (let b = 1; b < starts.length; b++) starts[b] += starts[b - 1];
    return new ChunkSet(sorted, bits, starts);
  }
}

/** Leading bits that index buckets: about 4 hashes per bucket, the table at most 4 MB. */
function bucketBits(count: number): number {
  return Math.min(20, Math.max(4, Math.ceil(Math.log2(Math.max(1, count / 4)))));
}

/** Sort records `[from, to)` of `buf` in place: an insertion sort for the usual few per bucket, else a sort. */
function sortRecords(buf: Buffer, from: number, to: number): void {
  if (to - from > 32) {
    // A big bucket is one hash many times (a page repeated across files or images): O(n log n), not O(n²).
    const records = Buffer.from(buf.subarray(from * HASH_BYTES, to * HASH_BYTES));
    const views = Array.from({ length: to - from }, (_, i) => records.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES));
    views.sort(Buffer.compare).forEach((view, i) => view.copy(buf, (from + i) * HASH_BYTES));
    return;
  }
  const held = Buffer.allocUnsafe(HASH_BYTES);
  for (let i = from + 1; i < to; i++) {
    buf.copy(held, 0, i * HASH_BYTES, (i + 1) * HASH_BYTES);
    let j = i - 1;
    while (j >= from && held.compare(buf, j * HASH_BYTES, (j + 1) * HASH_BYTES) < 0) {
      buf.copy(buf, (j + 1) * HASH_BYTES, j * HASH_BYTES, (j + 1) * HASH_BYTES);
      j--;
    }
    held.copy(buf, (j + 1) * HASH_BYTES);
  }
}
