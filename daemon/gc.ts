import fs from 'node:fs';
import path from 'node:path';
import type { DaemonContext } from './context.js';
import {
  DEFAULT_SEGMENT_SIZE as SEGMENT_SIZE,
  parseLsn,
  parseSegmentName,
  PARTIAL_SUFFIX,
  safekeeperWalDir,
  walFileOfKey,
  walObjectPrefix,
} from '../core/wal.js';
import { chunkSetOf, type ImageManifest } from '../pageserver/manifest.js';
import { imageKey } from '../pageserver/manifest.js';
import { keptCopyTime } from '../wal/repair.js';
import { points, walNeeds } from './history-points.js';

/** What `neon gc` removed. */
export interface GcReport {
  images_removed: string[];
  packs_removed: number;
  packs_rewritten: number;
  freed_bytes: number;
  wal_removed: number;
  /** Damaged WAL copies set aside by `neon verify` (`.corrupt-<time>`) older than the WAL retention. */
  damaged_wal_removed: number;
}

/**
 * Remove what no snapshot and no branch tip needs: older images (the newest of each branch stays), chunks no
 * kept image names, and WAL before the oldest point still needed on each branch, unless it is younger than the
 * retention (`keepWalDays`, so that recent history stays reachable by time).
 */
export async function collectGarbage(daemon: DaemonContext, keepWalDays = 7): Promise<GcReport> {
  const { pageserver, storage } = daemon;
  const keep = new Map<string, ImageManifest>();
  const firstNeeded = new Map<string, bigint>();
  for (const point of points(daemon)) {
    const image = await pageserver.chooseImage(point.branch, { lsn: point.lsn });
    keep.set(imageKey(image.branch, parseLsn(image.endLsn)), image);
    for (const need of walNeeds(daemon, point, image)) {
      const known = firstNeeded.get(need.branch);
      if (known === undefined || need.from < known) firstNeeded.set(need.branch, need.from);
    }
  }
  const removed: string[] = [];
  for (const branch of pageserver.history.branches()) {
    for (const image of pageserver.images(branch.name)) {
      if (keep.has(image.key)) continue;
      fs.rmSync(path.join(pageserver.dir, ...image.key.split('/')), { force: true });
      await pageserver.cache.remove(image.key);
      await storage?.delete(image.key);
      removed.push(image.key);
    }
  }
  const live = chunkSetOf(keep.values());
  const chunks = await pageserver.store.gc(live);
  const cutoff = Date.now() - keepWalDays * 86_400_000;
  let walRemoved = 0;
  let damagedRemoved = 0;
  for (const branch of pageserver.history.branches()) {
    const before = firstNeeded.get(branch.name);
    if (before === undefined) continue;
    for (const node of daemon.safekeepers.nodes) {
      const dir = safekeeperWalDir(node.dir, branch.name);
      const all = fs.existsSync(dir) ? fs.readdirSync(dir).sort() : [];
      // Damaged copies `neon verify` set aside are kept for the WAL retention, then go; they are not segments, so
      // they must not count as the newest file below.
      for (const file of all) {
        const keptAt = keptCopyTime(file);
        if (keptAt && keptAt.getTime() < cutoff) {
          fs.rmSync(path.join(dir, file));
          damagedRemoved++;
        }
      }
      const files = all.filter((file) => !keptCopyTime(file));
      // The newest file stays: a safekeeper resumes after it.
      for (const file of files.slice(0, -1)) {
        const segment = parseSegmentName(file.replace(PARTIAL_SUFFIX, ''), SEGMENT_SIZE);
        const full = path.join(dir, file);
        if (segment && segment.segno < before && fs.statSync(full).mtimeMs < cutoff) {
          fs.rmSync(full);
          walRemoved++;
        }
      }
    }
    if (!storage) continue;
    for await (const object of storage.list(walObjectPrefix(branch.name))) {
      const file = walFileOfKey(branch.name, object.key);
      const segment = file && parseSegmentName(file.name, SEGMENT_SIZE);
      if (segment && segment.segno < before && (object.mtime?.getTime() ?? 0) < cutoff) {
        await storage.delete(object.key);
        walRemoved++;
      }
    }
  }
  walRemoved += removeOrphanPulledWal(daemon);
  daemon.sync?.schedule();
  return {
    images_removed: removed,
    packs_removed: chunks.removedPacks,
    packs_rewritten: chunks.rewrittenPacks,
    freed_bytes: chunks.freedBytes,
    wal_removed: walRemoved,
    damaged_wal_removed: damagedRemoved,
  };
}

/** A pull in progress writes its WAL before its branch exists: only folders left alone this long are leftovers. */
const ORPHAN_AGE_MS = 60 * 60_000;

/**
 * The pulled WAL of branches that no longer exist (a `neon branch delete` of a pulled branch interrupted by a
 * crash, or a pull that never finished): removed once nothing has touched it for an hour. Returns the files removed.
 */
function removeOrphanPulledWal(daemon: DaemonContext): number {
  const root = path.join(daemon.repo.dir, 'pulled', 'wal');
  let removed = 0;
  for (const name of fs.existsSync(root) ? fs.readdirSync(root) : []) {
    const dir = path.join(root, name);
    if (daemon.pageserver.history.hasBranch(name) || Date.now() - fs.statSync(dir).mtimeMs < ORPHAN_AGE_MS) continue;
    removed += fs.readdirSync(dir).length;
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return removed;
}
