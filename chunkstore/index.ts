import fs from 'node:fs/promises';
import path from 'node:path';
import { NeonError } from '../core/errors.js';
import { PackBuilder, packChunk, type PackedChunk } from './builder.js';
import { CHECK_FIELDS, ZERO_PAGE_HASH, isZeroPage, zeroPage } from './codec.js';
import { RECORD_HEADER, corrupt, scanPack, sha256, unpackChunk, type PackEntries } from './format.js';
import { HandleCache, indexPath, isMissing, packPath, writePackFiles } from './files.js';
import { collectGarbage, type GcResult, type LiveChunks } from './gc.js';
import { openTable } from './open.js';
import { type Location, type PackSlot, type PackTable } from './table.js';
import { verifyChunks, type VerifyResult } from './verify.js';
import { chunkWorkers, type ChunkWorkers } from './workers.js';

export type { GcResult } from './gc.js';
export type { VerifyResult } from './verify.js';

/** A stored chunk: hex sha256 of its raw bytes and their length. */
export interface ChunkRef {
  hash: string;
  size: number;
}

/** Options of {@link ChunkStore.open}. */
export interface ChunkStoreOptions {
  /**
   * Stored (compressed) bytes at which the pack being filled is sealed and written: 16 MiB by default, between
   * 1 KiB and 1 GiB. Big enough that object storage holds a few objects per gigabyte rather than one per page,
   * small enough that a restore of a few pages downloads little.
   */
  packSize?: number;
}

/** Totals of a store, over distinct chunks (including those not written yet). */
export interface ChunkStoreStats {
  chunks: number;
  /** Packs on disk. */
  packs: number;
  /** Sum of the stored (compressed) lengths of the chunks. */
  storedBytes: number;
  /** Sum of the raw lengths of the chunks. */
  rawBytes: number;
}

/** Where a chunk is stored, for tools and tests. */
export interface ChunkLocation {
  /** Id of its pack; undefined while the pack is only in memory. */
  pack?: string;
  /** Offset of its stored bytes in the pack file. */
  offset: number;
  storedLength: number;
  rawLength: number;
  compressed: boolean;
}

const DEFAULT_PACK_SIZE = 16 * 1024 * 1024;
/** The most bytes {@link ChunkStore.readMany} reads at once. */
const RUN_BYTES = 1024 * 1024;
const MAX_PACK_SIZE = 1024 * 1024 * 1024;
// Offsets in an index are u32: a pack holds at most a pack size plus one oversized chunk, below 4 GiB.
const MAX_CHUNK = 1024 * 1024 * 1024;

/**
 * Content-addressed, compressed, deduplicated storage of chunks (pages of Postgres base images), packed into
 * files of about `packSize` bytes in `<dir>/packs/`: `<id>.pack` holds the records, `<id>.idx` says where each
 * chunk is (see format.ts). The chunk index is on disk (table.ts, midx.ts), so memory does not grow with the
 * store: has() is a binary search over 4-byte hash prefixes plus, on a match, one positional read.
 *
 * add() is synchronous: it compresses the chunk into the pack being filled, and when that pack is full it is
 * sealed and queued to be written in the background. Its chunks stay readable from memory until then. flush()
 * seals the current pack and waits for every queued write; drain() waits until at most one pack waits, so a
 * loop that adds gigabytes keeps memory bounded with `store.add(page); await store.drain();`.
 *
 * One process owns a store folder: gc assumes nobody else adds to it meanwhile.
 */
export class ChunkStore {
  private readonly handles = new HandleCache(32);
  private filling?: { slot: PackSlot; builder: PackBuilder };
  /** Sealed packs waiting to be written, oldest first; the first is being written. */
  private readonly queue: PackSlot[] = [];
  private writing?: Promise<void>;
  private failure?: { error: unknown };
  private sealedIds: string[] = [];
  /** Hashes add() or has() found stored while a gc was pending: gc keeps them (see gc.ts). */
  private touched?: Set<string>;
  /** Number of gc calls not finished. */
  private gcs = 0;
  private gcDone: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    /** The store folder (absolute). */
    readonly dir: string,
    /** Stored bytes at which a pack is sealed. */
    readonly packSize: number,
    private readonly table: PackTable,
  ) {}

  /**
   * Open (creating it if needed) the store in `dir`: open its chunk index, checked against every pack index and
   * rebuilt from them when it disagrees (see open.ts), rebuilding missing or damaged pack indexes from their
   * packs. Temp files of interrupted writes are ignored. Throws `corrupt` when a pack that needs a
   * rebuild is itself damaged, and `bad_format` for files of an unknown format version.
   */
  static async open(dir: string, options: ChunkStoreOptions = {}): Promise<ChunkStore> {
    const packSize = options.packSize ?? DEFAULT_PACK_SIZE;
    if (!Number.isInteger(packSize) || packSize < 1024 || packSize > MAX_PACK_SIZE) {
      throw new NeonError('bad_option', `packSize must be an integer between 1024 and ${MAX_PACK_SIZE} bytes, not ${packSize}`);
    }
    const folder = path.resolve(dir);
    await fs.mkdir(path.join(folder, 'packs'), { recursive: true });
    return new ChunkStore(folder, packSize, await openTable(folder));
  }

  /**
   * True when the store holds the chunk `hash` (written or still in memory). While a gc is pending, a chunk
   * found here is kept by it (as for add()), so that `if (!store.has(h)) store.add(page)` is safe during gc.
   */
  has(hash: string): boolean {
    if (hash === ZERO_PAGE_HASH) return true; // held implicitly, never stored (see codec.ts)
    const found = this.table.has(hash);
    if (found) this.touched?.add(hash);
    return found;
  }

  /**
   * Store a chunk (its bytes are copied) and return its reference. A chunk already stored is not stored again.
   * May seal the pack being filled; its write runs in the background (see {@link drain}).
   */
  add(data: Buffer): ChunkRef {
    this.assertOpen();
    if (data.length > MAX_CHUNK) throw new NeonError('chunk_too_large', `a chunk of ${data.length} bytes is larger than ${MAX_CHUNK}`);
    if (isZeroPage(data)) return { hash: ZERO_PAGE_HASH, size: data.length };
    const hash = sha256(data);
    if (this.table.has(hash)) {
      this.touched?.add(hash);
      return { hash, size: data.length };
    }
    return this.addPacked(hash, data.length, packChunk(data));
  }

  /**
   * Store a chunk hashed and compressed elsewhere (by the hashing workers, see pipeline.ts): as add(), without
   * the work. `hash` must be the sha256 of the `rawLength` raw bytes that `chunk` holds; `chunk.stored` is copied.
   */
  addPacked(hash: string, rawLength: number, chunk: PackedChunk): ChunkRef {
    this.assertOpen();
    if (this.table.has(hash)) {
      this.touched?.add(hash);
      return { hash, size: rawLength };
    }
    if (this.filling && !this.filling.builder.fits(chunk.stored.length)) this.seal();
    if (!this.filling) {
      const builder = new PackBuilder(this.packSize);
      this.filling = { builder, slot: this.table.createSlot(builder, builder.bytes) };
    }
    const { builder, slot } = this.filling;
    const entry = builder.append(hash, rawLength, chunk);
    slot.bytes = builder.bytes; // the builder may have moved to a bigger buffer
    this.table.claim(slot, entry);
    if (builder.full) this.seal();
    return { hash, size: rawLength };
  }

  /**
   * Seal the pack being filled and wait until every sealed pack is durable (pack, then index). Returns the ids
   * of the packs written since the previous flush. After a failed write (disk full…) the packs stay queued and
   * readable, and the next flush retries.
   */
  async flush(): Promise<string[]> {
    this.seal();
    this.failure = undefined;
    this.kick();
    while (this.writing) await this.writing;
    const ids = this.sealedIds;
    this.sealedIds = [];
    return ids;
  }

  /**
   * Wait until at most one sealed pack is queued (the one being written), so that memory holds at most that
   * pack and the one being filled; rejects when a write failed (flush() retries it).
   */
  async drain(): Promise<void> {
    while (this.queue.length > 1 && this.writing) await this.writing;
    if (this.failure) throw this.failure.error;
  }

  /**
   * The raw bytes of chunk `hash`, inflated and checked against the hash. Rejects with `chunk_missing` when the
   * store does not hold it, `corrupt` (naming the pack file and the hash) when its stored bytes are damaged.
   * Safe to call many times in parallel.
   */
  async read(hash: string): Promise<Buffer> {
    this.assertOpen();
    if (hash === ZERO_PAGE_HASH) return zeroPage();
    for (let attempt = 0; ; attempt++) {
      const location = this.table.find(hash);
      if (!location) throw new NeonError('chunk_missing', `chunk ${hash} is not in the chunk store ${this.dir}`, { status: 404 });
      const { slot } = location;
      if (slot.bytes) {
        const data = this.unpack(slot.bytes, location.offset, location, 'the pack in memory');
        // A raw chunk is a view of the pack buffer: copy it so the caller cannot change the pack.
        return location.flags !== 0 ? data : Buffer.from(data);
      }
      const file = packPath(this.dir, slot.id!);
      let record: Buffer;
      try {
        record = await this.handles.use(file, async (handle) => {
          const buf = Buffer.allocUnsafe(RECORD_HEADER + location.stored);
          const { bytesRead } = await handle.read(buf, 0, buf.length, location.offset);
          return buf.subarray(0, bytesRead);
        });
      } catch (error) {
        if (!isMissing(error)) throw error;
        // gc may have moved the chunk to a new pack and removed this one between the lookup and the open.
        if (attempt < 3 && this.table.find(hash)?.slot !== slot) continue;
        throw new NeonError('chunk_missing', `chunk ${hash} is indexed in ${file}, but that pack file is gone`, { status: 404 });
      }
      return this.unpack(record, 0, location, file);
    }
  }

  /**
   * The raw bytes of several chunks, in order, each checked as {@link read} checks it. Records that lie one after
   * the other in a pack file (an image's pages, stored in file order) are read with one system call of up to
   * 1 MiB instead of one each: a restore from chunks spent half its time issuing 8 KiB reads. (Unpacking on the
   * hashing workers too measured slower on two cores: the reads and the writes need this thread and the kernel.)
   */
  async readMany(hashes: readonly string[]): Promise<Buffer[]> {
    this.assertOpen();
    const out: Buffer[] = [];
    while (out.length < hashes.length) {
      const run = this.runAt(hashes, out.length);
      const read = run.length > 1 ? await this.readRun(run) : undefined;
      if (read) out.push(...read);
      else out.push(await this.read(hashes[out.length]));
    }
    return out;
  }

  /** Where the chunks from `hashes[start]` on lie one after another in one pack file, up to about RUN_BYTES. */
  private runAt(hashes: readonly string[], start: number): Location[] {
    const run: Location[] = [];
    for (let i = start; i < hashes.length; i++) {
      const location = hashes[i] === ZERO_PAGE_HASH ? undefined : this.table.find(hashes[i]);
      if (!location || location.slot.bytes) break; // not in a pack file: read() serves it
      const last = run.at(-1);
      const end = last && last.offset + RECORD_HEADER + last.stored;
      if (last && (location.slot !== last.slot || location.offset !== end || end! - run[0].offset >= RUN_BYTES)) break;
      run.push(location);
    }
    return run;
  }

  /** The chunks of `run` (adjacent records of one pack file) from one read; undefined when gc moved the pack. */
  private async readRun(run: Location[]): Promise<Buffer[] | undefined> {
    const [first] = run;
    const last = run[run.length - 1];
    const file = packPath(this.dir, first.slot.id!);
    const bytes = await this.handles
      .use(file, async (handle) => {
        const buf = Buffer.allocUnsafe(last.offset + RECORD_HEADER + last.stored - first.offset);
        const { bytesRead } = await handle.read(buf, 0, buf.length, first.offset);
        return buf.subarray(0, bytesRead);
      })
      .catch((error: unknown) => {
        if (isMissing(error)) return undefined; // read() finds the chunks' new place
        throw error;
      });
    return bytes && run.map((location) => this.unpack(bytes, location.offset - first.offset, location, file));
  }

  /** Where chunk `hash` is stored, or undefined. */
  locate(hash: string): ChunkLocation | undefined {
    const location = this.table.find(hash);
    if (!location) return undefined;
    return {
      pack: location.slot.written ? location.slot.id : undefined,
      offset: location.offset + RECORD_HEADER,
      storedLength: location.stored,
      rawLength: location.raw,
      compressed: location.flags !== 0,
    };
  }

  /** Ids of the packs on disk (sealed and durable), oldest first. */
  packs(): string[] {
    return this.table.writtenSlots().map((slot) => slot.id!);
  }

  /** Path of the file of pack `id`. */
  packFile(id: string): string {
    return packPath(this.dir, id);
  }

  /** Path of the index file of pack `id`. */
  indexFile(id: string): string {
    return indexPath(this.dir, id);
  }

  /** Totals over distinct chunks; `packs` counts the packs on disk. */
  stats(): ChunkStoreStats {
    const { chunks, storedBytes, rawBytes } = this.table;
    return { chunks, packs: this.table.writtenSlots().length, storedBytes, rawBytes };
  }

  /** Re-read and re-hash chunks (`hashes`, or all): which are missing, which are damaged and in which pack. */
  verify(hashes?: Iterable<string>): Promise<VerifyResult> {
    this.assertOpen();
    // The zero page is never stored, so there is nothing of it to re-read.
    const wanted = hashes && [...hashes].filter((hash) => hash !== ZERO_PAGE_HASH);
    return verifyChunks({ dir: this.dir, table: this.table, handles: this.handles }, wanted);
  }

  /**
   * Remove the chunks that are not in `live`: packs without a live chunk go, packs less than half live are
   * rewritten (see gc.ts). Seals and writes the pending pack first. Runs one at a time.
   */
  gc(live: LiveChunks): Promise<GcResult> {
    this.assertOpen();
    // Record dedupe hits from this moment on (not from when the run starts): an add() right after gc() was
    // called already counts on the chunk it found.
    const touched = (this.touched ??= new Set());
    this.gcs++;
    const run = this.gcDone
      .then(async () => {
        await this.flush();
        const context = { dir: this.dir, table: this.table, handles: this.handles, packSize: this.packSize, touched };
        return collectGarbage(context, live);
      })
      .finally(() => {
        if (--this.gcs === 0) this.touched = undefined;
      });
    this.gcDone = run.catch(() => {});
    return run;
  }

  /**
   * Install a whole pack from elsewhere (a pull from storage): its content must hash to `id` (when given) and
   * every chunk must match its hash, or nothing is installed. Then the pack and its index are written durably
   * and its chunks become readable. `source` names it in errors. Returns the pack id.
   *
   * The hashing and decompression run on the hashing workers (workers.ts) when `bytes` is shared memory (see
   * {@link sharedBuffer}), so that a pull checks one pack while the next ones download; `bytes` must then stay
   * unchanged until this settles.
   */
  async importPack(bytes: Buffer, options: { id?: string; source?: string; workers?: ChunkWorkers } = {}): Promise<string> {
    this.assertOpen();
    const source = options.source ?? 'the imported pack';
    let entries: PackEntries | undefined;
    let scanError: unknown;
    try {
      entries = scanPack(bytes, source);
    } catch (error) {
      scanError = error;
    }
    const check = await (options.workers ?? chunkWorkers()).check(bytes, entries ? checkList(entries) : new Uint32Array(0));
    const id = check.digest;
    if (options.id !== undefined && id !== options.id) {
      throw corrupt(`${source} is damaged: its content hashes to ${id}, not to ${options.id}; nothing of it was installed`);
    }
    if (!entries) throw scanError;
    if (check.bad >= 0) {
      throw corrupt(`${source} is damaged: chunk ${entries.hashes[check.bad]} ${check.reason}; nothing of it was installed`);
    }
    if (this.table.written(id)) return id;
    await writePackFiles(this.dir, id, bytes, entries);
    if (this.table.written(id)) return id; // installed meanwhile by a concurrent import of the same pack
    const slot = this.table.createSlot(entries);
    this.table.markWritten(slot, id, bytes.length);
    this.table.claimAll(slot);
    return id;
  }

  /** Flush, then close the pack files. The store cannot be used afterwards. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.gcDone;
    await this.flush();
    this.closed = true;
    this.handles.closeAll();
    // Leave the chunk index file complete, so that the next open reads no pack index. It is derived: when this
    // fails (disk full), the next open reads the pack indexes it lacks instead.
    if (this.table.needsMerge()) await this.table.merge().catch(() => {});
    await this.table.close();
  }

  private assertOpen(): void {
    if (this.closed) throw new NeonError('closed', `the chunk store ${this.dir} is closed`);
  }

  /** Verify and inflate the record at `at` of `buf`; `corrupt` names `file` and the hash. */
  private unpack(buf: Buffer, at: number, location: Location, file: string): Buffer {
    const one = {
      count: 1,
      hashes: [location.hash],
      offsets: Uint32Array.of(location.offset),
      stored: Uint32Array.of(location.stored),
      raw: Uint32Array.of(location.raw),
      flags: Uint8Array.of(location.flags),
    };
    try {
      return unpackChunk(buf, at, one, 0);
    } catch (error) {
      throw corrupt(`chunk ${location.hash} in pack ${file} is damaged: ${(error as Error).message}`);
    }
  }

  /** Move the pack being filled to the write queue. */
  private seal(): void {
    const filling = this.filling;
    if (!filling) return;
    this.filling = undefined;
    const { bytes, id } = filling.builder.seal();
    Object.assign(filling.slot, { bytes, id, length: bytes.length });
    this.queue.push(filling.slot);
    this.kick();
  }

  /** Start writing the oldest queued pack, unless a write runs or the last one failed. */
  private kick(): void {
    if (this.writing || this.failure || !this.queue.length) return;
    const slot = this.queue[0];
    const write = writePackFiles(this.dir, slot.id!, slot.bytes!, slot.entries).then(
      () => {
        this.queue.shift();
        this.table.markWritten(slot, slot.id!, slot.length);
        this.sealedIds.push(slot.id!);
        this.writing = undefined;
        this.kick();
      },
      (error: unknown) => {
        this.writing = undefined;
        this.failure = { error };
        throw error;
      },
    );
    // The error is reported by flush() and drain(); this only keeps it from being an unhandled rejection.
    write.catch(() => {});
    this.writing = write;
  }
}

/** The records of a scanned pack as {@link ChunkWorkers.check} takes them (see codec.ts checkPack). */
function checkList(entries: PackEntries): Uint32Array {
  const list = new Uint32Array(entries.count * CHECK_FIELDS);
  for (let i = 0; i < entries.count; i++) {
    const at = i * CHECK_FIELDS;
    list[at] = entries.offsets[i];
    list[at + 1] = entries.offsets[i] + RECORD_HEADER;
    list[at + 2] = entries.stored[i];
    list[at + 3] = entries.raw[i];
    list[at + 4] = entries.flags[i];
  }
  return list;
}

/** A buffer of `size` bytes in shared memory, which {@link ChunkStore.importPack} checks on the workers without a copy. */
export function sharedBuffer(size: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(size));
}
