import fs from 'node:fs';
import path from 'node:path';
import type { DaemonContext } from './context.js';
import { DEFAULT_SEGMENT_SIZE, parseLsn, parseSegmentName, segmentOf } from '../core/wal.js';
import { isCleanShutdown, readControlFile } from '../pageserver/pg-control.js';
import { trashEntry } from './trash.js';

/**
 * Data directories a checkout left, kept as they were (cleanly shut down at their branch's tip) so that checking
 * out that state again is a rename and a plain start, not a restore and a replay: "switch back and forth in the
 * database history" at the cost of a `pg_ctl start`. They live in `computes/main/kept/<branch>`; the newest
 * {@link KEEP} stay, older ones go to the trash. Only a cache: the branch's history (images + WAL) stays the truth.
 */
export const KEEP = 2;

/** Where the states kept for the main compute live. */
export function keptDir(daemon: DaemonContext): string {
  return path.join(path.dirname(daemon.compute('main').dataDir), 'kept');
}

/** The folder a branch's kept state would be in (branch names are checked names: no slashes). */
export function keptOf(daemon: DaemonContext, branch: string): string {
  return path.join(keptDir(daemon), branch);
}

/**
 * Keep the data directory `dataDir` (stopped) as the state of `branch`: moved under kept/, replacing an older
 * state of that branch. Whether it is still the branch's tip is checked when it is used ({@link usableState}).
 */
export function keepState(daemon: DaemonContext, dataDir: string, branch: string): string {
  const target = keptOf(daemon, branch);
  fs.mkdirSync(keptDir(daemon), { recursive: true, mode: 0o700 });
  if (fs.existsSync(target)) void discard(daemon, target);
  fs.renameSync(dataDir, target);
  return target;
}

/**
 * The kept state of `branch` when it is still exactly the branch's tip: shut down cleanly at the tip the
 * checkout recorded, and no WAL written on the branch since (another primary on it would have promoted onto a
 * new timeline, or written past the tip's segment). Undefined otherwise, and a stale one is discarded.
 */
export async function usableState(daemon: DaemonContext, branch: string): Promise<string | undefined> {
  const dir = keptOf(daemon, branch);
  if (!fs.existsSync(dir)) return undefined;
  const tip = daemon.pageserver.history.branch(branch).tipLsn;
  let control;
  try {
    control = readControlFile(dir);
  } catch {
    control = undefined;
  }
  const fresh = !!tip && !!control && isCleanShutdown(control) && control.checkpoint === parseLsn(tip);
  if (fresh) {
    const last = segmentOf(control!.checkpoint, DEFAULT_SEGMENT_SIZE);
    for (const name of await daemon.wal.names(branch)) {
      const segment = parseSegmentName(name, DEFAULT_SEGMENT_SIZE);
      if (segment && segment.segno >= last && (segment.segno > last || segment.timeline !== control!.timeline)) {
        daemon.log.info('the kept state of branch %s is stale (WAL %s was written after it): not used', branch, name);
        void discard(daemon, dir);
        return undefined;
      }
    }
    return dir;
  }
  daemon.log.info('the kept state of branch %s is not its tip: not used', branch);
  void discard(daemon, dir);
  return undefined;
}

/** Only the newest {@link KEEP} kept states stay. */
export function pruneKept(daemon: DaemonContext): void {
  const dir = keptDir(daemon);
  if (!fs.existsSync(dir)) return;
  const states = fs
    .readdirSync(dir)
    .map((name) => ({ name, at: fs.statSync(path.join(dir, name)).ctimeMs }))
    .sort((a, b) => b.at - a.at);
  for (const state of states.slice(KEEP)) void discard(daemon, path.join(dir, state.name));
}

/**
 * Remove a data directory without waiting for it: renamed into the trash at once (one step; the next daemon start
 * empties the trash if this one dies first), then deleted in the background while the daemon goes on.
 */
export function discard(daemon: DaemonContext, dataDir: string): Promise<void> {
  if (!fs.existsSync(dataDir)) return Promise.resolve();
  const folder = trashEntry(daemon.repo, 'main');
  fs.mkdirSync(folder, { mode: 0o700 });
  fs.renameSync(dataDir, path.join(folder, 'pgdata'));
  return fs.promises
    .rm(folder, { recursive: true, force: true })
    .catch((error) => daemon.log.warn('could not remove %s: %s', folder, (error as Error).message));
}
