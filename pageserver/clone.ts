import fs from 'node:fs';
import path from 'node:path';
import type { PgUser } from '../postgres/user.js';

/**
 * Copying data directories at the speed the file system allows. `fs.copyFile` with COPYFILE_FICLONE asks for a
 * clone (FICLONE: XFS with reflink, btrfs; APFS's clonefile) and falls back inside libuv to an in-kernel copy
 * (copy_file_range, then sendfile): no bytes pass through Node, and several files go at once on libuv's threads.
 */

const probed = new Map<number, boolean>();

/**
 * True when files in `dir` can be cloned (copy-on-write): a copy costs no data then, so keeping copies and cloning
 * them is free, while on ext4 every copy writes every byte. Probed once per file system with a real clone of a
 * small file (COPYFILE_FICLONE_FORCE fails where there is no clone).
 */
export function clonesIn(dir: string): boolean {
  fs.mkdirSync(dir, { recursive: true });
  const device = fs.statSync(dir).dev;
  const known = probed.get(device);
  if (known !== undefined) return known;
  const source = path.join(dir, `.clone-probe-${process.pid}`);
  const target = `${source}.copy`;
  let clones = false;
  try {
    fs.writeFileSync(source, Buffer.alloc(4096, 1));
    fs.copyFileSync(source, target, fs.constants.COPYFILE_FICLONE_FORCE);
    clones = true;
  } catch {
    clones = false;
  } finally {
    fs.rmSync(source, { force: true });
    fs.rmSync(target, { force: true });
  }
  probed.set(device, clones);
  return clones;
}

/** One file to copy, and the mode it gets. */
export interface FileCopy {
  from: string;
  to: string;
  mode: number;
  size: number;
}

/** Options of {@link copyFiles}. */
export interface CopyOptions {
  owner?: PgUser;
  /** Files copied at once (default 8; libuv runs 4 at a time, the rest wait queued, which keeps its threads busy). */
  concurrency?: number;
  /** Called with the bytes copied so far. */
  progress?: (bytes: number) => void;
}

/** Files below this size are copied synchronously in batches: a data directory is mostly small files, and a trip
 * through libuv's thread pool per copy, chmod and chown costs more than the copy itself (seconds for a thousand
 * files on a busy machine). */
const SMALL = 256 * 1024;
const BATCH = 64;
/**
 * Targets are new files: COPYFILE_EXCL says so to libuv, which otherwise truncates the target first, and on ext4
 * (auto_da_alloc) a file truncated and then rewritten is flushed when it is closed, which makes the copy wait for
 * the disk and the next fsync of anything wait for the whole copy (1.4 s after 1 GB, 5 ms with EXCL). The copy
 * reaches the disk later: see pageserver/unsynced.ts.
 */
const NEW_FILE = fs.constants.COPYFILE_FICLONE | fs.constants.COPYFILE_EXCL;

/**
 * Copy files (their folders must exist): a clone where the file system offers it, an in-kernel copy otherwise.
 * Big files go several at once on libuv's threads, biggest first (so that one large relation file does not finish
 * alone at the end); small ones meanwhile on the main thread, in batches between which the event loop runs.
 * Returns the bytes copied.
 */
export async function copyFiles(files: FileCopy[], options: CopyOptions = {}): Promise<number> {
  const { owner } = options;
  const queue = files.filter((file) => file.size >= SMALL).sort((a, b) => b.size - a.size);
  const small = files.filter((file) => file.size < SMALL);
  let bytes = 0;
  let failed = false;
  const worker = async () => {
    for (let file = queue.shift(); file && !failed; file = queue.shift()) {
      await fs.promises.copyFile(file.from, file.to, NEW_FILE);
      await fs.promises.chmod(file.to, file.mode & 0o7777);
      if (owner) await fs.promises.lchown(file.to, owner.uid, owner.gid);
      bytes += file.size;
      options.progress?.(bytes);
    }
  };
  const smallOnes = async () => {
    for (let i = 0; i < small.length && !failed; i += BATCH) {
      for (const file of small.slice(i, i + BATCH)) {
        fs.copyFileSync(file.from, file.to, NEW_FILE);
        fs.chmodSync(file.to, file.mode & 0o7777);
        if (owner) fs.lchownSync(file.to, owner.uid, owner.gid);
        bytes += file.size;
      }
      options.progress?.(bytes);
      await new Promise((resolve) => setImmediate(resolve));
    }
  };
  const fail = (error: unknown) => {
    failed = true;
    throw error;
  };
  await Promise.all([smallOnes().catch(fail), ...Array.from({ length: options.concurrency ?? 8 }, () => worker().catch(fail))]);
  return bytes;
}

/**
 * Clone or copy a whole folder tree (regular files, folders and symlinks, with their modes) to `target`, which
 * must not exist. Used where there is no manifest to follow (a data directory kept as it was left).
 */
export async function copyTree(source: string, target: string, options: CopyOptions = {}): Promise<number> {
  const files: FileCopy[] = [];
  const own = (file: string) => options.owner && fs.lchownSync(file, options.owner.uid, options.owner.gid);
  const walk = (from: string, to: string) => {
    const stat = fs.lstatSync(from);
    fs.mkdirSync(to, { mode: stat.mode & 0o7777 });
    fs.chmodSync(to, stat.mode & 0o7777);
    own(to);
    for (const entry of fs.readdirSync(from, { withFileTypes: true })) {
      const a = path.join(from, entry.name);
      const b = path.join(to, entry.name);
      if (entry.isDirectory()) walk(a, b);
      else if (entry.isSymbolicLink()) {
        fs.symlinkSync(fs.readlinkSync(a), b);
        own(b);
      } else if (entry.isFile()) {
        const { mode, size } = fs.statSync(a);
        files.push({ from: a, to: b, mode, size });
      }
    }
  };
  walk(source, target);
  return copyFiles(files, options);
}

/** Bytes of the regular files under `dir`. */
export function treeBytes(dir: string): number {
  let bytes = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) bytes += fs.statSync(path.join(entry.parentPath, entry.name)).size;
  }
  return bytes;
}

/**
 * Flush every file and folder under `dir` to disk (fdatasync, several at once on libuv's threads). Not `dir`'s
 * own entry in its parent: the caller renames it into place afterwards and syncs that folder then. With
 * `live` (a running server's directory), files removed meanwhile are skipped: they need no flush.
 */
export async function syncTree(dir: string, options: { live?: boolean } = {}): Promise<void> {
  const files: string[] = [];
  const dirs = [dir];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const full = path.join(entry.parentPath, entry.name);
    if (entry.isFile()) files.push(full);
    else if (entry.isDirectory()) dirs.push(full);
  }
  const flush = async (file: string, data: boolean) => {
    const handle = await fs.promises.open(file, 'r').catch((error: NodeJS.ErrnoException) => {
      if (options.live && error.code === 'ENOENT') return undefined;
      throw error;
    });
    if (!handle) return;
    try {
      await (data ? handle.datasync() : handle.sync());
    } finally {
      await handle.close();
    }
  };
  const worker = async () => {
    for (let file = files.pop(); file; file = files.pop()) await flush(file, true);
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  for (const folder of dirs) await flush(folder, false);
}
