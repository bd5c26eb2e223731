import fs from 'node:fs';
import path from 'node:path';
import type { DaemonContext } from './context.js';
import { messageOf } from '../core/errors.js';
import { readObject } from '../core/storage.js';
import { DEFAULT_SEGMENT_SIZE as SEGMENT_SIZE, type Lsn, parseLsn, parseSegmentName, PARTIAL_SUFFIX, partialObjectKey, safekeeperWalDir, segmentOf, unpackWal, walFileOfKey, walObjectKey, walObjectPrefix } from '../core/wal.js';
import type { ImageManifest } from '../pageserver/manifest.js';
import { imageKey } from '../pageserver/manifest.js';


/** A point of history that must stay reachable: a snapshot, or the tip of a branch. */
interface Point {
  label: string;
  branch: string;
  lsn?: Lsn;
}

/** One thing `neon verify` found wrong. */
export interface Problem {
  what: 'image' | 'chunk' | 'wal';
  name: string;
  detail: string;
}

/** What `neon verify` answers. */
export interface VerifyReport {
  ok: boolean;
  checked: { points: number; images: number; chunks: number; wal_files: number };
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
 * every chunk those name (re-read and re-hashed), and the WAL from each image to its point (present; offloaded
 * copies decompressed, which checks their CRC).
 */
export async function verifyRepository(daemon: DaemonContext, snapshots?: string[]): Promise<VerifyReport> {
  const { pageserver, wal } = daemon;
  const problems: Problem[] = [];
  const images = new Map<string, ImageManifest>();
  const walChecked = new Set<string>();
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
  const hashes = new Set([...images.values()].flatMap((image) => image.files.flatMap((f) => f.chunks ?? [])));
  const result = await pageserver.store.verify(hashes);
  for (const hash of result.missing) problems.push({ what: 'chunk', name: hash, detail: 'missing from the chunk store' });
  for (const { hash, pack } of result.corrupt) problems.push({ what: 'chunk', name: hash, detail: `corrupt in pack ${pack}` });
  return {
    ok: problems.length === 0,
    checked: { points: list.length, images: images.size, chunks: hashes.size, wal_files: walChecked.size },
    problems,
  };
}

// A local file is checked for its size (a safekeeper's files are fsynced in place); an offloaded one by its CRC.
async function checkWal(daemon: DaemonContext, branch: string, name: string): Promise<string | undefined> {
  for (const node of daemon.safekeepers.nodes) {
    for (const file of [name, `${name}${PARTIAL_SUFFIX}`]) {
      const full = path.join(safekeeperWalDir(node.dir, branch), file);
      if (fs.existsSync(full))
        return fs.statSync(full).size === SEGMENT_SIZE ? undefined : `${full} is ${fs.statSync(full).size} bytes, not ${SEGMENT_SIZE}`;
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

/** What `neon gc` removed. */
export interface GcReport {
  images_removed: string[];
  packs_removed: number;
  packs_rewritten: number;
  freed_bytes: number;
  wal_removed: number;
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
  for (const branch of pageserver.history.branches()) {
    const before = firstNeeded.get(branch.name);
    if (before === undefined) continue;
    for (const node of daemon.safekeepers.nodes) {
      const dir = safekeeperWalDir(node.dir, branch.name);
      const files = fs.existsSync(dir) ? fs.readdirSync(dir).sort() : [];
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
  };
}
