import fs from 'node:fs';
import path from 'node:path';
import type { WalStore } from '../wal/store.js';
import { NeonError } from '../core/errors.js';
import type { PgUser } from '../postgres/user.js';
import { DEFAULT_SEGMENT_SIZE, formatLsn, type Lsn, parseSegmentName, segmentOf } from '../core/wal.js';

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
 * Gather the WAL a recovery needs into `dir`: every segment from `start` on, taken from the branch whose span holds
 * it (the ancestors before a fork point, the branch itself after), plus the timeline history files. Postgres reads
 * them through restore_command; names carry the timeline, so files of different branches never clash.
 */
export async function stageWal(
  wal: WalStore,
  spans: WalSpan[],
  start: Lsn,
  dir: string,
  options: { owner?: PgUser; finishedOnly?: boolean; until?: Lsn } = {},
): Promise<{ files: number }> {
  const { owner } = options;
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  if (owner) fs.chownSync(dir, owner.uid, owner.gid);
  let files = 0;
  const first = segmentOf(start, SEGMENT_SIZE);
  for (const span of spans) {
    for (const name of await wal.names(span.branch)) {
      const segment = parseSegmentName(name, SEGMENT_SIZE);
      if (segment) {
        const lo = segmentOf(span.from, SEGMENT_SIZE);
        // Nothing past the target is replayed: leave it out.
        const stop = span.to === undefined || (options.until !== undefined && options.until < span.to) ? options.until : span.to;
        const hi = stop === undefined ? undefined : segmentOf(stop, SEGMENT_SIZE);
        // The segment holding a fork point exists on both sides (each under its own timeline's name).
        if (segment.segno < first || segment.segno < lo || (hi !== undefined && segment.segno > hi)) continue;
        // A replica streams the newest segment from its primary: a copy of it taken now would soon be stale, and
        // a standby that read it again (as it does when promoted) would find the WAL it already replayed cut off.
        if (options.finishedOnly && !(await wal.isFinished(span.branch, name))) continue;
      }
      const target = path.join(dir, name);
      fs.rmSync(target, { force: true });
      if (await wal.copyTo(span.branch, name, target)) files++;
    }
  }
  return { files };
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
