// The local copies of a branch's WAL, one per safekeeper, verified record by record. A safekeeper fsyncs what it
// receives, but a disk can still flip a byte later, and Postgres' recovery treats the first bad record as the end
// of WAL: it comes up at an earlier point without an error. So `neon verify` checks every copy (CRC of every
// record, every page header, up to the flush point), and repairs a damaged one from a copy that verifies (see
// ./repair.ts).
import fs from 'node:fs';
import path from 'node:path';
import {
  DEFAULT_SEGMENT_SIZE,
  formatLsn,
  type Lsn,
  parseLsn,
  parseSegmentName,
  PARTIAL_SUFFIX,
  safekeeperWalDir,
  segmentStart,
} from '../core/wal.js';
import type { WalErrorReason } from './records.js';
import { filledLength, verifyWal, walFileSource } from './verify.js';

/** A safekeeper as the WAL store sees it: its folder, and how far it has flushed each branch. */
export interface WalHolder {
  readonly name: string;
  readonly dir: string;
  statusOf(branch: string): { flushLsn?: string | null; timeline?: number | null };
}

/** One safekeeper's file of one segment. */
export interface WalCopy {
  holder: WalHolder;
  /** Full path of the file. */
  file: string;
  /** Segment name, without `.partial`. */
  name: string;
  timeline: number;
  segno: bigint;
  partial: boolean;
}

/** Where a copy is damaged: the first bad record or page of a run of segments, in this copy. */
export interface CopyDamage {
  copy: WalCopy;
  lsn: Lsn;
  reason: WalErrorReason;
  detail: string;
}

/** The WAL segment size a safekeeper recorded (system.json), or Postgres' default. */
export function holderSegmentSize(holder: WalHolder): number {
  try {
    return (JSON.parse(fs.readFileSync(path.join(holder.dir, 'system.json'), 'utf8')) as { segmentSize: number }).segmentSize;
  } catch {
    return DEFAULT_SEGMENT_SIZE;
  }
}

/** The segment files of `branch` each holder has, optionally only those whose number `wanted` accepts. */
export function localCopies(holders: WalHolder[], branch: string, wanted: (segno: bigint) => boolean = () => true): WalCopy[] {
  const copies: WalCopy[] = [];
  for (const holder of holders) {
    const dir = safekeeperWalDir(holder.dir, branch);
    const size = holderSegmentSize(holder);
    for (const file of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
      const partial = file.endsWith(PARTIAL_SUFFIX);
      const name = partial ? file.slice(0, -PARTIAL_SUFFIX.length) : file;
      const parsed = parseSegmentName(name, size);
      if (parsed && wanted(parsed.segno)) copies.push({ holder, file: path.join(dir, file), name, partial, ...parsed });
    }
  }
  return copies;
}

/**
 * Where a copy's WAL ends: a finished segment's end; for the segment a safekeeper is writing, its flush point
 * (read before the file, so the file holds at least that much); for an older unfinished one (a timeline that
 * ended, a branch no longer streamed), its last non-zero byte.
 */
export function copyEnd(copy: WalCopy, branch: string, segmentSize: number, data?: Uint8Array): Lsn {
  const start = segmentStart(copy.segno, segmentSize);
  if (!copy.partial) return start + BigInt(segmentSize);
  const { flushLsn, timeline } = copy.holder.statusOf(branch);
  if (flushLsn && timeline === copy.timeline) {
    const flush = parseLsn(flushLsn);
    if (flush >= start && flush <= start + BigInt(segmentSize)) return flush;
  }
  const bytes = data ?? readCopy(copy);
  if (!bytes) return start; // gone: it holds nothing now
  return copy.partial ? start + BigInt(filledLength(bytes)) : start + BigInt(segmentSize);
}

/**
 * Find a copy's file again after it was not where it was listed: a safekeeper renames `X.partial` to `X` when it
 * finishes the segment, so an unfinished copy may now be a finished one (the copy is updated). False when the
 * file is gone altogether.
 */
export function refreshCopy(copy: WalCopy): boolean {
  if (fs.existsSync(copy.file)) return true;
  if (!copy.partial) return false;
  const finished = copy.file.slice(0, -PARTIAL_SUFFIX.length);
  if (!fs.existsSync(finished)) return false;
  copy.file = finished;
  copy.partial = false;
  return true;
}

/** A copy's bytes, following a rename to its finished name (see {@link refreshCopy}); undefined when it is gone. */
export function readCopy(copy: WalCopy): Buffer | undefined {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return fs.readFileSync(copy.file);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      if (!refreshCopy(copy)) return undefined;
    }
  }
  return undefined;
}

/** What {@link verifyCopies} found. */
export interface CopiesReport {
  damaged: CopyDamage[];
  /** Copies checked, and the bytes of WAL they hold up to their ends. */
  files: number;
  bytes: number;
}

/**
 * Verify copies: per safekeeper and timeline, each run of consecutive segments in one pass, so that a record
 * crossing from one file into the next is checked whole. After damage, checking resumes at the next segment, so
 * every damaged file is found. A record that fails is reported in the file where it starts (the damage may be in
 * its continuation in the next file: repair compares both with the good copy).
 */
export async function verifyCopies(branch: string, copies: WalCopy[]): Promise<CopiesReport> {
  const report: CopiesReport = { damaged: [], files: 0, bytes: 0 };
  const groups = new Map<string, WalCopy[]>();
  for (const copy of copies) {
    const key = `${copy.holder.name}/${copy.timeline}`;
    groups.set(key, [...(groups.get(key) ?? []), copy]);
  }
  for (const group of groups.values()) await verifyGroup(branch, group, report, 3);
  return report;
}

/**
 * Verify one safekeeper's copies of one timeline. A file that is gone while it is read (its safekeeper finished
 * the segment and renamed `X.partial` to `X`) sends its run back here with the files found again.
 */
async function verifyGroup(branch: string, group: WalCopy[], report: CopiesReport, retries: number): Promise<void> {
  if (!group.length) return;
  group.sort((a, b) => (a.segno < b.segno ? -1 : a.segno > b.segno ? 1 : Number(a.partial) - Number(b.partial)));
  const size = holderSegmentSize(group[0].holder);
  const runs: WalCopy[][] = [];
  let run: WalCopy[] = [];
  for (const copy of group) {
    const last = run[run.length - 1];
    if (last && last.segno === copy.segno) continue; // a finished file and its stale .partial: the finished one counts
    // A run ends at a gap, and after an unfinished segment (what follows it cannot continue its records).
    if (last && (last.segno + 1n !== copy.segno || last.partial)) {
      runs.push(run);
      run = [];
    }
    run.push(copy);
  }
  if (run.length) runs.push(run);
  for (const each of runs) {
    const found = await verifyRun(branch, each, size);
    if (found) {
      report.files += found.files;
      report.bytes += found.bytes;
      report.damaged.push(...found.damaged);
    } else if (retries > 0) {
      await verifyGroup(branch, each.filter(refreshCopy), report, retries - 1);
    }
  }
}

/** Verify a run of consecutive segments; undefined when one of its files is no longer where it was listed. */
async function verifyRun(branch: string, run: WalCopy[], size: number): Promise<CopiesReport | undefined> {
  const found: CopiesReport = { damaged: [], files: run.length, bytes: 0 };
  const bySegno = new Map(run.map((copy) => [copy.segno, copy]));
  const last = run[run.length - 1];
  try {
    if (!run.every((copy) => fs.existsSync(copy.file))) return undefined;
    const upTo = copyEnd(last, branch, size);
    if (!fs.existsSync(last.file)) return undefined; // copyEnd found it renamed
    const source = walFileSource(
      run.map((copy) => copy.file),
      { timeline: last.timeline },
    );
    found.bytes = Number(upTo - segmentStart(run[0].segno, size));
    let from: Lsn | undefined;
    for (;;) {
      const result = await verifyWal(source, { from, upTo });
      if (result.ok || !result.error) return found;
      const { lsn, reason, message } = result.error;
      const segno = lsn / BigInt(size);
      const copy = bySegno.get(segno) ?? (segno < run[0].segno ? run[0] : last);
      found.damaged.push({ copy, lsn, reason, detail: message });
      if (copy.segno >= last.segno) return found;
      from = segmentStart(copy.segno + 1n, size);
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/** One line about a damage: the file, the LSN and what is wrong. */
export function describeDamage(damage: CopyDamage): string {
  const reason = damage.detail.replace(/ at [0-9A-F]+\/[0-9A-F]+ in WAL segment \S+$/, '');
  return `${damage.copy.file} is damaged at ${formatLsn(damage.lsn)}: ${reason}`;
}
