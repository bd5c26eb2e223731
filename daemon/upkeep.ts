import fs from 'node:fs';
import path from 'node:path';
import type { DaemonContext } from './context.js';
import { messageOf } from '../core/errors.js';
import { readObject } from '../core/storage.js';
import {
  DEFAULT_SEGMENT_SIZE as SEGMENT_SIZE,
  parseLsn,
  parseSegmentName,
  PARTIAL_SUFFIX,
  partialObjectKey,
  safekeeperWalDir,
  unpackWal,
  walObjectKey,
} from '../core/wal.js';
import { chunkSetOf, type ImageManifest } from '../pageserver/manifest.js';
import { imageKey } from '../pageserver/manifest.js';
import { describeDamage, localCopies, verifyCopies, type CopyDamage, type WalHolder } from '../wal/copies.js';
import { repairDamage, type StoredSegment } from '../wal/repair.js';
import { points, walNeeds } from './history-points.js';
import { pulledWalHolder } from './storages.js';

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
  const hashes = chunkSetOf(images.values());
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

/** Where WAL is kept here: the safekeepers, and the WAL pulled with snapshots from storages (`<repo>/pulled`). */
function walHolders(daemon: DaemonContext): WalHolder[] {
  return [...daemon.safekeepers.nodes, pulledWalHolder(daemon.repo.dir)];
}

// Local copies are verified record by record (./../wal/copies.ts); a file that only storage holds is checked by its
// gzip CRC, which proves it is what was uploaded.
async function checkWal(daemon: DaemonContext, branch: string, name: string): Promise<string | undefined> {
  for (const node of walHolders(daemon)) {
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
  const holders = walHolders(daemon);
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
    await cache.remove(key);
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

