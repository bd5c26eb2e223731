import fs from 'node:fs/promises';
import path from 'node:path';
import { isTempName } from '../core/fs-atomic.js';
import { indexTrailer, listPacks, loadPack } from './files.js';
import { MIDX_NAME, MidxFile, isUnusable, type MidxPack } from './midx.js';
import { eachLimit } from './pool.js';
import { PackTable, type PackSlot } from './table.js';

const NO_ENTRIES = { count: 0, hashes: [], offsets: new Uint32Array(0), stored: new Uint32Array(0), raw: new Uint32Array(0), flags: new Uint8Array(0) };

/**
 * The catalogue of the store in `dir`: the multi-pack index file when it agrees with the packs' .idx files
 * (each pack it names still has the length it had, and an intact .idx with the checksum it had), plus the
 * packs it does not cover (written after it, or pulled), loaded from their .idx files (rebuilt from their
 * packs when missing or damaged, see loadPack). Packs it names that are gone (a gc the index file did not
 * see) are dropped. A missing, damaged or disagreeing index file is rebuilt from the .idx files, never trusted
 * over them. Leaves the index file up to date.
 */
export async function openTable(dir: string): Promise<PackTable> {
  const table = new PackTable(dir);
  table.autoMerge = false;
  // One process owns a store: a temp file of the index beside it is the leftover of a crash.
  for (const name of await fs.readdir(dir)) {
    if (isTempName(name) && name.startsWith(`.${MIDX_NAME}.`)) await fs.rm(path.join(dir, name), { force: true });
  }
  const { packs, indexes } = await listPacks(dir);
  const covered = await adoptIndexFile(table, dir, new Set(packs), indexes);
  for (const id of packs) {
    if (covered.has(id)) continue;
    const pack = await loadPack(dir, id, indexes.has(id));
    const slot = table.createSlot(pack.entries);
    table.markWritten(slot, id, pack.length);
    table.claimAll(slot);
    if (table.tailSize >= table.tailLimit) await table.merge();
  }
  if (table.needsMerge()) await table.merge();
  table.autoMerge = true;
  return table;
}

/** Load the index file into `table` if it can be trusted; returns the ids of the packs it covers. */
async function adoptIndexFile(table: PackTable, dir: string, onDisk: Set<string>, indexes: Set<string>): Promise<Set<string>> {
  const file = path.join(dir, MIDX_NAME);
  const sums = { chunks: [] as number[], raw: [] as number[], stored: [] as number[] };
  let midx: MidxFile | undefined;
  try {
    midx = await MidxFile.load(file, (entry) => {
      sums.chunks[entry.pack] = (sums.chunks[entry.pack] ?? 0) + 1;
      sums.raw[entry.pack] = (sums.raw[entry.pack] ?? 0) + entry.raw;
      sums.stored[entry.pack] = (sums.stored[entry.pack] ?? 0) + entry.stored;
    });
  } catch (error) {
    if (!isUnusable(error)) throw error;
  }
  if (!midx) return new Set();
  const verdicts = new Map<string, 'ok' | 'gone' | 'differs'>();
  await eachLimit(midx.packs, 8, async (pack) => {
    verdicts.set(pack.id, onDisk.has(pack.id) ? await checkPack(dir, pack, indexes.has(pack.id)) : 'gone');
  });
  if ([...verdicts.values()].includes('differs')) {
    midx.close();
    return new Set();
  }
  const slots: PackSlot[] = [];
  const gone: PackSlot[] = [];
  midx.packs.forEach((pack, k) => {
    const slot = table.createSlot(NO_ENTRIES);
    slots.push(slot);
    if (verdicts.get(pack.id) === 'gone') gone.push(slot);
    else table.markWritten(slot, pack.id, pack.length);
    table.loaded(slot, pack.count, pack.trailer);
    table.countLoaded(slot, sums.chunks[k] ?? 0, sums.raw[k] ?? 0, sums.stored[k] ?? 0);
  });
  table.adopt(midx, slots);
  for (const slot of gone) table.dropSlot(slot);
  return new Set(midx.packs.filter((pack) => verdicts.get(pack.id) === 'ok').map((pack) => pack.id));
}

/** Does pack `pack.id` on disk still match what the index file says of it? Repairs a damaged .idx first. */
async function checkPack(dir: string, pack: MidxPack, hasIndex: boolean): Promise<'ok' | 'differs'> {
  const { size } = await fs.stat(path.join(dir, 'packs', `${pack.id}.pack`));
  if (size !== pack.length) return 'differs';
  let trailer = hasIndex ? await indexTrailer(dir, pack.id, size) : undefined;
  if (!trailer) {
    // Rebuild the .idx from its pack (which must hash to its name), as an open without an index file would.
    await loadPack(dir, pack.id, hasIndex);
    trailer = await indexTrailer(dir, pack.id, size);
  }
  return trailer?.equals(pack.trailer) ? 'ok' : 'differs';
}
