// Repair a damaged local WAL copy from a good one: another safekeeper's copy of the same segment that verifies,
// or the offloaded object in storage_dest (gzip's CRC proves it is what was uploaded; its records are verified
// too, as it may have been uploaded from a copy that was already damaged). Repairing from a verified copy loses
// nothing, but the damaged file is kept beside it as `<name>.corrupt-<time>` for whoever wants to look.
import fs from 'node:fs';
import path from 'node:path';
import { type Lsn, segmentName, segmentStart } from '../core/wal.js';
import { copyEnd, type CopyDamage, holderSegmentSize, readCopy, refreshCopy, type WalCopy } from './copies.js';
import { verifySegment } from './verify.js';

const KEPT_MARK = '.corrupt-';

/**
 * When a kept damaged copy (`<name>.corrupt-<stamp>`) was set aside, from the stamp `rewrite` puts in its name;
 * undefined for any other file name.
 */
export function keptCopyTime(file: string): Date | undefined {
  const at = file.lastIndexOf(KEPT_MARK);
  const stamp = at < 0 ? '' : file.slice(at + KEPT_MARK.length);
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})$/.exec(stamp);
  return m ? new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6])) : undefined;
}

/** A copy to repair from. */
export interface GoodCopy {
  /** Where it is, for the report: `sk2`, `storage`. */
  label: string;
  bytes: Uint8Array;
  /** How far it holds WAL. */
  end: Lsn;
}

/** What repair did for one damage. */
export interface RepairResult {
  damage: CopyDamage;
  /** Labels of the copies the damaged files were rewritten from; empty when no good copy differed. */
  from: string[];
  /** Files kept as they were (`.corrupt-<time>`). */
  kept: string[];
}

/** The offloaded copy of a finished segment, or undefined (absent, or its gzip CRC fails). */
export type StoredSegment = (name: string) => Promise<Uint8Array | undefined>;

/**
 * Repair a damage. The record that failed may run on into the next segment, so that segment is compared too; a
 * file is rewritten only where it differs from a good copy up to where the damaged copy holds WAL.
 */
export async function repairDamage(
  branch: string,
  damage: CopyDamage,
  copies: WalCopy[],
  damaged: CopyDamage[],
  stored: StoredSegment,
): Promise<RepairResult> {
  const result: RepairResult = { damage, from: [], kept: [] };
  const size = holderSegmentSize(damage.copy.holder);
  for (const segno of [damage.copy.segno, damage.copy.segno + 1n]) {
    const name = segmentName(damage.copy.timeline, segno, size);
    const mine = copies.find((c) => c.holder === damage.copy.holder && c.name === name);
    if (!mine) continue;
    const bytes = readCopy(mine);
    if (!bytes) continue; // gone meanwhile
    const end = copyEnd(mine, branch, size, bytes);
    const good = await goodCopy(branch, mine, end, copies, damaged, stored, size);
    if (!good) continue;
    const length = Number(end - segmentStart(segno, size));
    if (Buffer.compare(bytes.subarray(0, length), Buffer.from(good.bytes.buffer, good.bytes.byteOffset, length)) === 0) continue;
    result.kept.push(rewrite(mine, good.bytes.subarray(0, mine.partial ? length : size), size));
    result.from.push(good.label);
  }
  return result;
}

/** Another copy of `mine`'s segment that verifies and holds at least as much WAL. */
async function goodCopy(
  branch: string,
  mine: WalCopy,
  end: Lsn,
  copies: WalCopy[],
  damaged: CopyDamage[],
  stored: StoredSegment,
  size: number,
): Promise<GoodCopy | undefined> {
  const isDamaged = (copy: WalCopy) => damaged.some((d) => d.copy.holder === copy.holder && d.copy.name === copy.name);
  for (const other of copies) {
    if (other.holder === mine.holder || other.name !== mine.name || isDamaged(other)) continue;
    const bytes = readCopy(other); // a .partial may have been finished (renamed) since it was listed
    if (!bytes) continue;
    const otherEnd = copyEnd(other, branch, size, bytes);
    if (otherEnd < end) continue;
    if ((await verifySegment(other.name, bytes, { upTo: otherEnd })).ok) return { label: other.holder.name, bytes, end: otherEnd };
  }
  const bytes = await stored(mine.name);
  if (bytes && bytes.length === size && (await verifySegment(mine.name, bytes)).ok) {
    return { label: 'storage', bytes, end: segmentStart(mine.segno, size) + BigInt(size) };
  }
  return undefined;
}

/**
 * Replace a copy's bytes, keeping the old file. A finished segment is replaced whole (written aside, then renamed
 * over, so that it is either the old or the new file). An unfinished one may be open in its safekeeper, which
 * goes on writing past its flush point: it is copied aside and then mended in place, below that point only.
 */
function rewrite(copy: WalCopy, good: Uint8Array, segmentSize: number): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '');
  // An unfinished copy its safekeeper finished since it was read: mended in place under its finished name (only
  // the bytes below the old flush point are written, which are the same in both).
  if (copy.partial && !fs.existsSync(copy.file)) refreshCopy(copy);
  const kept = `${copy.file}${KEPT_MARK}${stamp}`;
  if (copy.partial || good.length < segmentSize) {
    fs.copyFileSync(copy.file, kept);
    const fd = fs.openSync(copy.file, 'r+');
    try {
      for (let done = 0; done < good.length;) done += fs.writeSync(fd, good, done, good.length - done, done);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } else {
    const temp = `${copy.file}.repairing`;
    fs.writeFileSync(temp, good);
    const fd = fs.openSync(temp, 'r');
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(copy.file, kept);
    fs.renameSync(temp, copy.file);
  }
  const dir = fs.openSync(path.dirname(copy.file), 'r');
  fs.fsyncSync(dir);
  fs.closeSync(dir);
  return kept;
}
