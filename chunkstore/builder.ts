import type { PackedChunk } from './codec.js';
import { PACK_HEADER, RECORD_HEADER, packHeader, sha256, writeRecordHeader, type PackEntries } from './format.js';

export { packChunk, type PackedChunk } from './codec.js';

/**
 * A pack being filled in memory. It is also the entry list of its pack (it implements {@link PackEntries}), so
 * that its chunks can be found and read before the pack is written, and nothing is copied when it is sealed.
 */
export class PackBuilder implements PackEntries {
  count = 0;
  hashes: string[] = [];
  offsets = new Uint32Array(64);
  stored = new Uint32Array(64);
  raw = new Uint32Array(64);
  flags = new Uint8Array(64);
  /** Bytes written so far: the pack file as it would be if sealed now. */
  private buf: Buffer;
  /** Length of the pack so far (header included). */
  length = PACK_HEADER;

  /** `limit`: the pack size at which it should be sealed (chunks bigger than that still get a pack of their own). */
  constructor(readonly limit: number) {
    // Grow from a modest start: a pack sealed early by flush() should not pin `limit` bytes.
    this.buf = Buffer.allocUnsafe(Math.min(limit, 256 * 1024) + PACK_HEADER);
    packHeader().copy(this.buf, 0);
  }

  /** The pack bytes so far (a view, not a copy). */
  get bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }

  /** True when a chunk of `storedLength` bytes can join without passing the limit (an empty pack takes anything). */
  fits(storedLength: number): boolean {
    return this.count === 0 || this.length + RECORD_HEADER + storedLength <= this.limit;
  }

  /** True once the pack has reached its limit. */
  get full(): boolean {
    return this.length >= this.limit;
  }

  /** Append a record; returns its entry number. `hash` is the hex sha256 of the raw bytes. */
  append(hash: string, rawLength: number, chunk: PackedChunk): number {
    const need = this.length + RECORD_HEADER + chunk.stored.length;
    if (need > this.buf.length) {
      // Grow by 4× (256 KiB, 1 MiB, 4 MiB, 16 MiB): a full pack is copied about a third of its size on the way,
      // not once more as with doubling.
      const grown = Buffer.allocUnsafe(Math.max(need, Math.min(this.buf.length * 4, this.limit + PACK_HEADER)));
      this.buf.copy(grown, 0, 0, this.length);
      this.buf = grown;
    }
    if (this.count === this.offsets.length) this.growEntries();
    const i = this.count++;
    writeRecordHeader(this.buf, this.length, Buffer.from(hash, 'hex'), rawLength, chunk.stored.length, chunk.flags);
    chunk.stored.copy(this.buf, this.length + RECORD_HEADER);
    this.hashes.push(hash);
    this.offsets[i] = this.length;
    this.stored[i] = chunk.stored.length;
    this.raw[i] = rawLength;
    this.flags[i] = chunk.flags;
    this.length = need;
    return i;
  }

  /** Stop growing: trim the entry arrays and return the pack bytes and id. */
  seal(): { bytes: Buffer; id: string } {
    this.offsets = this.offsets.slice(0, this.count);
    this.stored = this.stored.slice(0, this.count);
    this.raw = this.raw.slice(0, this.count);
    this.flags = this.flags.slice(0, this.count);
    const bytes = this.bytes;
    // The builder stays the entry list of its pack for as long as the store runs: it must not pin the bytes,
    // which the store drops once they are on disk.
    this.buf = Buffer.alloc(0);
    return { bytes, id: sha256(bytes) };
  }

  private growEntries(): void {
    const grow = <T extends Uint32Array | Uint8Array>(old: T, make: (n: number) => T): T => {
      const next = make(old.length * 2);
      next.set(old);
      return next;
    };
    this.offsets = grow(this.offsets, (n) => new Uint32Array(n));
    this.stored = grow(this.stored, (n) => new Uint32Array(n));
    this.raw = grow(this.raw, (n) => new Uint32Array(n));
    this.flags = grow(this.flags, (n) => new Uint8Array(n));
  }
}
