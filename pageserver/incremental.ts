// Incremental base images: the cost follows the pages that changed, not the database size.
//
// The previous image's plain copy (the image cache) is advanced in place by Postgres itself: it replays the WAL
// from the previous image's redo point to a checkpoint that the primary just made, and shuts down there with a
// restartpoint that writes every changed page. The WAL's block references (wal/changed-pages.ts) say which
// pages of which relation files those are; only they, the pages past a file's old end, the free space maps of
// touched relations and the small non-relation files (pg_xact, pg_control, …) are read and chunked. Every other
// page keeps its chunk from the previous manifest. What block references cannot describe (CREATE/DROP DATABASE,
// other records flagged as special relation updates, a timeline switch) makes the caller take a full image.
import fs from 'node:fs';
import path from 'node:path';
import type { ChunkStore } from '../chunkstore/index.js';
import { NeonError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { formatLsn, type Lsn, PARTIAL_SUFFIX, parseLsn } from '../core/wal.js';
import type { PgUser } from '../postgres/user.js';
import { changedPagesThrough, type ChangedPages } from '../wal/changed-pages.js';
import type { WalStore } from '../wal/store.js';
import { walFileSource } from '../wal/verify.js';
import { trace } from '../lib/trace.js';
import { ChunkList } from '../chunkstore/chunk-list.js';
import { ChunkPipeline } from '../chunkstore/pipeline.js';
import type { ImageCache } from './image-cache.js';
import { PAGE_SIZE } from './image-builder.js';
import { imageKey, type ImageFile, type ImageManifest } from './manifest.js';
import { readControlFile, type ControlData } from './pg-control.js';
import { shareWithPostgres, stageWal, walToStage, type WalSpan } from './recovery.js';
import { pagesToRead, parseRelPath, relKey, touchedRelations } from './rel-path.js';
import { replayTo } from './replay.js';
import { EMPTY_DIRS, SKIP_FILES, type NewImage } from './take-image.js';

const RM_XACT_ID = 1;

/** What an incremental image is made with. */
export interface IncrementalContext {
  store: ChunkStore;
  cache: ImageCache;
  wal: WalStore;
  /** Which branch's WAL serves which part of the branch's history (History.chain). */
  spans: WalSpan[];
  /**
   * A folder for the replay (the data directory, its WAL and log), on the cache's file system, that the Postgres
   * user can pass through.
   */
  scratch: string;
  binDir: string;
  owner?: PgUser;
  log: Logger;
}

/** The image to start from and the checkpoint to reach. */
export interface IncrementalRequest {
  previous: ImageManifest;
  /** A checkpoint record of the primary after the previous image, flushed by the safekeepers. */
  checkpoint: Lsn;
  /** The safekeepers' flush point, at or past the end of that record. */
  upTo: Lsn;
  /**
   * Past a commit made after that checkpoint (see commitAfterCheckpoint): the image serves points from here on,
   * where a hot standby started at the checkpoint sees every transaction that committed before it.
   */
  visibleFrom: Lsn;
}

/** An incremental image, and its plain copy to commit under the image's key once the manifest is stored. */
export interface TakenIncremental {
  image: NewImage;
  commit(key: string): void;
  abandon(): void;
}

/** Thrown when only a full image can describe the change: the caller takes one. */
export function needsFull(reason: string): NeonError {
  return new NeonError('needs_full_image', reason, { status: 409 });
}

/** Take an incremental image after `request.previous` (see the top of this file). */
export async function takeIncrementalImage(ctx: IncrementalContext, request: IncrementalRequest): Promise<TakenIncremental> {
  const { previous } = request;
  const previousKey = imageKey(previous.branch, parseLsn(previous.endLsn));
  await ctx.cache.refilled(previousKey); // a checkout took the copy: it is being written again
  if (!ctx.cache.has(previousKey)) throw needsFull(`the previous image ${previousKey} has no plain copy to advance`);
  fs.rmSync(ctx.scratch, { recursive: true, force: true }); // a replay a crash interrupted
  fs.mkdirSync(ctx.scratch, { recursive: true, mode: 0o710 });
  fs.chmodSync(ctx.scratch, ctx.owner ? 0o710 : 0o700); // the daemon's umask is 077
  if (ctx.owner) fs.chownSync(ctx.scratch, process.getuid?.() ?? 0, ctx.owner.gid);
  const walDir = path.join(ctx.scratch, 'wal');
  try {
    trace('image', 'incremental: adopting the plain copy');
    const adopted = await ctx.cache.adopt(previousKey, path.join(ctx.scratch, 'data'));
    if (!adopted) throw needsFull(`the previous image ${previousKey} has no plain copy to advance`);
    let replaying: Promise<Error | undefined> | undefined;
    try {
      const replay = () => {
        trace('image', 'incremental: replaying');
        return replayTo({
          dataDir: adopted.root,
          walDir,
          binDir: ctx.binDir,
          checkpoint: request.checkpoint,
          owner: ctx.owner,
          logFile: path.join(ctx.scratch, 'replay.log'),
        }).then(
          () => undefined,
          (error: Error) => error,
        );
      };
      const { changes, checkpointEnd } = await stageAndRead(ctx, walDir, previous, request, () => (replaying = replay()));
      // A replay of WAL that the walk found damaged stopped short (Postgres checks every record's CRC too): run it
      // again on the verified copies, from the restartpoint where it stopped.
      let failed = await replaying;
      if (!replaying || failed || !atCheckpoint(readControlFile(adopted.root), request.checkpoint)) failed = await (replaying = replay());
      if (failed) throw failed;
      const control = readControlFile(adopted.root);
      if (!atCheckpoint(control, request.checkpoint)) {
        throw new NeonError(
          'replay_failed',
          `the replay stopped at checkpoint ${formatLsn(control.checkpoint)} (state ${control.state}), not at ${formatLsn(request.checkpoint)}`,
          { status: 500 },
        );
      }
      emptyFolder(path.join(adopted.root, 'pg_wal'));
      trace('image', 'incremental: reading changed pages');
      const before = ctx.store.stats().storedBytes;
      const built = await buildFiles(ctx.store, adopted.root, previous, changes);
      const image: NewImage = {
        format: 'neon-image',
        version: 1,
        branch: previous.branch,
        timeline: control.timeline,
        startLsn: formatLsn(control.redo),
        endLsn: formatLsn(request.visibleFrom > checkpointEnd ? request.visibleFrom : checkpointEnd),
        systemId: previous.systemId,
        pgVersion: previous.pgVersion,
        kind: 'incremental',
        parent: previousKey,
        chain: (previous.chain ?? 0) + 1,
        pagesRead: built.pagesRead,
        createdAt: new Date().toISOString(),
        files: built.files,
        rawBytes: built.rawBytes,
        newBytes: ctx.store.stats().storedBytes - before,
      };
      trace('image', 'incremental: pages chunked');
      return { image, commit: adopted.commit, abandon: adopted.abandon };
    } catch (error) {
      await replaying; // Postgres leaves the folder before it goes
      adopted.abandon();
      throw error;
    }
  } finally {
    fs.rmSync(walDir, { recursive: true, force: true });
  }
}

/** True when pg_control says Postgres shut down in recovery at the checkpoint record `checkpoint` (a finished replay). */
function atCheckpoint(control: ControlData, checkpoint: Lsn): boolean {
  return control.state === 2 && control.checkpoint === checkpoint;
}

/**
 * Stage the WAL from the previous image's redo point for the replay, and read its changed-page set in the same
 * verifying pass. First each segment's local copy is linked as it is (no check per copy: the one walk from the
 * redo point to `upTo` checks every record the replay will apply), and `startReplay` is called at once, so that
 * Postgres replays while this thread walks; when a segment is not on this disk or the walk finds damage, the WAL
 * store stages again, choosing and verifying a good copy of each segment, and the replay is left to the caller.
 */
async function stageAndRead(
  ctx: IncrementalContext,
  walDir: string,
  previous: ImageManifest,
  request: IncrementalRequest,
  startReplay: () => Promise<unknown>,
): Promise<{ changes: ChangedPages; checkpointEnd: Lsn }> {
  const from = parseLsn(previous.startLsn);
  trace('image', 'incremental: staging local WAL');
  const local = await stageLocal(ctx, from, walDir, request.upTo);
  const replaying = local ? startReplay() : undefined;
  let read = local ? await readChanges(walDir, previous, request) : undefined;
  if (!read || 'problem' in read) {
    await replaying; // it reads the staged WAL, which is replaced now
    ctx.log.info('incremental image: staging WAL through the WAL store (%s)', read ? read.problem : 'a segment is not on this disk');
    fs.rmSync(walDir, { recursive: true, force: true });
    trace('image', 'incremental: staging verified WAL');
    await stageWal(ctx.wal, ctx.spans, from, walDir, { owner: ctx.owner, until: request.upTo });
    read = await readChanges(walDir, previous, request);
    if ('problem' in read) throw needsFull(read.problem);
  }
  return read;
}

/**
 * Link (or, for an unfinished segment, copy) into `dir` the local copy of every WAL file the replay from `from`
 * to `until` reads, as stageWal chooses them but unverified. False when a segment has no local copy (offloaded
 * only) or changed while being staged.
 */
async function stageLocal(ctx: IncrementalContext, from: Lsn, dir: string, until: Lsn): Promise<boolean> {
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  if (ctx.owner) fs.chownSync(dir, ctx.owner.uid, ctx.owner.gid);
  for await (const { branch, name } of walToStage(ctx.wal, ctx.spans, from, { until })) {
    const file = ctx.wal.localFile(branch, name);
    if (!file) return false;
    const target = path.join(dir, name);
    fs.rmSync(target, { force: true });
    try {
      // An unfinished segment is still being written: a copy of it, not a link.
      if (file.endsWith(PARTIAL_SUFFIX)) fs.copyFileSync(file, target);
      else fs.linkSync(file, target);
    } catch {
      return false; // finished and renamed, or another file system: the WAL store copies
    }
    shareWithPostgres(target, ctx.owner);
  }
  return true;
}

/**
 * The changed-page set from the previous image's redo point to the checkpoint, and where that record ends, from
 * one walk that verifies the WAL up to `upTo`. A `problem` when the staged WAL does not serve (damaged, or short
 * of the checkpoint); needs_full_image when it does but only a full image can describe the change.
 */
async function readChanges(
  walDir: string,
  previous: ImageManifest,
  request: IncrementalRequest,
): Promise<{ changes: ChangedPages; checkpointEnd: Lsn } | { problem: string }> {
  trace('image', 'incremental: reading block references');
  const source = walFileSource(walDir, { reuse: true });
  if (source.timeline !== previous.timeline) {
    throw needsFull(`the WAL is on timeline ${source.timeline}, the previous image on ${previous.timeline}`);
  }
  const from = parseLsn(previous.startLsn);
  const { changes, result, throughEnd } = await changedPagesThrough(source, { from, upTo: request.upTo, through: request.checkpoint });
  if (result.error) return { problem: `the WAL since the previous image cannot be read: ${result.error.message}` };
  const checkpointEnd = throughEnd;
  if (checkpointEnd === undefined) {
    return { problem: `checkpoint ${formatLsn(request.checkpoint)} is not in the WAL up to ${formatLsn(request.upTo)}` };
  }
  if (checkpointEnd <= parseLsn(previous.endLsn)) throw needsFull('no checkpoint since the previous image');
  if (changes.databases.length) {
    throw needsFull(`the WAL holds ${changes.databases.length} database-level records (CREATE or DROP DATABASE)`);
  }
  // A commit or abort that drops relation files is flagged as special: the files go, which the folder walk sees.
  const special = changes.special.filter((record) => record.rmid !== RM_XACT_ID);
  if (special.length) {
    const first = special[0];
    throw needsFull(`the WAL holds ${special.length} special relation updates (rmgr ${first.rmid} at ${formatLsn(first.lsn)})`);
  }
  return { changes, checkpointEnd };
}

/** Remove what a folder holds, keeping the folder. */
function emptyFolder(dir: string): void {
  for (const name of fs.existsSync(dir) ? fs.readdirSync(dir) : []) fs.rmSync(path.join(dir, name), { recursive: true, force: true });
}

interface Built {
  files: ImageFile[];
  rawBytes: number;
  pagesRead: number;
}

/** The manifest's entries for the replayed folder `root`: the previous chunks, with the changed pages re-read. */
async function buildFiles(store: ChunkStore, root: string, previous: ImageManifest, changes: ChangedPages): Promise<Built> {
  const before = new Map(previous.files.map((file) => [file.path, file]));
  const touched = touchedRelations(changes);
  const created = new Set(changes.created.map((c) => `${relKey(c.rel)}/${c.fork}`));
  const built: Built = { files: [], rawBytes: 0, pagesRead: 0 };
  const page = Buffer.allocUnsafe(PAGE_SIZE);
  // Changed pages are hashed and compressed on the hashing workers, as a full image's are: the event loop (the
  // REST API) stays free, and the lists are complete after pipeline.finish().
  const pipeline = new ChunkPipeline(store);
  const readPages = async (fd: number, size: number, pages: Iterable<number>, into: ChunkList) => {
    for (const index of pages) {
      const length = fs.readSync(fd, page, 0, Math.min(PAGE_SIZE, size - index * PAGE_SIZE), index * PAGE_SIZE);
      pipeline.add(page.subarray(0, length), into, index); // copies the page
      built.pagesRead++;
      if (pipeline.busy) await pipeline.drain();
    }
  };
  const addFile = async (rel: string, mode: number) => {
    const full = path.join(root, rel);
    const size = fs.statSync(full).size;
    const pages = Math.ceil(size / PAGE_SIZE);
    const old = before.get(rel);
    const relFile = parseRelPath(rel);
    let reuse = !!old && old.type === 'file' && !!relFile && size % PAGE_SIZE === 0 && old.size % PAGE_SIZE === 0;
    if (reuse && created.has(`${relKey(relFile!)}/${relFile!.fork}`)) reuse = false;
    // Replay changes map pages without block references: the free space map (as a hint), and the visibility map
    // bit that a heap insert, update or delete clears (Neon's pageserver has the same rule). Maps are small (a
    // visibility map page covers 255 MB of heap): read the whole maps of a touched relation.
    const isMap = relFile?.fork === 1 || relFile?.fork === 2;
    if (reuse && isMap && (touched.has(relKey(relFile!)) || old!.size !== size)) reuse = false;
    const chunks = reuse ? (old!.chunks ?? new ChunkList()).resized(pages) : ChunkList.alloc(pages);
    const wanted = reuse ? pagesToRead(relFile!, changes, old!.size / PAGE_SIZE, pages) : Array.from({ length: pages }, (_, i) => i);
    if (wanted.length) {
      const fd = fs.openSync(full, 'r');
      try {
        await readPages(fd, size, wanted, chunks);
      } finally {
        fs.closeSync(fd);
      }
    }
    built.files.push({ path: rel, type: 'file', mode, size, chunks });
    built.rawBytes += size;
  };
  const walk = async (relative: string): Promise<void> => {
    const entries = fs.readdirSync(path.join(root, relative), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const entry of entries) {
      const rel = relative ? path.join(relative, entry.name) : entry.name;
      const stat = fs.lstatSync(path.join(root, rel));
      if (entry.isDirectory()) {
        built.files.push({ path: rel, type: 'dir', mode: stat.mode & 0o7777, size: 0 });
        if (!EMPTY_DIRS.has(rel)) await walk(rel);
      } else if (entry.isSymbolicLink()) {
        built.files.push({ path: rel, type: 'symlink', mode: stat.mode & 0o7777, size: 0, link: fs.readlinkSync(path.join(root, rel)) });
      } else if (entry.isFile() && !(relative === '' && (SKIP_FILES.has(entry.name) || entry.name === '.complete'))) {
        await addFile(rel, stat.mode & 0o7777);
      }
    }
  };
  await walk('');
  await pipeline.finish();
  await store.flush();
  return built;
}
