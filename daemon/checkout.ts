import fs from 'node:fs';
import path from 'node:path';
import type { DaemonContext } from './context.js';
import { NeonError } from '../core/errors.js';
import { resolveTarget, createSnapshot } from './snapshots.js';
import { formatLsn } from '../core/wal.js';
import { readControlFile } from '../pageserver/pg-control.js';
import type { Snapshot } from '../pageserver/history.js';
import type { OperationHandle } from './operations.js';
import { discard, keepState, pruneKept, usableState } from './kept.js';
import { CREATION_SETTINGS } from './computes.js';

/** What `neon checkout` answers. */
export interface CheckoutResult {
  /** The branch the main compute is on now. */
  branch: string;
  /** True when it continues an existing branch (back to where a checkout left it), false for a new branch. */
  continued: boolean;
  target: string;
  reached_lsn: string | null;
  /** The automatic snapshot of the state that was left, to come back to it. */
  left: string | null;
}

/** A free name for a branch forked from `parent`: main-1, main-2, … */
function newBranchName(daemon: DaemonContext, parent: string): string {
  let n = 1;
  while (daemon.pageserver.history.hasBranch(`${parent}-${n}`)) n++;
  return `${parent}-${n}`;
}

/**
 * Switch the main compute to another point of history without losing the one it leaves: that one gets an
 * automatic snapshot, and its branch ends there. The target becomes a new branch forked at that point, unless
 * it is exactly where a checkout left a branch: then the main compute continues that branch from its tip.
 *
 * Nothing already materialised is thrown away: the data directory left is kept as it stopped (daemon/kept.ts),
 * so going back to it is a rename and a plain start; a new branch starts from a clone of its image's cached copy
 * (or, where the file system cannot clone, the older copy itself, renamed), and only WAL is replayed. The
 * directory replaced is removed in the background.
 */
export async function checkout(daemon: DaemonContext, text: unknown, progress?: OperationHandle): Promise<CheckoutResult> {
  const main = daemon.compute('main');
  if (main.record.readOnly) throw new NeonError('read_only', 'the main compute is read-only and cannot be checked out');
  const from = main.record.branch;
  // Everything that can be refused is checked before anything changes.
  const target = await resolveTarget(daemon, text, from);
  const { history } = daemon.pageserver;
  const targetBranch = history.branch(target.branch);
  const continued = !!target.snapshot?.auto && targetBranch.leftAt === target.snapshot.name && target.branch !== from;

  let left: Snapshot | undefined;
  progress?.step('a snapshot of the state left');
  if (main.state === 'running') left = await createSnapshot(daemon, { auto: true });
  const home = path.dirname(main.dataDir);
  const next = path.join(home, 'pgdata.next');
  const walDir = path.join(home, 'restore-wal');
  for (const dir of [next, path.join(home, 'pgdata.old'), walDir]) fs.rmSync(dir, { recursive: true, force: true });

  // Stop the primary first: on its way out it sends its last WAL (the shutdown checkpoint, which pg_control
  // names) to the safekeepers, which then hold the branch's tip.
  progress?.step('stopping the main compute');
  await main.stop();
  daemon.safekeepers.detach(from);
  const tip = readControlFile(main.dataDir).checkpoint;
  await history.updateBranch(from, { tipLsn: formatLsn(tip), leftAt: left?.name });

  let old: string | undefined;
  let swapped = false;
  const restoreOld = async () => {
    if (swapped && fs.existsSync(main.dataDir)) await discard(daemon, main.dataDir);
    if (old) fs.renameSync(old, main.dataDir);
    main.record = { ...main.record, branch: from, recovery: undefined };
    await daemon.saveCompute(main.record);
    await history.updateBranch(from, { tipLsn: undefined, leftAt: undefined });
    await main.start();
  };

  try {
    // Back to where a checkout left a branch: its data directory, kept as it stopped there, starts as it is.
    const kept = continued ? await usableState(daemon, target.branch) : undefined;
    let recovery: NonNullable<typeof main.record.recovery> | undefined;
    if (kept) {
      progress?.step(`back to the data directory kept at the tip of ${target.branch}`);
      fs.renameSync(kept, next);
      main.reachedLsn = targetBranch.tipLsn;
    } else {
      progress?.step(`restoring ${target.label}`);
      const prepared = await daemon.pageserver.prepare(
        target.branch,
        continued ? { action: 'promote' } : { lsn: target.lsn, time: target.time, timeline: target.timeline, action: 'promote' },
        next,
        walDir,
        { takeCache: true, progress: progressOf(progress) },
      );
      recovery = { settings: { ...prepared.settings, ...CREATION_SETTINGS }, until: 'promoted', walDir };
    }
    old = fs.existsSync(main.dataDir) ? keepState(daemon, main.dataDir, from) : undefined;
    fs.renameSync(next, main.dataDir);
    swapped = true;
    const branch = continued ? target.branch : newBranchName(daemon, target.branch);
    main.record = { ...main.record, branch, recovery };
    await daemon.saveCompute(main.record);
    // Starting it attaches the safekeepers to its branch (the computeStarted hook).
    progress?.step(recovery ? 'starting: replaying WAL to the point' : 'starting');
    await main.start();
    if (continued) await history.updateBranch(branch, { tipLsn: undefined, leftAt: undefined });
    else
      await history.addBranch({
        name: branch,
        parent: target.branch,
        forkLsn: main.reachedLsn ?? null,
        createdAt: new Date().toISOString(),
      });
  } catch (error) {
    // On success the compute removed the WAL gathered for its recovery once promoted (see Compute).
    await discard(daemon, next);
    fs.rmSync(walDir, { recursive: true, force: true });
    await restoreOld().catch((e) =>
      daemon.log.error('could not go back to branch %s after a failed checkout: %s', from, (e as Error).message),
    );
    throw error;
  }
  pruneKept(daemon);
  daemon.sync?.schedule();
  return { branch: main.record.branch, continued, target: target.label, reached_lsn: main.reachedLsn ?? null, left: left?.name ?? null };
}

/** Restore progress (bytes of the image written) as an operation's counters. */
function progressOf(handle?: OperationHandle): ((bytes: number, total: number) => void) | undefined {
  if (!handle) return undefined;
  let reported = 0;
  let sized = false;
  return (bytes, total) => {
    if (!sized) handle.step('restoring the image', total);
    sized = true;
    handle.add(bytes - reported);
    reported = bytes;
  };
}
