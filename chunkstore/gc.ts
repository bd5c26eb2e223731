import fs from 'node:fs/promises';
import path from 'node:path';
import { NeonError } from '../core/errors.js';
import { PackBuilder } from './builder.js';
import { PACK_HEADER, RECORD_HEADER, corrupt, indexLength, unpackChunk, type PackEntries } from './format.js';
import { isMissing, packPath, removePackFiles, removeStaleTemps, writePackFiles, type HandleCache } from './files.js';
import type { PackSlot, PackTable } from './table.js';

/** What {@link collectGarbage} did. */
export interface GcResult {
  /** Packs removed because none of their chunks was live. */
  removedPacks: number;
  /** Packs less than half live, whose live chunks were copied into new packs before they were removed. */
  rewrittenPacks: number;
  /** Net bytes freed on disk (removed packs and indexes minus the new ones). */
  freedBytes: number;
}

/** The chunks gc keeps: a Set of hex hashes, or a compact set (chunk-list.ts ChunkSet) over many images. */
export interface LiveChunks {
  has(hash: string): boolean;
}

/** What gc needs of a store. */
export interface GcContext {
  dir: string;
  table: PackTable;
  handles: HandleCache;
  packSize: number;
  /**
   * Hashes that add() found already stored while gc ran: the caller may now rely on them although they were
   * not in `live`, so a pack holding one of them is kept.
   */
  touched: Set<string>;
}

// Temp files younger than this may belong to a write in progress; older ones are leftovers of a crash.
const STALE_TEMP_MS = 60 * 60 * 1000;

/**
 * Remove what `live` does not need, among the packs on disk when gc starts: packs without a live chunk are
 * removed; packs whose live records are less than half of their bytes are rewritten (their live chunks copied,
 * verified, into new packs that are made durable first, then the old packs removed), so a crash leaves
 * duplicates, never a loss. Dead chunks in packs that stay remain readable until their pack qualifies.
 */
export async function collectGarbage(ctx: GcContext, live: LiveChunks): Promise<GcResult> {
  const { table } = ctx;
  const drop: PackSlot[] = [];
  const rewrite: PackSlot[] = [];
  // One walk over the index (not a lookup per chunk): the live bytes each pack holds.
  const liveBytes = new Map<PackSlot, number>();
  await table.forEach((hash, slot, stored) => {
    if (live.has(hash)) liveBytes.set(slot, (liveBytes.get(slot) ?? 0) + RECORD_HEADER + stored);
  });
  for (const slot of table.writtenSlots()) {
    const bytes = liveBytes.get(slot) ?? 0;
    if (bytes === 0) drop.push(slot);
    else if (bytes * 2 < slot.length - PACK_HEADER) rewrite.push(slot);
  }

  let freedBytes = 0;
  const moving = new Set(rewrite.map((slot) => slot.no));
  let builder: PackBuilder | undefined;
  const install = async () => {
    const made = builder!;
    builder = undefined;
    const { bytes, id } = made.seal();
    const same = table.written(id);
    if (same) {
      // An identical pack is already on disk (content-addressed): use it (its entries are those of `made`).
      table.claimAll(same, (current) => moving.has(current.no), made);
      return;
    }
    await writePackFiles(ctx.dir, id, bytes, made);
    const slot = table.createSlot(made);
    table.markWritten(slot, id, bytes.length);
    table.claimAll(slot, (current) => moving.has(current.no));
    freedBytes -= bytes.length + indexLength(made.count);
  };
  for (const slot of rewrite) {
    const file = packPath(ctx.dir, slot.id!);
    const bytes = await fs.readFile(file).catch((error) => {
      if (!isMissing(error)) throw error;
      throw new NeonError('chunk_missing', `gc stopped: ${file} is gone, its live chunks cannot be kept; no pack was removed`, {
        status: 404,
      });
    });
    const entries = await table.entriesOf(slot);
    const { hashes, offsets, stored, raw, flags } = entries;
    for (let i = 0; i < entries.count; i++) {
      if (!live.has(hashes[i]) || !table.pointsTo(hashes[i], slot, i)) continue;
      try {
        unpackChunk(bytes, offsets[i], entries, i);
      } catch (error) {
        throw corrupt(`gc stopped: chunk ${hashes[i]} in ${file} is damaged (${(error as Error).message}); no pack was removed`);
      }
      // Copy the record as stored: it was verified above, and recompressing would only cost time.
      const body = bytes.subarray(offsets[i] + RECORD_HEADER, offsets[i] + RECORD_HEADER + stored[i]);
      if (builder && !builder.fits(body.length)) await install();
      builder ??= new PackBuilder(ctx.packSize);
      builder.append(hashes[i], raw[i], { stored: body, flags: flags[i] });
      if (builder.full) await install();
    }
  }
  if (builder) await install();

  let removedPacks = 0;
  let rewrittenPacks = 0;
  for (const slot of [...drop, ...rewrite]) {
    const entries = await table.entriesOf(slot);
    // Decide and unhook in one synchronous step, so that add() cannot dedupe against this pack in between.
    if (holdsNeeded(table, slot, entries, live, ctx.touched)) continue;
    const count = table.countOf(slot);
    table.dropSlot(slot);
    const file = packPath(ctx.dir, slot.id!);
    ctx.handles.forget(file);
    await removePackFiles(ctx.dir, slot.id!);
    freedBytes += slot.length + indexLength(count);
    if (moving.has(slot.no)) rewrittenPacks++;
    else removedPacks++;
  }
  // Leave the removed packs out of the index file now: until then has() reads to skip their entries.
  if (removedPacks + rewrittenPacks > 0) await table.merge().catch(() => {});
  await removeStaleTemps(path.join(ctx.dir, 'packs'), STALE_TEMP_MS);
  await removeStaleTemps(path.join(ctx.dir, 'remote-idx'), STALE_TEMP_MS);
  return { removedPacks, rewrittenPacks, freedBytes };
}

/** True when the index still finds, in `slot`, a chunk that is live or was deduplicated against during gc. */
function holdsNeeded(table: PackTable, slot: PackSlot, entries: PackEntries, live: LiveChunks, touched: Set<string>): boolean {
  for (let i = 0; i < entries.count; i++) {
    const hash = entries.hashes[i];
    if ((live.has(hash) || touched.has(hash)) && table.pointsTo(hash, slot, i)) return true;
  }
  return false;
}
