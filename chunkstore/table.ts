import { NeonError } from '../core/errors.js';
import type { PackEntries } from './format.js';

/** A pack the store knows: being filled, sealed and waiting to be written, or on disk. */
export interface PackSlot {
  /** Number of the slot in this process (never reused), part of every location. */
  readonly no: number;
  /** Hex sha256 of the pack file, once sealed. */
  id?: string;
  entries: PackEntries;
  /** The pack bytes while they are only in memory (being filled or waiting to be written). */
  bytes?: Buffer;
  /** Length of the pack file, once sealed. */
  length: number;
  /** True once the pack and its index are durable on disk. */
  written: boolean;
}

/** A chunk's place: slot and entry number. */
export interface Location {
  slot: PackSlot;
  entry: number;
}

// A location is one number, slot * ENTRY_SPACE + entry, so that the map from a million hashes holds no objects
// per chunk; the rest of an entry lives in the typed arrays of its pack. 2^26 entries leaves 2^27 slots.
const ENTRY_SPACE = 2 ** 26;

/**
 * The catalogue of the store: which slot and entry hold each chunk, and the totals. When a chunk is in two packs
 * (a crash during gc, a pulled pack overlapping local ones) the map points to one of them; the other copy is
 * garbage that gc treats as dead.
 */
export class PackTable {
  private readonly where = new Map<string, number>();
  private readonly slots = new Map<number, PackSlot>();
  private readonly byId = new Map<string, PackSlot>();
  private nextNo = 0;
  /** Sum of raw lengths of the distinct chunks. */
  rawBytes = 0;
  /** Sum of stored (compressed) lengths of the distinct chunks. */
  storedBytes = 0;

  /** Number of distinct chunks. */
  get chunks(): number {
    return this.where.size;
  }

  /** True when some slot holds `hash`. */
  has(hash: string): boolean {
    return this.where.has(hash);
  }

  /** The slot and entry the map sends `hash` to. */
  find(hash: string): Location | undefined {
    const at = this.where.get(hash);
    if (at === undefined) return undefined;
    return { slot: this.slots.get(Math.floor(at / ENTRY_SPACE))!, entry: at % ENTRY_SPACE };
  }

  /** True when the map sends `hash` to entry `entry` of `slot` (not to another copy). */
  pointsTo(hash: string, slot: PackSlot, entry: number): boolean {
    return this.where.get(hash) === slot.no * ENTRY_SPACE + entry;
  }

  /** A new slot over `entries`; its chunks are not findable until claimed. */
  createSlot(entries: PackEntries, bytes?: Buffer): PackSlot {
    if (entries.count >= ENTRY_SPACE) {
      throw new NeonError('bad_format', `a pack of ${entries.count} chunks is more than this store can index (${ENTRY_SPACE - 1})`);
    }
    const slot: PackSlot = { no: this.nextNo++, entries, bytes, length: 0, written: false };
    this.slots.set(slot.no, slot);
    return slot;
  }

  /**
   * Point `hash` (entry `entry` of `slot`) here if no pack holds it yet, or if `replace` approves the slot that
   * holds it now (gc moving a chunk to its new pack). Returns true when the map now points here.
   */
  claim(slot: PackSlot, entry: number, replace?: (current: PackSlot) => boolean): boolean {
    const hash = slot.entries.hashes[entry];
    const current = this.find(hash);
    if (current) {
      if (!replace?.(current.slot)) return false;
      this.storedBytes -= current.slot.entries.stored[current.entry];
      this.rawBytes -= current.slot.entries.raw[current.entry];
    }
    this.where.set(hash, slot.no * ENTRY_SPACE + entry);
    this.storedBytes += slot.entries.stored[entry];
    this.rawBytes += slot.entries.raw[entry];
    return true;
  }

  /** Claim every entry of `slot` (see {@link claim}). */
  claimAll(slot: PackSlot, replace?: (current: PackSlot) => boolean): void {
    for (let i = 0; i < slot.entries.count; i++) this.claim(slot, i, replace);
  }

  /** Record that `slot` is durable on disk as pack `id`; its bytes leave memory. */
  markWritten(slot: PackSlot, id: string, length: number): void {
    slot.id = id;
    slot.length = length;
    slot.written = true;
    slot.bytes = undefined;
    this.byId.set(id, slot);
  }

  /** Forget a slot and every chunk the map finds in it. */
  dropSlot(slot: PackSlot): void {
    for (let i = 0; i < slot.entries.count; i++) {
      const hash = slot.entries.hashes[i];
      if (!this.pointsTo(hash, slot, i)) continue;
      this.where.delete(hash);
      this.storedBytes -= slot.entries.stored[i];
      this.rawBytes -= slot.entries.raw[i];
    }
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
    return [...this.slots.values()];
  }
}
