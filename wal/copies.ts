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
  return start + BigInt(filledLength(data ?? fs.readFileSync(copy.file)));
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
  for (const group of groups.values()) {
    group.sort((a, b) => (a.segno < b.segno ? -1 : a.segno > b.segno ? 1 : Number(a.partial) - Number(b.partial)));
    const size = holderSegmentSize(group[0].holder);
    let run: WalCopy[] = [];
    for (const copy of group) {
      const last = run[run.length - 1];
      if (last && last.segno === copy.segno) continue; // a finished file and its stale .partial: the finished one counts
      // A run ends at a gap, and after an unfinished segment (what follows it cannot continue its records).
      if (last && (last.segno + 1n !== copy.segno || last.partial)) {
        await verifyRun(branch, run, size, report);
        run = [];
      }
      run.push(copy);
    }
    if (run.length) await verifyRun(branch, run, size, report);
  }
  return report;
}

async function verifyRun(branch: string, run: WalCopy[], size: number, report: CopiesReport): Promise<void> {
  const bySegno = new Map(run.map((copy) => [copy.segno, copy]));
  const last = run[run.length - 1];
  let upTo: Lsn;
  try {
    upTo = copyEnd(last, branch, size);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return; // finished and renamed meanwhile: next time
    throw error;
  }
  const source = walFileSource(
    run.map((copy) => copy.file),
    { timeline: last.timeline },
  );
  report.files += run.length;
  report.bytes += Number(upTo - segmentStart(run[0].segno, size));
  let from: Lsn | undefined;
  for (;;) {
    let result;
    try {
      result = await verifyWal(source, { from, upTo });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    if (result.ok || !result.error) return;
    const { lsn, reason, message } = result.error;
    const segno = lsn / BigInt(size);
    const copy = bySegno.get(segno) ?? (segno < run[0].segno ? run[0] : last);
    report.damaged.push({ copy, lsn, reason, detail: message });
    if (copy.segno >= last.segno) return;
    from = segmentStart(copy.segno + 1n, size);
  }
}

/** One line about a damage: the file, the LSN and what is wrong. */
export function describeDamage(damage: CopyDamage): string {
  const reason = damage.detail.replace(/ at [0-9A-F]+\/[0-9A-F]+ in WAL segment \S+$/, '');
  return `${damage.copy.file} is damaged at ${formatLsn(damage.lsn)}: ${reason}`;
}
