import fs from 'node:fs/promises';
import path from 'node:path';
import { NeonError } from '../core/errors.js';
import { decodeIndex, type PackEntries } from './format.js';
import { indexPath } from './files.js';
import { MIDX_ENTRY, MIDX_NAME, MidxWriter, openWritten, writeEntry, type MidxFile, type MidxPack } from './midx.js';

/** A pack the store knows: being filled, sealed and waiting to be written, or on disk. */
export interface PackSlot {
  /** Number of the slot in this process (never reused), part of every location. */
  readonly no: number;
  /** Hex sha256 of the pack file, once sealed. */
  id?: string;
  /**
   * Its entries, while its chunks are found through the in-memory tail of the index. Once they are in the
   * multi-pack index file this is empty (count 0): read them with {@link PackTable.entriesOf}.
   */
  entries: PackEntries;
  /** The pack bytes while they are only in memory (being filled or waiting to be written). */
  bytes?: Buffer;
  /** Length of the pack file, once sealed. */
  length: number;
  /** True once the pack and its index are durable on disk. */
  written: boolean;
}

/** A chunk's place: slot and entry number, and what the index says of its record. */
export interface Location {
  slot: PackSlot;
  entry: number;
  hash: string;
  /** Offset of its record (header) in the pack. */
  offset: number;
  stored: number;
  raw: number;
  flags: number;
}

/** What the table keeps of a slot beside the slot itself. */
interface SlotState {
  slot: PackSlot;
  /** Entries of the pack (its .idx count), known once sealed. */
  count: number;
  /** The chunks the index sends here, and their raw and stored sums. */
  chunks: number;
  raw: number;
  stored: number;
  /** Entries of the tail that point here. */
  inTail: number;
  /** Checksum of its .idx, once read. */
  trailer?: Buffer;
  dropped: boolean;
}

// A tail location is one number, slot * ENTRY_SPACE + entry, so that the tail holds no object per chunk.
const ENTRY_SPACE = 2 ** 26;
const EMPTY: PackEntries = { count: 0, hashes: [], offsets: new Uint32Array(0), stored: new Uint32Array(0), raw: new Uint32Array(0), flags: new Uint8Array(0) };
/** Tail size (chunks) at which it is merged into the index file: ~10 MB of memory, ~16 merges per 10 GB. */
export const TAIL_LIMIT = 65536;
/** Index entries a merge handles between two turns of the event loop (~2 ms of work). */
const MERGE_SLICE = 2048;

/**
 * The catalogue of the store: which slot and entry hold each chunk, and the totals. It lives on disk in the
 * multi-pack index (midx.ts), searched by binary search over 4-byte hash prefixes held in memory, plus a tail
 * in memory for chunks of packs added since the file was last written, merged into a new file when it grows
 * past {@link TAIL_LIMIT} (and at close). The tail wins over the file. When a chunk is in two packs (a crash
 * during gc, a pulled pack overlapping local ones) the index points to one of them; the other copy is garbage
 * that gc treats as dead.
 */
export class PackTable {
  private readonly tail = new Map<string, number>();
  private readonly slots = new Map<number, SlotState>();
  private readonly byId = new Map<string, PackSlot>();
  private midx?: MidxFile;
  /** Slot of each pack number of the index file. */
  private midxSlots: SlotState[] = [];
  /** True when a pack the index file names has been dropped (until the next merge leaves it out). */
  private midxDropped = false;
  private nextNo = 0;
  private merging?: Promise<void>;
  /**
   * Tail size at which it is merged: {@link TAIL_LIMIT}, or NEON_INDEX_TAIL from the environment (tests and
   * benchmarks use a small one to merge often).
   */
  readonly tailLimit = Number(process.env.NEON_INDEX_TAIL) || TAIL_LIMIT;
  /** Merge in the background when the tail is full (off while the store opens, which merges itself). */
  autoMerge = true;
  /** Why the last background merge failed (retried at the next trigger). */
  mergeError?: unknown;
  /** Number of distinct chunks. */
  chunks = 0;
  /** Sum of raw lengths of the distinct chunks. */
  rawBytes = 0;
  /** Sum of stored (compressed) lengths of the distinct chunks. */
  storedBytes = 0;

  /** `dir`: the store folder, which holds the index file. */
  constructor(readonly dir: string) {}

  /** Path of the multi-pack index file. */
  get file(): string {
    return path.join(this.dir, MIDX_NAME);
  }

  /** Chunks found through the in-memory tail. */
  get tailSize(): number {
    return this.tail.size;
  }

  /**
   * True when some slot holds `hash`: from memory (the tail, then the index file's 96-bit prefixes, see midx.ts),
   * unless a pack the index file names was dropped since it was written (then with a read, to skip its entries).
   */
  has(hash: string): boolean {
    if (this.tail.has(hash)) return true;
    if (!this.midx) return false;
    return this.midxDropped ? this.find(hash) !== undefined : this.midx.has(hash);
  }

  /** Where the index sends `hash`. */
  find(hash: string): Location | undefined {
    const code = this.tail.get(hash);
    if (code !== undefined) {
      const slot = this.slots.get(Math.floor(code / ENTRY_SPACE))!.slot;
      const entry = code % ENTRY_SPACE;
      const e = slot.entries;
      return { slot, entry, hash, offset: e.offsets[entry], stored: e.stored[entry], raw: e.raw[entry], flags: e.flags[entry] };
    }
    const found = this.midx?.find(hash);
    if (!found) return undefined;
    const state = this.midxSlots[found.pack];
    if (state.dropped) return undefined;
    return { ...found, slot: state.slot };
  }

  /** True when the index sends `hash` to entry `entry` of `slot` (not to another copy). */
  pointsTo(hash: string, slot: PackSlot, entry: number): boolean {
    const found = this.find(hash);
    return found !== undefined && found.slot === slot && found.entry === entry;
  }

  /** A new slot over `entries`; its chunks are not findable until claimed. */
  createSlot(entries: PackEntries, bytes?: Buffer): PackSlot {
    if (entries.count >= ENTRY_SPACE) {
      throw new NeonError('bad_format', `a pack of ${entries.count} chunks is more than this store can index (${ENTRY_SPACE - 1})`);
    }
    const slot: PackSlot = { no: this.nextNo++, entries, bytes, length: 0, written: false };
    this.slots.set(slot.no, { slot, count: 0, chunks: 0, raw: 0, stored: 0, inTail: 0, dropped: false });
    return slot;
  }

  /**
   * Point `hash` (entry `entry` of `slot`) here if no pack holds it yet, or if `replace` approves the slot that
   * holds it now (gc moving a chunk to its new pack). Returns true when the index now points here. `entries`
   * are the slot's entries when they are no longer in memory (a pack identical to one gc made).
   */
  claim(slot: PackSlot, entry: number, replace?: (current: PackSlot) => boolean, entries = slot.entries): boolean {
    const state = this.slots.get(slot.no)!;
    if (entries !== slot.entries) slot.entries = entries;
    const hash = entries.hashes[entry];
    const current = this.find(hash);
    if (current) {
      if (!replace?.(current.slot)) return false;
      this.count(this.slots.get(current.slot.no)!, current.raw, current.stored, -1);
      const old = this.tail.get(hash);
      if (old !== undefined) this.slots.get(Math.floor(old / ENTRY_SPACE))!.inTail--;
    }
    this.tail.set(hash, slot.no * ENTRY_SPACE + entry);
    state.inTail++;
    this.count(state, entries.raw[entry], entries.stored[entry], 1);
    return true;
  }

  /** Claim every entry of `slot` (see {@link claim}). */
  claimAll(slot: PackSlot, replace?: (current: PackSlot) => boolean, entries = slot.entries): void {
    for (let i = 0; i < entries.count; i++) this.claim(slot, i, replace, entries);
  }

  /** Record that `slot` is durable on disk as pack `id`; its bytes leave memory. May start a merge. */
  markWritten(slot: PackSlot, id: string, length: number): void {
    slot.id = id;
    slot.length = length;
    slot.written = true;
    slot.bytes = undefined;
    this.byId.set(id, slot);
    const state = this.slots.get(slot.no)!;
    state.count = slot.entries.count;
    if (this.autoMerge && this.tail.size >= this.tailLimit && !this.merging) this.merge().catch(() => {});
  }

  /** Forget a slot and every chunk the index finds in it. */
  dropSlot(slot: PackSlot): void {
    const state = this.slots.get(slot.no);
    if (!state) return;
    const code = slot.no * ENTRY_SPACE;
    for (let i = 0; i < slot.entries.count && state.inTail > 0; i++) {
      const hash = slot.entries.hashes[i];
      if (this.tail.get(hash) === code + i) {
        this.tail.delete(hash);
        state.inTail--;
      }
    }
    this.count(state, state.raw, state.stored, -state.chunks);
    state.dropped = true;
    if (this.midxSlots.includes(state)) this.midxDropped = true;
    this.slots.delete(slot.no);
    if (slot.id !== undefined && this.byId.get(slot.id) === slot) this.byId.delete(slot.id);
  }

  /** The slot of written pack `id`. */
  written(id: string): PackSlot | undefined {
    return this.byId.get(id);
  }

  /** Every pack on disk, oldest first. */
  writtenSlots(): PackSlot[] {
    return [...this.byId.values()];
  }

  /** Every slot: on disk and in memory. */
  allSlots(): PackSlot[] {
    return [...this.slots.values()].map((state) => state.slot);
  }

  /** Entries in `slot`. */
  countOf(slot: PackSlot): number {
    return Math.max(this.slots.get(slot.no)?.count ?? 0, slot.entries.count);
  }

  /** The entries of `slot`: from memory, or read from its .idx. */
  async entriesOf(slot: PackSlot): Promise<PackEntries> {
    if (slot.entries.count || !slot.written || this.countOf(slot) === 0) return slot.entries;
    const file = indexPath(this.dir, slot.id!);
    return decodeIndex(await fs.readFile(file), file, slot.id!).entries;
  }

  /**
   * Call `fn` for every chunk the index points to, in no useful order (walks the index file once). Runs
   * between merges. `fn` gets the hash, slot and stored length.
   */
  async forEach(fn: (hash: string, slot: PackSlot, stored: number) => void): Promise<void> {
    await this.exclusive(async () => {
      const midx = this.midx;
      if (midx) {
        for await (const { buf, n } of midx.blocks()) {
          for (let j = 0, at = 0; j < n; j++, at += MIDX_ENTRY) {
            const hash = buf.toString('hex', at, at + 32);
            const state = this.midxSlots[buf.readUInt32BE(at + 32)];
            if (!state.dropped && !this.tail.has(hash)) fn(hash, state.slot, buf.readUInt32BE(at + 44));
          }
        }
      }
      for (const [hash, code] of this.tail) {
        const slot = this.slots.get(Math.floor(code / ENTRY_SPACE))!.slot;
        fn(hash, slot, slot.entries.stored[code % ENTRY_SPACE]);
      }
    });
  }

  /** Use `midx` (just loaded, pack number k being `slots[k]`) as the index file. */
  adopt(midx: MidxFile, slots: PackSlot[]): void {
    this.midx = midx;
    this.midxSlots = slots.map((slot) => this.slots.get(slot.no)!);
    this.midxDropped = false;
  }

  /** Record, for a slot of the loaded index file, its entry count, index checksum and one chunk it holds. */
  loaded(slot: PackSlot, count: number, trailer: Buffer): void {
    Object.assign(this.slots.get(slot.no)!, { count, trailer });
  }

  /** Count `chunks` chunks of the loaded index file (of `raw` and `stored` bytes in all) in their slot. */
  countLoaded(slot: PackSlot, chunks: number, raw: number, stored: number): void {
    if (chunks > 0) this.count(this.slots.get(slot.no)!, raw, stored, chunks);
  }

  /** True when the index file lacks written packs' chunks or still names dropped packs. */
  needsMerge(): boolean {
    for (const code of this.tail.values()) if (this.slots.get(Math.floor(code / ENTRY_SPACE))!.slot.written) return true;
    return this.midxSlots.some((state) => state.dropped);
  }

  /**
   * Write the tail's chunks of written packs, and the index file's chunks of packs still known, into a new
   * index file; then drop them from memory. One merge at a time; resolves when the file is in place.
   */
  merge(): Promise<void> {
    const run = this.exclusive(() => this.mergeNow());
    this.merging = run.finally(() => (this.merging = undefined)).catch(() => {});
    return run.then(
      () => (this.mergeError = undefined),
      (error: unknown) => {
        this.mergeError = error;
        throw error;
      },
    );
  }

  /** Wait for a merge in flight, then close the index file. */
  async close(): Promise<void> {
    await this.merging;
    await this.chain;
    this.midx?.close();
    this.midx = undefined;
  }

  private chain: Promise<unknown> = Promise.resolve();

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn);
    this.chain = run.catch(() => {});
    return run;
  }

  private count(state: SlotState, raw: number, stored: number, chunks: number): void {
    const sign = Math.sign(chunks);
    state.chunks += chunks;
    state.raw += sign * raw;
    state.stored += sign * stored;
    if (state.dropped) return;
    this.chunks += chunks;
    this.rawBytes += sign * raw;
    this.storedBytes += sign * stored;
  }

  private async mergeNow(): Promise<void> {
    const states = [...this.slots.values()].filter((state) => state.slot.written);
    for (const state of states) state.trailer ??= await readTrailer(indexPath(this.dir, state.slot.id!));
    // Only chunks of the packs listed: a pack written while the trailers were read waits for the next merge.
    const listed = new Set(states);
    const found: [string, number][] = [];
    for (const entry of this.tail) if (listed.has(this.slots.get(Math.floor(entry[1] / ENTRY_SPACE))!)) found.push(entry);
    const batch = byHash(found);
    const number = new Map(states.map((state, k) => [state, k]));
    const packs: MidxPack[] = states.map((s) => ({ id: s.slot.id!, length: s.slot.length, count: s.count, trailer: s.trailer! }));
    const old = this.midx;
    const oldSlots = this.midxSlots;
    const writer = await MidxWriter.create(this.file, packs, (old?.count ?? 0) + batch.length);
    const scratch = Buffer.alloc(MIDX_ENTRY);
    let b = 0;
    // A merge walks every entry of the index: let the event loop in between slices (writer.add awaits no I/O but
    // once a block), or REST answers wait ~0.2 s per 65536 chunks of a 1 GB image.
    let slice = 0;
    const turn = () => (++slice % MERGE_SLICE === 0 ? new Promise<void>((resolve) => setImmediate(resolve)) : undefined);
    const addBatch = async (code: number, hash: string) => {
      const state = this.slots.get(Math.floor(code / ENTRY_SPACE))!;
      const i = code % ENTRY_SPACE;
      const e = state.slot.entries;
      const entry = { hash, pack: number.get(state)!, entry: i, offset: e.offsets[i], stored: e.stored[i], raw: e.raw[i], flags: e.flags[i] };
      writeEntry(scratch, 0, entry);
      await writer.add(scratch, 0);
      await turn();
    };
    try {
      if (old) {
        for await (const { buf, n } of old.blocks()) {
          for (let j = 0, at = 0; j < n; j++, at += MIDX_ENTRY) {
            const hash = buf.toString('hex', at, at + 32);
            while (b < batch.length && batch[b][0] < hash) await addBatch(batch[b][1], batch[b++][0]);
            if (b < batch.length && batch[b][0] === hash) continue; // the tail's copy wins
            const state = oldSlots[buf.readUInt32BE(at + 32)];
            if (state.dropped || !number.has(state)) continue;
            buf.writeUInt32BE(number.get(state)!, at + 32);
            await writer.add(buf, at);
            await turn();
          }
        }
      }
      while (b < batch.length) await addBatch(batch[b][1], batch[b++][0]);
    } catch (error) {
      await writer.abort();
      throw error;
    }
    const written = await writer.finish();
    this.midx = openWritten(this.file, packs, written);
    this.midxSlots = states;
    this.midxDropped = states.some((state) => state.dropped);
    old?.close();
    for (const [hash, code] of batch) {
      await turn();
      if (this.tail.get(hash) !== code) continue; // claimed again meanwhile: the tail still wins
      this.tail.delete(hash);
      this.slots.get(Math.floor(code / ENTRY_SPACE))!.inTail--;
    }
    // Packs with nothing left in the tail keep no entries in memory.
    for (const state of states) if (state.inTail === 0) state.slot.entries = EMPTY;
  }
}

const SPREAD = 2 ** 21;

/**
 * `entries` in increasing order of their hex hash. Sorting 65536 entries by comparing 64-character strings took
 * ~30 ms on the event loop; this sorts numbers (a hash's first 32 bits, spread by position) in a typed array, and
 * only the rare entries whose first 32 bits are equal by their whole hash.
 */
export function byHash(entries: [string, number][]): [string, number][] {
  if (entries.length >= SPREAD) return entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const keys = new Float64Array(entries.length);
  for (let i = 0; i < entries.length; i++) keys[i] = parseInt(entries[i][0].slice(0, 8), 16) * SPREAD + i;
  keys.sort();
  const sorted = Array.from(keys, (key) => entries[key % SPREAD]);
  for (let start = 0; start < sorted.length;) {
    let end = start + 1;
    const prefix = Math.floor(keys[start] / SPREAD);
    while (end < sorted.length && Math.floor(keys[end] / SPREAD) === prefix) end++;
    if (end - start > 1) {
      const run = sorted.slice(start, end).sort((a, b) => (a[0] < b[0] ? -1 : 1));
      sorted.splice(start, run.length, ...run);
    }
    start = end;
  }
  return sorted;
}

async function readTrailer(file: string): Promise<Buffer> {
  const handle = await fs.open(file, 'r');
  try {
    const { size } = await handle.stat();
    const trailer = Buffer.alloc(32);
    await handle.read(trailer, 0, 32, size - 32);
    return trailer;
  } finally {
    await handle.close();
  }
}
