import fs from 'node:fs';
import path from 'node:path';
import type { WalStore } from '../wal/store.js';
import { NeonError } from '../core/errors.js';
import type { PgUser } from '../postgres/user.js';
import { DEFAULT_SEGMENT_SIZE, formatLsn, type Lsn, parseSegmentName, segmentOf, segmentStart } from '../core/wal.js';
import { checkReach } from '../wal/reach.js';
import { walFileSource } from '../wal/verify.js';
import { trace } from '../lib/trace.js';

/** Which branch's WAL serves which part of history: a branch up to its child's fork point. */
export interface WalSpan {
  branch: string;
  /** First LSN this branch serves (its fork point; 0 for a root branch). */
  from: Lsn;
  /** First LSN it no longer serves (the next branch's fork point), or undefined for "up to its tip". */
  to?: Lsn;
}

const SEGMENT_SIZE = DEFAULT_SEGMENT_SIZE;

/**
 * The WAL files a replay from `start` reads, span by span (which branch serves which part of the history): the
 * history files, and the segments from `start`'s up to the one holding `until` (nothing past the target is
 * replayed); with `finishedOnly`, finished segments only.
 */
export async function* walToStage(
  wal: WalStore,
  spans: WalSpan[],
  start: Lsn,
  options: { finishedOnly?: boolean; until?: Lsn } = {},
): AsyncGenerator<{ branch: string; name: string; segment?: ReturnType<typeof parseSegmentName> & object }> {
  const first = segmentOf(start, SEGMENT_SIZE);
  for (const span of spans) {
    const lo = segmentOf(span.from, SEGMENT_SIZE);
    const stop = span.to === undefined || (options.until !== undefined && options.until < span.to) ? options.until : span.to;
    const hi = stop === undefined ? undefined : segmentOf(stop, SEGMENT_SIZE);
    for (const name of await wal.names(span.branch)) {
      const segment = parseSegmentName(name, SEGMENT_SIZE);
      if (segment) {
        // The segment holding a fork point exists on both sides (each under its own timeline's name).
        if (segment.segno < first || segment.segno < lo || (hi !== undefined && segment.segno > hi)) continue;
        // A replica streams the newest segment from its primary: a copy of it taken now would soon be stale, and
        // a standby that read it again (as it does when promoted) would find the WAL it already replayed cut off.
        if (options.finishedOnly && !(await wal.isFinished(span.branch, name))) continue;
      }
      yield { branch: span.branch, name, segment: segment ?? undefined };
    }
  }
}

/**
 * Let the Postgres user's group read a staged WAL file, which restore_command needs; nobody else can. Often a
 * hard link to the safekeeper's file (private to neon's user).
 */
export function shareWithPostgres(file: string, owner: PgUser | undefined): void {
  if (!owner) return;
  fs.chownSync(file, -1, owner.gid);
  fs.chmodSync(file, 0o640);
}

/**
 * Gather the WAL a recovery needs into `dir`: every segment from `start` on, taken from the branch whose span holds
 * it (the ancestors before a fork point, the branch itself after), plus the timeline history files. Postgres reads
 * them through restore_command; names carry the timeline, so files of different branches never clash.
 */
export async function stageWal(
  wal: WalStore,
  spans: WalSpan[],
  start: Lsn,
  dir: string,
  options: { owner?: PgUser; finishedOnly?: boolean; until?: Lsn; untilTime?: Date } = {},
): Promise<{ files: number; end: Lsn }> {
  const { owner } = options;
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  if (owner) fs.chownSync(dir, owner.uid, owner.gid);
  let files = 0;
  const staged: StagedFile[] = [];
  for await (const { branch, name, segment } of walToStage(wal, spans, start, options)) {
    const target = path.join(dir, name);
    fs.rmSync(target, { force: true });
    const copied = await wal.copyTo(branch, name, target);
    if (!copied) continue;
    shareWithPostgres(target, owner);
    files++;
    if (segment) staged.push({ name, ...segment, ...copied });
  }
  trace('daemon', `stageWal: ${files} file(s) staged`);
  const end = await checkStagedWal(dir, staged, start, options);
  trace('daemon', 'stageWal: checked');
  return { files, end };
}

/** A point to recover to: an LSN or a time, on a timeline, and what to do there. */
export interface RecoveryTarget {
  lsn?: Lsn;
  time?: Date;
  /** The timeline to follow (default: the newest one found). */
  timeline?: number;
  /** promote: become a primary there; pause: stay read-only there (a static compute). */
  action: 'promote' | 'pause';
}

/** postgresql.conf settings for an archive recovery served from `walDir`. */
export function recoverySettings(walDir: string, target: RecoveryTarget): Record<string, string> {
  if (walDir.includes('"') || walDir.includes("'"))
    throw new NeonError('bad_path', `cannot use ${walDir} in restore_command: it holds quotes`);
  const settings: Record<string, string> = {
    restore_command: `cp "${walDir}/%f" "%p"`,
    recovery_target_action: target.action,
    // Stop just before the first record that starts at or after the target: the state as of that LSN.
    recovery_target_inclusive: 'off',
    recovery_target_timeline: target.timeline ? String(target.timeline) : 'latest',
    // A restored data directory is fsynced before replay; syncfs does it per file system, not per file.
    recovery_init_sync_method: 'syncfs',
  };
  if (target.lsn !== undefined) settings.recovery_target_lsn = formatLsn(target.lsn);
  // Postgres' recovery_target_time takes "2026-11-21 10:00:00.123+00", not the ISO "T…Z" form.
  if (target.time) settings.recovery_target_time = target.time.toISOString().replace('T', ' ').replace('Z', '+00');
  return settings;
}

/** A segment staged for a recovery, and where it came from. */
interface StagedFile {
  name: string;
  segno: bigint;
  timeline: number;
  /** How far it holds WAL. */
  end: Lsn;
  /** The safekeeper (or `storage`) it was copied from, and that file when it is local. */
  from: string;
  file?: string;
}

/**
 * Before Postgres replays the staged WAL, check it from the image's start up to the target (an LSN; a time: the
 * first transaction that ended at or after it; else the end of the WAL). Postgres would take damage there for the
 * end of WAL and come up at an earlier point; here it is an error naming the file and the LSN. Returns the end of
 * the WAL checked.
 */
async function checkStagedWal(dir: string, staged: StagedFile[], start: Lsn, options: { until?: Lsn; untilTime?: Date }): Promise<Lsn> {
  const source = walFileSource(dir);
  if (source.last === undefined) return start;
  // The files recovery follows: per segment, the newest timeline (as recovery_target_timeline 'latest' does).
  const byName = new Map(staged.map((file) => [file.name, file])); // a file staged twice: the last copy is there
  const chosen = (segno: bigint) => byName.get(path.basename(source.files.get(segno) ?? ''));
  const last = chosen(source.last);
  const walEnd = last?.end || segmentStart(source.last + 1n, source.segmentSize);
  const upTo = options.until !== undefined && options.until < walEnd ? options.until : walEnd;
  if (upTo <= start) return walEnd;
  const reach = await checkReach(source, { from: start, upTo, time: options.untilTime });
  if (reach.ok) return walEnd;
  const error = reach.error!;
  const file = chosen(error.lsn / BigInt(source.segmentSize));
  const where = file ? `${file.name} (from ${file.file ?? file.from})` : error.segment;
  const target =
    options.until !== undefined ? formatLsn(options.until) : options.untilTime ? options.untilTime.toISOString() : 'the end of the WAL';
  throw new NeonError(
    'wal_damaged',
    `the WAL needed to reach ${target} is damaged: WAL segment ${where} at ${formatLsn(error.lsn)}: ` +
      `${error.message.replace(/ at [0-9A-F]+\/[0-9A-F]+ in WAL segment \S+$/, '')}; recovery would stop at ${formatLsn(reach.reached)}, ` +
      `and no other copy is good (neon verify repairs it when one is)`,
    { status: 409 },
  );
}
