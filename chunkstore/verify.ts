import fs, { type FileHandle } from 'node:fs/promises';
import { NeonError } from '../core/errors.js';
import { PACK_HEADER, RECORD_HEADER, checkPackHeader, unpackChunk, type PackEntries } from './format.js';
import { isMissing, packPath, type HandleCache } from './files.js';
import type { PackSlot, PackTable } from './table.js';

/** What {@link verifyChunks} found wrong. */
export interface VerifyResult {
  /** Hashes the store does not know, or whose pack file is gone. */
  missing: string[];
  /** Chunks whose stored bytes are damaged, with the id of their pack. */
  corrupt: { hash: string; pack: string }[];
}

/** What verification needs of a store. */
export interface VerifyContext {
  dir: string;
  table: PackTable;
  handles: HandleCache;
}

/**
 * Re-read and re-hash chunks: `hashes`, or every chunk the store knows. Pack files are opened afresh (not
 * through cached descriptors, which would still read a file removed behind the store's back), and read whole
 * when most of a pack is wanted, chunk by chunk otherwise.
 */
export async function verifyChunks(ctx: VerifyContext, hashes?: Iterable<string>): Promise<VerifyResult> {
  const result: VerifyResult = { missing: [], corrupt: [] };
  const wanted = new Map<PackSlot, number[]>();
  const want = (slot: PackSlot, entry: number) => {
    const list = wanted.get(slot);
    if (list) list.push(entry);
    else wanted.set(slot, [entry]);
  };
  if (hashes) {
    for (const hash of new Set(hashes)) {
      const location = ctx.table.find(hash);
      if (location) want(location.slot, location.entry);
      else result.missing.push(hash);
    }
    for (const [slot, entries] of wanted) {
      const all = await entriesOf(ctx, slot, result);
      if (all) await verifySlot(ctx, slot, all, entries, result);
    }
    return result;
  }
  // Everything: one pack at a time, so that only one pack's entries are in memory.
  for (const slot of ctx.table.allSlots()) {
    const all = await entriesOf(ctx, slot, result);
    if (!all) continue;
    const entries: number[] = [];
    for (let i = 0; i < all.count; i++) if (ctx.table.pointsTo(all.hashes[i], slot, i)) entries.push(i);
    await verifySlot(ctx, slot, all, entries, result);
  }
  return result;
}

/**
 * The entries of `slot`. When its .idx cannot be read (removed or damaged behind the store's back), the chunks
 * the index sends to it are reported (missing when the pack is gone too, corrupt otherwise) and undefined returned.
 */
async function entriesOf(ctx: VerifyContext, slot: PackSlot, result: VerifyResult): Promise<PackEntries | undefined> {
  try {
    return await ctx.table.entriesOf(slot);
  } catch (error) {
    if (!isMissing(error) && !(error instanceof NeonError)) throw error;
    const packGone = await fs.stat(packPath(ctx.dir, slot.id!)).then(() => false, (e: unknown) => (isMissing(e) ? true : Promise.reject(e)));
    await ctx.table.forEach((hash, at) => {
      if (at !== slot) return;
      if (packGone) result.missing.push(hash);
      else result.corrupt.push({ hash, pack: slot.id! });
    });
    return undefined;
  }
}

async function verifySlot(ctx: VerifyContext, slot: PackSlot, all: PackEntries, entries: number[], result: VerifyResult): Promise<void> {
  if (!entries.length) return;
  const { hashes, offsets, stored } = all;
  const pack = slot.id ?? 'unsealed';
  if (slot.bytes) {
    // Not written yet: check the copy in memory.
    for (const i of entries) check(() => unpackChunk(slot.bytes!, offsets[i], all, i), hashes[i], pack, result);
    return;
  }
  const file = packPath(ctx.dir, slot.id!);
  let handle: FileHandle;
  try {
    handle = await fs.open(file, 'r');
  } catch (error) {
    if (!isMissing(error)) throw error;
    ctx.handles.forget(file);
    for (const i of entries) result.missing.push(hashes[i]);
    return;
  }
  try {
    const head = Buffer.alloc(PACK_HEADER);
    const { bytesRead } = await handle.read(head, 0, PACK_HEADER, 0);
    try {
      checkPackHeader(head.subarray(0, bytesRead), file);
    } catch (error) {
      if (!(error instanceof NeonError) || error.code !== 'corrupt') throw error;
      for (const i of entries) result.corrupt.push({ hash: hashes[i], pack });
      return;
    }
    const wantedBytes = entries.reduce((sum, i) => sum + RECORD_HEADER + stored[i], 0);
    if (wantedBytes * 4 >= slot.length) {
      const whole = await handle.readFile();
      for (const i of entries) check(() => unpackChunk(whole, offsets[i], all, i), hashes[i], pack, result);
      return;
    }
    for (const i of entries) {
      const record = Buffer.alloc(RECORD_HEADER + stored[i]);
      const { bytesRead: got } = await handle.read(record, 0, record.length, offsets[i]);
      check(() => unpackChunk(record.subarray(0, got), 0, all, i), hashes[i], pack, result);
    }
  } finally {
    await handle.close();
  }
}

function check(unpack: () => Buffer, hash: string, pack: string, result: VerifyResult): void {
  try {
    unpack();
  } catch {
    result.corrupt.push({ hash, pack });
  }
}
