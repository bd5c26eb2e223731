import fs from 'node:fs';
import path from 'node:path';
import { ChunkList } from '../chunkstore/chunk-list.js';
import type { ChunkStore } from '../chunkstore/index.js';
import { NeonError } from '../core/errors.js';
import type { PgUser } from '../postgres/user.js';
import type { ImageFile, ImageManifest } from './manifest.js';

const READ_AHEAD = 16;
const WRITE_BATCH = 1024 * 1024;
const BATCH_PAGES = WRITE_BATCH / 8192;

/** Write buffers in order with writev, going on after a short write. */
async function writeAll(handle: fs.promises.FileHandle, buffers: Buffer[], total: number): Promise<void> {
  let done = (await handle.writev(buffers)).bytesWritten;
  if (done === total) return;
  const all = Buffer.concat(buffers);
  while (done < total) done += (await handle.write(all, done, total - done)).bytesWritten;
}

/** Options of {@link restoreImage}. */
export interface RestoreOptions {
  /** Owner of everything written (the Postgres user when neon runs as root). */
  owner?: PgUser;
  /** Files written at once (default 8): reads of compressed chunks and writes overlap. */
  concurrency?: number;
  /** Called with the bytes written so far, for progress. */
  progress?: (bytes: number, total: number) => void;
  /** Stops the restore between files (it then rejects); what was written stays, for the caller to remove. */
  signal?: AbortSignal;
}

/** The path of an image entry, checked to stay inside the data directory. */
export function checkPath(file: ImageFile): string {
  // Manifests come from storage that others may write to: never let one place a file outside the folder.
  const normal = path.posix.normalize(file.path);
  if (!file.path || path.posix.isAbsolute(normal) || normal.startsWith('..') || normal.includes('\0')) {
    throw new NeonError('corrupt', `image entry "${file.path}" is not a relative path inside the data directory`);
  }
  return normal;
}

/** chown for the Postgres user, or nothing when neon does not run as root. */
export function ownerSetter(owner?: PgUser): (target: string) => void {
  return (target) => owner && fs.lchownSync(target, owner.uid, owner.gid);
}

/** Create `dataDir` with the image's folders and symlinks; returns the files, which are left to write. */
export function createTree(manifest: ImageManifest, dataDir: string, owner?: PgUser): ImageFile[] {
  const own = ownerSetter(owner);
  fs.mkdirSync(dataDir, { mode: 0o700 });
  own(dataDir);
  const files: ImageFile[] = [];
  for (const entry of manifest.files) {
    const target = path.join(dataDir, checkPath(entry));
    if (entry.type === 'dir') {
      fs.mkdirSync(target, { recursive: true, mode: entry.mode & 0o7777 });
      own(target);
    } else if (entry.type === 'symlink') {
      fs.symlinkSync(entry.link!, target);
      own(target);
    } else {
      files.push(entry);
    }
  }
  return files;
}

/**
 * Write a base image into `dataDir` (created, must not exist): folders first, then files in parallel, each
 * streamed chunk by chunk so that memory stays bounded whatever the database size. A chunk that is missing or
 * fails its checksum aborts the restore with an error naming it.
 */
export async function restoreImage(
  store: ChunkStore,
  manifest: ImageManifest,
  dataDir: string,
  options: RestoreOptions = {},
): Promise<number> {
  const { owner } = options;
  const own = ownerSetter(owner);
  const files = createTree(manifest, dataDir, owner);
  let written = 0;
  let failed = false;
  const next = files[Symbol.iterator]();
  const worker = async () => {
    for (let item = next.next(); !item.done && !failed; item = next.next()) {
      options.signal?.throwIfAborted();
      const entry = item.value;
      const target = path.join(dataDir, checkPath(entry));
      fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o700 });
      const handle = await fs.promises.open(target, 'w', entry.mode & 0o7777);
      try {
        // 1 MiB of pages at a time, read with as few system calls as the packs allow (ChunkStore.readMany) and
        // written with one writev; the next batch is read while one is written.
        const chunks = entry.chunks ?? new ChunkList();
        const batches: Promise<Buffer[]>[] = [];
        for (let at = 0, next = 0; at < chunks.length; at += BATCH_PAGES) {
          for (; batches.length < 2 && next < chunks.length; next += BATCH_PAGES) {
            const hashes = Array.from({ length: Math.min(BATCH_PAGES, chunks.length - next) }, (_, k) => chunks.hexAt(next + k));
            const batch = store.readMany(hashes);
            batch.catch(() => undefined); // read-ahead of a failing file: the awaited batch reports it
            batches.push(batch);
          }
          const batch = await batches.shift()!;
          const bytes = batch.reduce((sum, data) => sum + data.length, 0);
          await writeAll(handle, batch, bytes);
          written += bytes;
        }
        if (chunks.length === 0 && entry.size > 0) throw new NeonError('corrupt', `image entry ${entry.path} has a size but no chunks`);
      } finally {
        await handle.close();
      }
      own(target);
      options.progress?.(written, manifest.rawBytes);
    }
  };
  await Promise.all(
    Array.from({ length: options.concurrency ?? 8 }, () =>
      worker().catch((error) => {
        failed = true;
        throw error;
      }),
    ),
  );
  return written;
}

/** A folder renamed into place as a data directory: the manifest's folders, symlinks, modes and owner; `extra` files removed. */
export function fixTree(manifest: ImageManifest, dataDir: string, owner?: PgUser, extra: string[] = []): void {
  const own = ownerSetter(owner);
  for (const file of extra) fs.rmSync(path.join(dataDir, file), { force: true });
  fs.chmodSync(dataDir, 0o700);
  own(dataDir);
  for (const entry of manifest.files) {
    const target = path.join(dataDir, checkPath(entry));
    if (entry.type === 'dir') fs.mkdirSync(target, { recursive: true, mode: entry.mode & 0o7777 });
    else if (entry.type === 'symlink') {
      fs.rmSync(target, { force: true });
      fs.symlinkSync(entry.link!, target);
    }
    if (entry.type !== 'symlink') fs.chmodSync(target, entry.mode & 0o7777);
    own(target);
  }
}

const PAGE = 8192; // chunks are cut on Postgres' page boundaries (image-builder.ts)

/**
 * Make `target` hold `entry` when it already holds the file whose chunks were `had` (a copy of another image's
 * file; an empty or missing `target` when `had` is undefined): only the pages whose chunk differs are read from the
 * store and written, in runs of consecutive pages (one writev each), and the file is cut to `entry.size`. Returns the
 * bytes written. Used to derive an image's data directory from the cached copy of a neighbouring image.
 */
export async function patchFile(store: ChunkStore, target: string, entry: ImageFile, had?: ChunkList): Promise<number> {
  const chunks = entry.chunks ?? new ChunkList();
  if (chunks.length === 0 && entry.size > 0) throw new NeonError('corrupt', `image entry ${entry.path} has a size but no chunks`);
  const differ: number[] = [];
  for (let i = 0; i < chunks.length; i++) if (!had || !chunks.sameAt(i, had)) differ.push(i);
  const handle = await fs.promises.open(target, fs.existsSync(target) ? 'r+' : 'w', entry.mode & 0o7777);
  let written = 0;
  try {
    const ahead: Promise<Buffer>[] = [];
    const read = (i: number) => {
      const promise = store.read(chunks.hexAt(differ[i]));
      promise.catch(() => undefined); // read-ahead of a failing page: the awaited read reports it
      return promise;
    };
    let run: Buffer[] = [];
    let runStart = 0;
    let runBytes = 0;
    const flush = async () => {
      const at = runStart * PAGE;
      let done = run.length ? (await handle.writev(run, at)).bytesWritten : 0;
      if (done < runBytes) {
        const all = Buffer.concat(run);
        while (done < runBytes) done += (await handle.write(all, done, runBytes - done, at + done)).bytesWritten;
      }
      written += runBytes;
      run = [];
      runBytes = 0;
    };
    for (let i = 0; i < differ.length; i++) {
      while (ahead.length < READ_AHEAD && i + ahead.length < differ.length) ahead.push(read(i + ahead.length));
      const data = await ahead.shift()!;
      if (run.length && (differ[i] !== runStart + run.length || runBytes >= WRITE_BATCH)) await flush();
      if (!run.length) runStart = differ[i];
      run.push(data);
      runBytes += data.length;
    }
    await flush();
    await handle.truncate(entry.size);
  } finally {
    await handle.close();
  }
  return written;
}
