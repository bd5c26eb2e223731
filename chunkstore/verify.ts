import fs, { type FileHandle } from 'node:fs/promises';
import { NeonError } from '../core/errors.js';
import { PACK_HEADER, RECORD_HEADER, checkPackHeader, unpackChunk } from './format.js';
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
  } else {
    for (const slot of ctx.table.allSlots()) {
      for (let i = 0; i < slot.entries.count; i++) if (ctx.table.pointsTo(slot.entries.hashes[i], slot, i)) want(slot, i);
    }
  }
  for (const [slot, entries] of wanted) await verifySlot(ctx, slot, entries, result);
  return result;
}

async function verifySlot(ctx: VerifyContext, slot: PackSlot, entries: number[], result: VerifyResult): Promise<void> {
  const { hashes, offsets, stored } = slot.entries;
  const pack = slot.id ?? 'unsealed';
  if (slot.bytes) {
    // Not written yet: check the copy in memory.
    for (const i of entries) check(() => unpackChunk(slot.bytes!, offsets[i], slot.entries, i), hashes[i], pack, result);
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
      for (const i of entries) check(() => unpackChunk(whole, offsets[i], slot.entries, i), hashes[i], pack, result);
      return;
    }
    for (const i of entries) {
      const record = Buffer.alloc(RECORD_HEADER + stored[i]);
      const { bytesRead: got } = await handle.read(record, 0, record.length, offsets[i]);
      check(() => unpackChunk(record.subarray(0, got), 0, slot.entries, i), hashes[i], pack, result);
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
