import fs from 'node:fs';
import path from 'node:path';
import type { DaemonContext } from './context.js';
import { messageOf } from '../core/errors.js';
import { readObject } from '../core/storage.js';
import {
  DEFAULT_SEGMENT_SIZE as SEGMENT_SIZE,
  type Lsn,
  parseLsn,
  parseSegmentName,
  PARTIAL_SUFFIX,
  partialObjectKey,
  safekeeperWalDir,
  segmentOf,
  unpackWal,
  walFileOfKey,
  walObjectKey,
  walObjectPrefix,
} from '../core/wal.js';
import type { ImageManifest } from '../pageserver/manifest.js';
import { imageKey } from '../pageserver/manifest.js';
import { describeDamage, localCopies, verifyCopies, type CopyDamage } from '../wal/copies.js';
import { keptCopyTime, repairDamage, type StoredSegment } from '../wal/repair.js';

/** A point of history that must stay reachable: a snapshot, or the tip of a branch. */
interface Point {
  label: string;
  branch: string;
  lsn?: Lsn;
}

/** One thing `neon verify` found wrong. */
export interface Problem {
  what: 'image' | 'chunk' | 'wal' | 'cache';
  name: string;
  detail: string;
  /** What was done about it: the good copy a damaged WAL file was rewritten from, or the cache copy dropped. */
  repaired?: string;
}

/** What `neon verify` answers. */
export interface VerifyReport {
  ok: boolean;
  checked: { points: number; images: number; chunks: number; wal_files: number; wal_copies: number; wal_mb: number; cached_images: number };
  problems: Problem[];
}

function points(daemon: DaemonContext, snapshots?: string[]): Point[] {
  const { history } = daemon.pageserver;
  const chosen = snapshots?.length ? snapshots.map((name) => history.snapshot(name)) : history.snapshots();
  const list: Point[] = chosen.map((s) => ({ label: `snapshot ${s.name}`, branch: s.branch, lsn: parseLsn(s.lsn) }));
  if (!snapshots?.length) for (const branch of history.branches()) list.push({ label: `tip of ${branch.name}`, branch: branch.name });
  return list;
}

/** The WAL segment numbers a point needs on each branch of its line: from its image's start up to the point. */
function walNeeds(daemon: DaemonContext, point: Point, image: ImageManifest): { branch: string; from: bigint; to?: bigint }[] {
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

/**
 * Re-check everything the snapshots (default: all of them, and every branch tip) need: their image manifests,
 * every chunk those name (re-read and re-hashed), the plain cached copy of each image (page checksums), and the
 * WAL from each image to its point: present; every safekeeper's copy verified record by record (CRCs, page
 * headers, up to its flush point) and a damaged one repaired from a good copy; offloaded copies decompressed, which
 * checks their CRC.
 */
export async function verifyRepository(daemon: DaemonContext, snapshots?: string[]): Promise<VerifyReport> {
  const { pageserver, wal } = daemon;
  const problems: Problem[] = [];
  const images = new Map<string, ImageManifest>();
  const walChecked = new Set<string>();
  const walRanges = new Map<string, { from: bigint; to?: bigint }[]>();
  const list = points(daemon, snapshots);
  for (const point of list) {
    let image: ImageManifest;
    try {
      image = await pageserver.chooseImage(point.branch, { lsn: point.lsn });
    } catch (error) {
      problems.push({ what: 'image', name: point.label, detail: messageOf(error) });
      continue;
    }
    images.set(imageKey(image.branch, parseLsn(image.endLsn)), image);
    for (const need of walNeeds(daemon, point, image)) {
      walRanges.set(need.branch, [...(walRanges.get(need.branch) ?? []), need]);
      const names = await wal.names(need.branch);
      const have = new Set<bigint>();
      for (const name of names) {
        const segment = parseSegmentName(name, SEGMENT_SIZE);
        if (!segment || segment.segno < need.from || (need.to !== undefined && segment.segno > need.to)) continue;
        have.add(segment.segno);
        const id = `${need.branch}/${name}`;
        if (walChecked.has(id)) continue;
        walChecked.add(id);
        const problem = await checkWal(daemon, need.branch, name);
        if (problem) problems.push({ what: 'wal', name: id, detail: problem });
      }
      const last = need.to ?? [...have].reduce((a, b) => (a > b ? a : b), need.from);
      for (let segno = need.from; segno <= last; segno++) {
        if (!have.has(segno))
          problems.push({
            what: 'wal',
            name: `${need.branch}/segment ${segno.toString(16)}`,
            detail: `missing (needed by ${point.label})`,
          });
      }
    }
  }
  const copies = await checkLocalWal(daemon, walRanges, problems);
  const cached = await checkImageCache(daemon, [...images.values()], problems);
  const hashes = new Set([...images.values()].flatMap((image) => image.files.flatMap((f) => f.chunks ?? [])));
  const result = await pageserver.store.verify(hashes);
  for (const hash of result.missing) problems.push({ what: 'chunk', name: hash, detail: 'missing from the chunk store' });
  for (const { hash, pack } of result.corrupt) problems.push({ what: 'chunk', name: hash, detail: `corrupt in pack ${pack}` });
  return {
    ok: problems.length === 0,
    checked: {
      points: list.length,
      images: images.size,
      chunks: hashes.size,
      wal_files: walChecked.size,
      wal_copies: copies.files,
      wal_mb: Math.round(copies.bytes / 2 ** 20),
      cached_images: cached,
    },
    problems,
  };
}

// Local copies are verified record by record (./../wal/copies.ts); a file that only storage holds is checked by its
// gzip CRC, which proves it is what was uploaded.
async function checkWal(daemon: DaemonContext, branch: string, name: string): Promise<string | undefined> {
  for (const node of daemon.safekeepers.nodes) {
    for (const file of [name, `${name}${PARTIAL_SUFFIX}`]) {
      if (fs.existsSync(path.join(safekeeperWalDir(node.dir, branch), file))) return undefined;
    }
  }
  const storage = daemon.storage;
  if (!storage) return 'missing';
  for (const key of [walObjectKey(branch, name), partialObjectKey(branch, name)]) {
    if (!(await storage.head(key))) continue;
    try {
      await unpackWal(key, await readObject(storage, key));
      return undefined;
    } catch (error) {
      return messageOf(error);
    }
  }
  return 'missing';
}

/**
 * Verify every safekeeper's copy of the needed WAL of each branch and repair damaged ones from a good copy (another
 * safekeeper's, or the offloaded one). Damage is a problem even when repaired: a disk that flips bits is news.
 */
async function checkLocalWal(
  daemon: DaemonContext,
  ranges: Map<string, { from: bigint; to?: bigint }[]>,
  problems: Problem[],
): Promise<{ files: number; bytes: number }> {
  const total = { files: 0, bytes: 0 };
  const holders = daemon.safekeepers.nodes;
  for (const [branch, needs] of ranges) {
    const wanted = (segno: bigint) => needs.some((need) => segno >= need.from && (need.to === undefined || segno <= need.to));
    const copies = localCopies(holders, branch, wanted);
    const report = await verifyCopies(branch, copies);
    total.files += report.files;
    total.bytes += report.bytes;
    if (!report.damaged.length) continue;
    const stored: StoredSegment = async (name) => {
      const key = walObjectKey(branch, name);
      try {
        if (daemon.storage && (await daemon.storage.head(key))) return await unpackWal(key, await readObject(daemon.storage, key));
      } catch {
        // unreadable or corrupt: not a good copy
      }
      return undefined;
    };
    const repairs = [];
    for (const damage of report.damaged) repairs.push(await repairDamage(branch, damage, copies, report.damaged, stored));
    // Check again what was rewritten: only a copy that now verifies counts as repaired.
    const after = repairs.some((r) => r.from.length)
      ? (await verifyCopies(branch, localCopies(holders, branch, wanted))).damaged
      : report.damaged;
    const stillDamaged = (damage: CopyDamage) =>
      after.some((d) => d.copy.file === damage.copy.file && d.copy.holder === damage.copy.holder);
    for (const { damage, from, kept } of repairs) {
      const fixed = from.length > 0 && !stillDamaged(damage);
      problems.push({
        what: 'wal',
        name: `${branch}/${damage.copy.name} on ${damage.copy.holder.name}`,
        detail: `${describeDamage(damage)}${fixed ? `; repaired from ${[...new Set(from)].join(', ')} (damaged file kept as ${kept.join(', ')})` : '; no good copy to repair it from'}`,
        ...(fixed ? { repaired: [...new Set(from)].join(', ') } : {}),
      });
    }
  }
  return total;
}

/** Check the plain cached copy of each image (see ImageCache.verify); a damaged one is dropped, as it is only a cache. */
async function checkImageCache(daemon: DaemonContext, images: ImageManifest[], problems: Problem[]): Promise<number> {
  const cache = daemon.pageserver.cache;
  let checked = 0;
  for (const image of images) {
    const key = imageKey(image.branch, parseLsn(image.endLsn));
    if (!cache.has(key)) continue;
    checked++;
    const { damaged } = await cache.verify(key, image);
    if (!damaged.length) continue;
    cache.remove(key);
    for (const damage of damaged) {
      problems.push({
        what: 'cache',
        name: `${key} ${damage.file}${damage.block === undefined ? '' : ` block ${damage.block}`}`,
        detail: `${damage.detail}; dropped the cached copy (new computes restore this image from the chunk store)`,
        repaired: 'chunk store',
      });
    }
  }
  return checked;
}

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
      pageserver.cache.remove(image.key);
      await storage?.delete(image.key);
      removed.push(image.key);
    }
  }
  const live = new Set([...keep.values()].flatMap((image) => image.files.flatMap((f) => f.chunks ?? [])));
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
