import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { NeonError } from '../core/errors.js';
import { fsyncDir, tempNameFor } from '../core/fs-atomic.js';
import { corrupt } from './format.js';

/*
 * The multi-pack index `<store>/chunks.midx` (git's idea): every chunk of every pack on disk, sorted by hash,
 * so that a lookup is a binary search instead of a map holding every hash in memory. It is derived from the
 * packs' .idx files and rebuilt from them whenever it is missing, damaged or disagrees with them. Big-endian.
 *
 *   header  "NEONMIDX" | version u32 | pack count u32
 *   packs   pack id (32) | pack length u64 | entry count u32 | trailer (checksum) of its .idx (32)
 *   entries sha256 (32) | pack number u32 | entry u32 | record offset u32 | stored u32 | raw u32 | flags u8 | 0 (3)
 *           sorted by hash, one entry per hash (the copy the store uses)
 *   fan-out 256 × u32: entries whose first hash byte is ≤ i
 *   footer  entry count u64 | sha256 of everything before it (32)
 *
 * In memory a reader keeps only the first 12 bytes of each hash (12 bytes per chunk, ~1.5 MB per GB of pages),
 * searched on the first 4: has() answers from them without a read, find() confirms the whole hash and reads
 * the record with one positional read of 56 bytes. Two different pages agreeing on 96 bits of sha256 (odds
 * about n² / 2^97, ~1e-17 for 10 GB of pages) would make has() wrongly say yes: the page would then be reported
 * missing by read() and `neon verify` (find() checks all 256 bits), never read back as other bytes.
 */

/** File name of the multi-pack index in the store folder. */
export const MIDX_NAME = 'chunks.midx';
const MAGIC = Buffer.from('NEONMIDX');
const VERSION = 1;
const HEADER = 16;
const PACK_RECORD = 76;
/** Bytes of one entry. */
export const MIDX_ENTRY = 56;
const FANOUT = 256 * 4;
const FOOTER = 40;
/** Entries read or written per block when streaming. */
const BLOCK = 16384;

/** A pack the index covers, with what its .idx looked like when the index was written. */
export interface MidxPack {
  id: string;
  length: number;
  count: number;
  /** The last 32 bytes (the checksum) of the pack's .idx. */
  trailer: Buffer;
}

/** Where a chunk is, as an entry of the index says. */
export interface MidxEntry {
  hash: string;
  /** Number of its pack in the index's pack list. */
  pack: number;
  entry: number;
  offset: number;
  stored: number;
  raw: number;
  flags: number;
}

/** Encode an entry at `at` of `buf`. */
export function writeEntry(buf: Buffer, at: number, e: MidxEntry): void {
  buf.write(e.hash, at, 32, 'hex');
  buf.writeUInt32BE(e.pack, at + 32);
  buf.writeUInt32BE(e.entry, at + 36);
  buf.writeUInt32BE(e.offset, at + 40);
  buf.writeUInt32BE(e.stored, at + 44);
  buf.writeUInt32BE(e.raw, at + 48);
  buf[at + 52] = e.flags;
  buf.fill(0, at + 53, at + 56);
}

/** Decode the entry at `at` of `buf`. */
export function readEntry(buf: Buffer, at: number, hash = buf.toString('hex', at, at + 32)): MidxEntry {
  return {
    hash,
    pack: buf.readUInt32BE(at + 32),
    entry: buf.readUInt32BE(at + 36),
    offset: buf.readUInt32BE(at + 40),
    stored: buf.readUInt32BE(at + 44),
    raw: buf.readUInt32BE(at + 48),
    flags: buf[at + 52],
  };
}

/** An open multi-pack index: the pack list and hash prefixes in memory, entries read from the file. */
export class MidxFile {
  private readonly scratch = Buffer.alloc(MIDX_ENTRY);
  private closed = false;

  private constructor(
    private readonly fd: number,
    readonly packs: MidxPack[],
    readonly count: number,
    private readonly prefix: Uint32Array,
    private readonly start: number,
  ) {}

  /**
   * Open `file`, read it whole once to check its checksum and order and to keep the hash prefixes, calling
   * `onEntry` for each entry. Undefined when the file does not exist; throws `corrupt` when it is damaged.
   */
  static async load(file: string, onEntry: (entry: MidxEntry) => void): Promise<MidxFile | undefined> {
    let handle: FileHandle;
    try {
      handle = await fsp.open(file, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
    try {
      const loaded = await readWhole(handle, file, onEntry);
      // Lookups are synchronous (has() and add() are): they use the descriptor with readSync.
      const fd = fs.openSync(file, 'r');
      return new MidxFile(fd, loaded.packs, loaded.count, loaded.prefix, loaded.start);
    } finally {
      await handle.close();
    }
  }

  /** Number of the first entry whose 96-bit prefix is that of `hash`, or -1 (no read). */
  private search(hash: string): number {
    const key = parseInt(hash.slice(0, 8), 16);
    const { prefix } = this;
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (prefix[mid * 3] < key) lo = mid + 1;
      else hi = mid;
    }
    const a = parseInt(hash.slice(8, 16), 16);
    const b = parseInt(hash.slice(16, 24), 16);
    for (let i = lo; i < this.count && prefix[i * 3] === key; i++) if (prefix[i * 3 + 1] === a && prefix[i * 3 + 2] === b) return i;
    return -1;
  }

  /** True when an entry's first 96 bits are those of `hash` (see the odds above); no read. */
  has(hash: string): boolean {
    return this.search(hash) >= 0;
  }

  /** The entry of `hash`, or undefined: one positional read when the prefix matches, the whole hash checked. */
  find(hash: string): MidxEntry | undefined {
    const first = this.search(hash);
    if (first < 0) return undefined;
    const { prefix } = this;
    for (let i = first; i < this.count && prefix[i * 3] === prefix[first * 3]; i++) {
      if (prefix[i * 3 + 1] !== prefix[first * 3 + 1] || prefix[i * 3 + 2] !== prefix[first * 3 + 2]) continue;
      fs.readSync(this.fd, this.scratch, 0, MIDX_ENTRY, this.start + i * MIDX_ENTRY);
      if (this.scratch.toString('hex', 0, 32) === hash) return readEntry(this.scratch, 0, hash);
    }
    return undefined;
  }

  /** Every entry, in hash order, as blocks of encoded entries (`n` entries of `buf`). */
  async *blocks(): AsyncGenerator<{ buf: Buffer; n: number }> {
    const buf = Buffer.allocUnsafe(BLOCK * MIDX_ENTRY);
    for (let i = 0; i < this.count; i += BLOCK) {
      const n = Math.min(BLOCK, this.count - i);
      await readFully(this.fd, buf, n * MIDX_ENTRY, this.start + i * MIDX_ENTRY);
      yield { buf, n };
    }
  }

  /** Close the descriptor. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
  }
}

async function readFully(fd: number, buf: Buffer, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await new Promise<{ bytesRead: number }>((resolve, reject) =>
      fs.read(fd, buf, done, length - done, position + done, (error, bytesRead) => (error ? reject(error) : resolve({ bytesRead }))),
    );
    if (bytesRead === 0) throw corrupt(`the multi-pack index ended early`);
    done += bytesRead;
  }
}

async function readAt(handle: FileHandle, length: number, position: number, file: string): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  const { bytesRead } = await handle.read(buf, 0, length, position);
  if (bytesRead !== length) throw corrupt(`${file} is damaged: it ends early`);
  return buf;
}

async function readWhole(handle: FileHandle, file: string, onEntry: (entry: MidxEntry) => void) {
  const size = (await handle.stat()).size;
  if (size < HEADER + FANOUT + FOOTER) throw corrupt(`${file} is damaged: it is too short`);
  const header = await readAt(handle, HEADER, 0, file);
  if (!header.subarray(0, 8).equals(MAGIC)) throw corrupt(`${file} is damaged: it is not a neon multi-pack index`);
  if (header.readUInt32BE(8) !== VERSION) throw corrupt(`${file} has format version ${header.readUInt32BE(8)}, not ${VERSION}`);
  const packCount = header.readUInt32BE(12);
  const start = HEADER + packCount * PACK_RECORD;
  const footer = await readAt(handle, FOOTER, size - FOOTER, file);
  const count = Number(footer.readBigUInt64BE(0));
  if (size !== start + count * MIDX_ENTRY + FANOUT + FOOTER) throw corrupt(`${file} is damaged: ${size} bytes for ${count} entries`);
  const sum = createHash('sha256').update(header);
  const list = await readAt(handle, packCount * PACK_RECORD, HEADER, file);
  sum.update(list);
  const packs: MidxPack[] = [];
  for (let k = 0, at = 0; k < packCount; k++, at += PACK_RECORD) {
    packs.push({
      id: list.toString('hex', at, at + 32),
      length: Number(list.readBigUInt64BE(at + 32)),
      count: list.readUInt32BE(at + 40),
      trailer: Buffer.from(list.subarray(at + 44, at + 76)),
    });
  }
  const prefix = new Uint32Array(count * 3);
  const buf = Buffer.allocUnsafe(BLOCK * MIDX_ENTRY);
  let previous = '';
  for (let i = 0; i < count; i += BLOCK) {
    const n = Math.min(BLOCK, count - i);
    const block = buf.subarray(0, n * MIDX_ENTRY);
    const { bytesRead } = await handle.read(block, 0, block.length, start + i * MIDX_ENTRY);
    if (bytesRead !== block.length) throw corrupt(`${file} is damaged: it ends early`);
    sum.update(block);
    for (let j = 0; j < n; j++) {
      const entry = readEntry(block, j * MIDX_ENTRY);
      if (entry.hash <= previous || entry.pack >= packCount) throw corrupt(`${file} is damaged: entry ${i + j} is out of order or names no pack`);
      previous = entry.hash;
      for (let w = 0; w < 3; w++) prefix[(i + j) * 3 + w] = block.readUInt32BE(j * MIDX_ENTRY + w * 4);
      onEntry(entry);
    }
  }
  sum.update(await readAt(handle, FANOUT, size - FOOTER - FANOUT, file));
  sum.update(footer.subarray(0, 8));
  if (!sum.digest().equals(footer.subarray(8))) throw corrupt(`${file} is damaged: its checksum does not match`);
  return { packs, count, prefix, start };
}

/**
 * Writes a new multi-pack index: entries are added in hash order and streamed to a temp file, which replaces
 * `file` atomically and durably on finish(). A crash leaves the old index (or none) and a temp file.
 */
export class MidxWriter {
  private readonly sum: Hash = createHash('sha256');
  private readonly block = Buffer.allocUnsafe(BLOCK * MIDX_ENTRY);
  private used = 0;
  private count = 0;
  private readonly fanout = new Uint32Array(256);
  private position = 0;
  /** The 12-byte hash prefixes (3 words each) of the entries written, for the reader. */
  private prefix: Uint32Array;

  private constructor(
    private readonly file: string,
    private readonly temp: string,
    private readonly handle: FileHandle,
    capacity: number,
  ) {
    this.prefix = new Uint32Array(Math.max(capacity, 1) * 3);
  }

  /** Start an index over `packs`, with room for up to `capacity` entries. */
  static async create(file: string, packs: MidxPack[], capacity: number): Promise<MidxWriter> {
    const temp = tempNameFor(file);
    const writer = new MidxWriter(file, temp, await fsp.open(temp, 'wx', 0o644), capacity);
    const head = Buffer.alloc(HEADER + packs.length * PACK_RECORD);
    MAGIC.copy(head, 0);
    head.writeUInt32BE(VERSION, 8);
    head.writeUInt32BE(packs.length, 12);
    packs.forEach((pack, k) => {
      const at = HEADER + k * PACK_RECORD;
      head.write(pack.id, at, 32, 'hex');
      head.writeBigUInt64BE(BigInt(pack.length), at + 32);
      head.writeUInt32BE(pack.count, at + 40);
      pack.trailer.copy(head, at + 44);
    });
    await writer.write(head);
    return writer;
  }

  /** Append the encoded entry at `at` of `buf` (entries must come in increasing hash order). */
  async add(buf: Buffer, at: number): Promise<void> {
    if (this.count * 3 === this.prefix.length) {
      const grown = new Uint32Array(this.prefix.length * 2);
      grown.set(this.prefix);
      this.prefix = grown;
    }
    for (let w = 0; w < 3; w++) this.prefix[this.count * 3 + w] = buf.readUInt32BE(at + w * 4);
    this.count++;
    this.fanout[buf[at]]++;
    buf.copy(this.block, this.used * MIDX_ENTRY, at, at + MIDX_ENTRY);
    if (++this.used === BLOCK) await this.flushBlock();
  }

  /** Write the fan-out and footer, make the file durable and put it in place; returns the prefixes. */
  async finish(): Promise<{ prefix: Uint32Array; count: number }> {
    await this.flushBlock();
    const tail = Buffer.alloc(FANOUT + FOOTER);
    let total = 0;
    for (let b = 0; b < 256; b++) tail.writeUInt32BE((total += this.fanout[b]), b * 4);
    tail.writeBigUInt64BE(BigInt(this.count), FANOUT);
    this.sum.update(tail.subarray(0, FANOUT + 8));
    this.sum.digest().copy(tail, FANOUT + 8);
    await this.handle.write(tail, 0, tail.length, this.position);
    await this.handle.sync();
    await this.handle.close();
    await fsp.rename(this.temp, this.file);
    await fsyncDir(path.dirname(this.file));
    // Drop the unused room when it is large (entries of dropped packs were skipped).
    const prefix = this.prefix.length > this.count * 3 * 1.25 + 1024 ? this.prefix.slice(0, this.count * 3) : this.prefix;
    return { prefix, count: this.count };
  }

  /** Give up: remove the temp file. */
  async abort(): Promise<void> {
    await this.handle.close().catch(() => {});
    await fsp.rm(this.temp, { force: true });
  }

  private async flushBlock(): Promise<void> {
    if (!this.used) return;
    await this.write(this.block.subarray(0, this.used * MIDX_ENTRY));
    this.used = 0;
  }

  private async write(data: Buffer): Promise<void> {
    this.sum.update(data);
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, this.position);
      done += bytesWritten;
      this.position += bytesWritten;
    }
  }
}

/** Open a reader over a file just written by a {@link MidxWriter}, without reading it again. */
export function openWritten(file: string, packs: MidxPack[], written: { prefix: Uint32Array; count: number }): MidxFile {
  const fd = fs.openSync(file, 'r');
  const start = HEADER + packs.length * PACK_RECORD;
  // The constructor is private to keep callers on load(); this is the one other way in.
  return new (MidxFile as unknown as new (...args: unknown[]) => MidxFile)(fd, packs, written.count, written.prefix, start);
}

/** Thrown for a multi-pack index that cannot be used (the store rebuilds it). */
export function isUnusable(error: unknown): boolean {
  return error instanceof NeonError && (error.code === 'corrupt' || error.code === 'bad_format');
}
