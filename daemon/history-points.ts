import type { DaemonContext } from './context.js';
import { DEFAULT_SEGMENT_SIZE as SEGMENT_SIZE, type Lsn, parseLsn, segmentOf } from '../core/wal.js';
import type { ImageManifest } from '../pageserver/manifest.js';

/*
 * What `neon verify` checks and `neon gc` keeps: the points of history that must stay reachable, and the WAL each
 * needs from its base image on.
 */

/** A point of history that must stay reachable: a snapshot, or the tip of a branch. */
export interface Point {
  label: string;
  branch: string;
  lsn?: Lsn;
}

/** Every snapshot (or the ones named) and, unless snapshots are named, every branch tip. */
export function points(daemon: DaemonContext, snapshots?: string[]): Point[] {
  const { history } = daemon.pageserver;
  const chosen = snapshots?.length ? snapshots.map((name) => history.snapshot(name)) : history.snapshots();
  const list: Point[] = chosen.map((s) => ({ label: `snapshot ${s.name}`, branch: s.branch, lsn: parseLsn(s.lsn) }));
  if (!snapshots?.length) for (const branch of history.branches()) list.push({ label: `tip of ${branch.name}`, branch: branch.name });
  return list;
}

/** The WAL segment numbers a point needs on each branch of its line: from its image's start up to the point. */
export function walNeeds(daemon: DaemonContext, point: Point, image: ImageManifest): { branch: string; from: bigint; to?: bigint }[] {
  const start = parseLsn(image.startLsn);
  return daemon.pageserver.history
    .chain(point.branch)
    .filter((span) => span.to === undefined || span.to > start)
    .map((span) => {
      const to = span.to ?? point.lsn;
      return {
        branch: span.branch,
        from: segmentOf(start > span.from ? start : span.from, SEGMENT_SIZE),
        to: to === undefined ? undefined : segmentOf(to, SEGMENT_SIZE),
      };
    });
}

