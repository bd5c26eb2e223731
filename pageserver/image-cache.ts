import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { ChunkList } from '../chunkstore/chunk-list.js';
import type { PgUser } from '../postgres/user.js';
import type { ImageFile, ImageManifest } from './manifest.js';
import { checkPath, createTree, fixTree, ownerSetter, patchFile, restoreImage } from './restore.js';
import type { ChunkStore } from '../chunkstore/index.js';
import { fsyncDir } from '../core/fs-atomic.js';
import { clonesIn, copyFiles, copyTree, syncTree, treeBytes } from './clone.js';
import { CacheWriter } from './cache-writer.js';
import { BLCKSZ, checkPage, firstBlockOf, storedChecksum } from './page-checksum.js';

/** A damaged file of an image's cached copy: the first bad page (or a wrong size). */
export interface CacheDamage {
  file: string;
  block?: number;
  detail: string;
}

const READ_PAGES = 128; // 1 MiB reads: files of up to 1 GB without holding them in memory

/** Receives the files of an image as they are chunked, and writes them out as plain files too. */
export interface ImageMirror {
  addDir(path: string, mode: number): void;
  beginFile(path: string, mode: number): void;
  write(data: Buffer): void;
  endFile(): void;
  /** True when writing has fallen behind: await {@link drain} before giving more. */
  readonly busy?: boolean;
  /** Resolves once writing has caught up enough (a copy that failed does not hold the image up). */
  drain?(): Promise<void>;
}

const DONE = '.complete';
/** A refill waits this long before it starts, so that the compute a checkout starts is up first. */
const REFILL_DELAY_MS = 1000;
const INCOMING = 'incoming-';
const GiB = 1024 ** 3;

/** Options of the {@link ImageCache}. */
export interface ImageCacheOptions {
  /**
   * Disk space that copies of older images (not the newest of their branch) may use together; the oldest go first.
   * Default: a quarter of the free space of the file system, at most 4 GiB. 0 keeps only the newest per branch.
   */
  olderBudgetBytes?: number;
  /** Told when a copy could not be flushed to disk (it is dropped: computes restore that image from chunks). */
  warn?: (message: string) => void;
  /** Told what the cache does in the background (a copy taken by a checkout being written again). */
  info?: (message: string) => void;
}

/**
 * Plain copies of images, beside the chunk store: the newest of each branch always, older ones within a disk
 * budget. Restoring from chunks reads, inflates and checks every 8 KiB page; restoring from a copy is a file clone
 * (copy-on-write where the file system offers it, an in-kernel copy otherwise), as fast as `cp -a`, or, for a
 * checkout on a file system that cannot clone, a rename of the older copy itself. It is only a cache: the chunk
 * store stays the truth, and a missing or incomplete copy is simply not used.
 */
export class ImageCache {
  /** Copies being read (cloned from): never taken away or evicted meanwhile. */
  private readonly reading = new Map<string, number>();
  /**
   * Copies written and in their folder but still being flushed to disk, by key, with their size: usable by this
   * process (clones read the page cache), marked complete on disk once flushed, moved or removed only after.
   */
  private readonly syncing = new Map<string, { bytes: number; done: Promise<void> }>();
  /** Copies being written again from chunks, after a checkout took the newest copy of a branch (see {@link refill}). */
  private readonly refilling = new Map<string, { done: Promise<void>; abort: AbortController }>();

  constructor(
    readonly dir: string,
    private readonly options: ImageCacheOptions = {},
  ) {
    // A cache write that a crash or a kill interrupted leaves its incoming folder, or a folder never marked complete
    // (not known to be on disk): nothing will ever commit either.
    for (const entry of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
      if (entry.startsWith(INCOMING) || !fs.existsSync(path.join(dir, entry, DONE))) {
        fs.rmSync(path.join(dir, entry), { recursive: true, force: true });
      }
    }
  }

  private folderOf(key: string): string {
    return path.join(this.dir, key.replace(/\//g, '_').replace(/\.json\.gz$/, ''));
  }

  /** True when copies here are clones that cost no data (XFS with reflink, btrfs). */
  get clones(): boolean {
    return clonesIn(this.dir);
  }

  /**
   * True when a complete copy of the image `key` is here (perhaps still being flushed to disk). A copy whose folder
   * was removed meanwhile (by hand: the cache is only an accelerator) is not: restores then read the chunks.
   */
  has(key: string): boolean {
    const folder = this.folderOf(key);
    return this.syncing.has(key) ? fs.existsSync(folder) : fs.existsSync(path.join(folder, DONE));
  }

  /** Resolves once the copy of `key` (every copy, without a key) is flushed to disk, or dropped. */
  async settled(key?: string): Promise<void> {
    if (key !== undefined) await this.syncing.get(key)?.done;
    else await Promise.all([...this.syncing.values()].map((entry) => entry.done));
  }

  /**
   * Resolves once the copy of `key` (every copy, without a key) that a checkout took is written again (or its
   * refill failed): whoever would use that copy waits for it rather than rebuild the image from chunks too.
   */
  async refilled(key?: string): Promise<void> {
    if (key !== undefined) await this.refilling.get(key)?.done;
    else await Promise.all([...this.refilling.values()].map((entry) => entry.done));
  }

  /** Stop refills (a refill left unfinished is removed, as after a crash) and wait for every flush. */
  async close(): Promise<void> {
    for (const entry of this.refilling.values()) entry.abort.abort();
    await this.refilled();
    await this.settled();
  }

  /**
   * Start a copy of an image being taken, written on a thread of its own (cache-writer.ts); commit it under the
   * image's key once the image is stored. commit() resolves when the copy is written and in place; it is flushed
   * to disk after that, in the background (see {@link settled}), and marked complete on disk only then, so that a
   * power loss never leaves a torn copy marked complete (it would be cloned into every new compute).
   */
  writer(): ImageMirror & { commit(key: string): Promise<void>; abandon(): Promise<void> } {
    fs.mkdirSync(this.dir, { recursive: true });
    const root = fs.mkdtempSync(path.join(this.dir, INCOMING));
    const thread = new CacheWriter(root, this.clones);
    return {
      addDir: (dir) => thread.addDir(dir),
      beginFile: (file) => thread.beginFile(file),
      write: (data) => thread.write(data),
      endFile: () => thread.endFile(),
      get busy() {
        return thread.busy;
      },
      drain: () => thread.drain(),
      commit: async (key) => {
        const bytes = await thread.close();
        const final = this.folderOf(key);
        await this.settled(key);
        fs.rmSync(final, { recursive: true, force: true });
        fs.renameSync(root, final);
        const done = thread
          .sync(final)
          .then(() => fs.writeFileSync(path.join(final, DONE), JSON.stringify({ bytes })))
          .catch(async (error: Error) => {
            await thread.stop();
            fs.rmSync(final, { recursive: true, force: true });
            this.options.warn?.(`the cached copy of ${key} could not be flushed to disk (${error.message}): dropped`);
          })
          .finally(() => {
            this.syncing.delete(key);
            this.prune();
          });
        this.syncing.set(key, { bytes, done });
        this.prune();
      },
      abandon: async () => {
        await thread.stop();
        fs.rmSync(root, { recursive: true, force: true });
      },
    };
  }

  /** Drop the copy of an image (it was removed by gc). */
  async remove(key: string): Promise<void> {
    await this.refilled(key);
    await this.settled(key);
    fs.rmSync(this.folderOf(key), { recursive: true, force: true });
  }

  /**
   * Take the copy of image `key` out of the cache to advance it in place into a newer image (an incremental:
   * Postgres replays WAL in it). Where copies are clones the copy of `key` stays (an older copy, within the
   * budget) and a clone of it is advanced; otherwise it stops being the copy of `key` at once (computes made
   * meanwhile restore from chunks). It goes to `root` (a folder that must not exist, on the same file system:
   * Postgres must be able to reach it); commit() files it under the new image's key, abandon() removes it.
   * Undefined when there is no copy.
   */
  async adopt(key: string, root: string): Promise<{ root: string; commit(key: string): void; abandon(): void } | undefined> {
    await this.refilled(key);
    await this.settled(key);
    if (!this.has(key)) return undefined;
    if (this.clones) {
      await this.reader(key, () => copyTree(this.folderOf(key), root));
    } else {
      if (this.reading.get(key)) return undefined;
      fs.renameSync(this.folderOf(key), root);
    }
    fs.rmSync(path.join(root, DONE), { force: true });
    return {
      root,
      commit: (next) => {
        const final = this.folderOf(next);
        fs.rmSync(final, { recursive: true, force: true });
        fs.writeFileSync(path.join(root, DONE), JSON.stringify({ bytes: treeBytes(root) }));
        fs.renameSync(root, final);
        this.prune();
      },
      abandon: () => fs.rmSync(root, { recursive: true, force: true }),
    };
  }

  /**
   * Materialise the copy of `manifest` (stored as `key`) as `dataDir`, with the manifest's modes and owner. Files
   * are cloned (or copied in the kernel) in parallel. With `take` (a checkout), where the file system cannot
   * clone, the copy itself is renamed into place instead, a metadata change whatever the size: it leaves the
   * cache, and when it was the newest of its branch (which incrementals and new computes start from) it is
   * written again from `take`'s chunk store in the background (see {@link refill}). Returns the bytes.
   */
  async restore(
    key: string,
    manifest: ImageManifest,
    dataDir: string,
    owner?: PgUser,
    options: { take?: ChunkStore; concurrency?: number; progress?: (bytes: number) => void } = {},
  ): Promise<number> {
    const source = this.folderOf(key);
    if (await this.take(key, manifest, dataDir, options.take)) {
      fixTree(manifest, dataDir, owner, [DONE]);
      options.progress?.(manifest.rawBytes);
      return manifest.rawBytes;
    }
    return this.reader(key, async () => {
      const files = createTree(manifest, dataDir, owner).map((entry) => ({
        from: path.join(source, entry.path),
        to: path.join(dataDir, checkPath(entry)),
        mode: entry.mode,
        size: entry.size,
      }));
      return copyFiles(files, { owner, concurrency: options.concurrency, progress: options.progress });
    });
  }

  /**
   * Materialise `manifest` as `dataDir` from the copy of a neighbouring image (`source`, stored as `sourceKey`):
   * every file is cloned or copied from that copy, and only the pages whose chunks differ between the two images
   * are then read from the chunk store and written (restore.ts patchFile); files the neighbour lacks come from the
   * chunks whole. The result is the image byte for byte, as from restoreImage, at about the cost of a copy when few
   * pages differ: an older snapshot whose own copy an incremental advanced (ext4) is a copy of the newer one away.
   * With `take` (a checkout), where the file system cannot clone, the neighbour's copy itself is renamed into place
   * and patched there, as {@link restore} takes a copy: then only the pages that differ are written.
   */
  async restoreFrom(
    sourceKey: string,
    source: ImageManifest,
    manifest: ImageManifest,
    dataDir: string,
    store: ChunkStore,
    owner?: PgUser,
    options: { take?: boolean; concurrency?: number; progress?: (bytes: number) => void } = {},
  ): Promise<number> {
    const root = this.folderOf(sourceKey);
    const had = new Map(source.files.filter((entry) => entry.type === 'file').map((entry) => [entry.path, entry]));
    const patch = async (files: ImageFile[]) => {
      const next = files.filter((entry) => !sameFile(entry, had.get(entry.path)))[Symbol.iterator]();
      const own = ownerSetter(owner);
      let bytes = 0;
      const worker = async () => {
        for (let item = next.next(); !item.done; item = next.next()) {
          const target = path.join(dataDir, checkPath(item.value));
          bytes += await patchFile(store, target, item.value, had.get(item.value.path)?.chunks);
          own(target);
        }
      };
      await Promise.all(Array.from({ length: options.concurrency ?? 8 }, worker));
      return bytes;
    };
    if (options.take && (await this.take(sourceKey, source, dataDir, store))) {
      const files = pruneTree(manifest, dataDir);
      const bytes = await patch(files);
      fixTree(manifest, dataDir, owner, [DONE]);
      options.progress?.(manifest.rawBytes);
      return bytes;
    }
    return this.reader(sourceKey, async () => {
      const files = createTree(manifest, dataDir, owner);
      const copies = files
        .filter((entry) => had.has(entry.path))
        .map((entry) => ({
          from: path.join(root, checkPath(entry)),
          to: path.join(dataDir, checkPath(entry)),
          mode: entry.mode,
          size: had.get(entry.path)!.size,
        }));
      return (await copyFiles(copies, { owner, concurrency: options.concurrency, progress: options.progress })) + (await patch(files));
    });
  }

  /**
   * Rename the copy of `key` (of `manifest`) to `dataDir` when that is the cheaper way to materialise it: a
   * checkout (`store` given) where the file system cannot clone, and nobody reads the copy. The newest copy of a
   * branch is then written again from `store` in the background. False when the copy must be cloned instead.
   */
  private async take(key: string, manifest: ImageManifest, dataDir: string, store?: ChunkStore): Promise<boolean> {
    if (!store || this.clones) return false;
    await this.settled(key);
    if (this.reading.get(key) || !this.has(key)) return false;
    const newest = this.isNewest(key);
    fs.renameSync(this.folderOf(key), dataDir);
    if (newest) this.refill(key, manifest, store);
    return true;
  }

  /**
   * Write the copy of `manifest` (stored as `key`) again from the chunk store, in the background: into an
   * incoming folder, flushed to disk, marked complete, and only then renamed into place. While it runs the copy
   * is not there ({@link has} is false), and {@link refilled} waits for it.
   */
  private refill(key: string, manifest: ImageManifest, store: ChunkStore): void {
    if (this.refilling.has(key)) return;
    const abort = new AbortController();
    const root = path.join(this.dir, `${INCOMING}refill-${process.pid}-${Date.now()}`);
    const final = this.folderOf(key);
    const started = Date.now();
    const done = (async () => {
      // Let the checkout's compute start first: the refill reads and writes a whole image.
      await sleep(REFILL_DELAY_MS, undefined, { signal: abort.signal });
      await restoreImage(store, manifest, root, { concurrency: 4, signal: abort.signal });
      await syncTree(root);
      abort.signal.throwIfAborted();
      fs.writeFileSync(path.join(root, DONE), JSON.stringify({ bytes: manifest.rawBytes }));
      await fsyncDir(root);
      fs.rmSync(final, { recursive: true, force: true });
      fs.renameSync(root, final);
      await fsyncDir(this.dir);
      this.options.info?.(`the cached copy of ${key} is written again (${Date.now() - started} ms)`);
    })()
      .catch((error: Error) => {
        fs.rmSync(root, { recursive: true, force: true });
        if (!abort.signal.aborted) {
          this.options.warn?.(`the cached copy of ${key} could not be written again (${error.message}): computes restore it from chunks`);
        }
      })
      .finally(() => {
        this.refilling.delete(key);
        this.prune();
      });
    this.refilling.set(key, { done, abort });
  }

  private async reader<T>(key: string, work: () => Promise<T>): Promise<T> {
    this.reading.set(key, (this.reading.get(key) ?? 0) + 1);
    try {
      return await work();
    } finally {
      this.reading.set(key, this.reading.get(key)! - 1);
    }
  }

  /** The complete copies: folder name, branch prefix, size, and when each was made. */
  private entries(): { name: string; prefix: string; bytes: number; made: number; flushing?: boolean }[] {
    const found = [];
    for (const name of fs.existsSync(this.dir) ? fs.readdirSync(this.dir) : []) {
      const done = path.join(this.dir, name, DONE);
      const flushing = [...this.syncing].find(([key]) => path.basename(this.folderOf(key)) === name)?.[1];
      if (flushing) found.push({ name, prefix: name.replace(/_[0-9a-f]{16}$/, '_'), bytes: flushing.bytes, made: Date.now(), flushing: true });
      if (name.startsWith(INCOMING) || !fs.existsSync(done)) continue;
      let bytes: number;
      try {
        bytes = Number(JSON.parse(fs.readFileSync(done, 'utf8')).bytes);
      } catch {
        bytes = treeBytes(path.join(this.dir, name)); // written by an older neon: an empty marker
      }
      found.push({ name, prefix: name.replace(/_[0-9a-f]{16}$/, '_'), bytes, made: fs.statSync(done).mtimeMs });
    }
    return found;
  }

  // Image keys end in the LSN as 16 hex digits: within a branch, the greatest name is the newest image.
  private isNewest(key: string): boolean {
    const name = path.basename(this.folderOf(key));
    const prefix = name.replace(/_[0-9a-f]{16}$/, '_');
    return !this.entries().some((other) => other.prefix === prefix && other.name > name);
  }

  /** Drop older copies beyond the budget, the oldest first; the newest of each branch always stays. */
  prune(): void {
    const all = this.entries();
    const newest = new Map<string, string>();
    for (const entry of all) if ((newest.get(entry.prefix) ?? '') < entry.name) newest.set(entry.prefix, entry.name);
    const older = all
      .filter((entry) => newest.get(entry.prefix) !== entry.name)
      .sort((a, b) => b.made - a.made || (a.name < b.name ? 1 : -1));
    let budget = this.options.olderBudgetBytes ?? defaultBudget(this.dir);
    for (const entry of older) {
      const key = [...this.reading.keys()].find((k) => this.reading.get(k) && path.basename(this.folderOf(k)) === entry.name);
      if (entry.bytes <= budget || key || entry.flushing) budget -= entry.bytes;
      else fs.rmSync(path.join(this.dir, entry.name), { recursive: true, force: true });
    }
  }

  /**
   * Check the copy of `manifest` (stored as `key`): it is cloned into every new compute, so a flipped byte here
   * would be in all of them. Relation pages carry a checksum (data checksums are on, postgres/initdb.ts): each is
   * checked with its block number, without reading the chunk store. Other files (pg_control, pg_xact, …), and
   * pages without a checksum (a cluster imported with checksums off has 0 there), are compared with the sha256
   * of their chunk in the manifest. Returns the damaged files (the first bad page of each) and the bytes read.
   */
  async verify(key: string, manifest: ImageManifest): Promise<{ damaged: CacheDamage[]; bytes: number }> {
    const root = this.folderOf(key);
    const damaged: CacheDamage[] = [];
    let bytes = 0;
    const buffer = Buffer.alloc(READ_PAGES * BLCKSZ);
    for (const entry of manifest.files) {
      if (entry.type !== 'file') continue;
      const file = path.join(root, checkPath(entry));
      let handle: fs.promises.FileHandle;
      try {
        handle = await fs.promises.open(file, 'r');
      } catch {
        damaged.push({ file: entry.path, detail: `missing from the cached copy ${root}` });
        continue;
      }
      try {
        const size = (await handle.stat()).size;
        if (size !== entry.size) {
          damaged.push({ file: entry.path, detail: `${size} bytes in the cached copy, ${entry.size} in the image` });
          continue;
        }
        const firstBlock = firstBlockOf(entry.path);
        const chunks = entry.chunks ?? new ChunkList();
        let problem: CacheDamage | undefined;
        for (let offset = 0; offset < size && !problem;) {
          const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
          if (bytesRead === 0) break;
          for (let at = 0; at < bytesRead && !problem; at += BLCKSZ) {
            const page = buffer.subarray(at, Math.min(at + BLCKSZ, bytesRead));
            const index = (offset + at) / BLCKSZ;
            const checked = firstBlock !== undefined && page.length === BLCKSZ && storedChecksum(page) !== 0;
            const wrong = checked
              ? checkPage(page, firstBlock + index)
              : index < chunks.length && hashOf(page).equals(chunks.rawAt(index))
                ? undefined
                : `differs from the image (chunk ${index < chunks.length ? chunks.hexAt(index).slice(0, 12) : 'none'})`;
            if (wrong) problem = { file: entry.path, block: index, detail: wrong };
          }
          offset += bytesRead;
          bytes += bytesRead;
        }
        if (problem) damaged.push(problem);
      } finally {
        await handle.close();
      }
    }
    return { damaged, bytes };
  }
}

/**
 * Bring the folder tree at `dataDir` (a neighbour's copy, renamed there) to `manifest`'s entries: whatever the
 * manifest lacks, or holds as another type, is removed; its folders are made. Returns its files,
 * which are left to patch.
 */
function pruneTree(manifest: ImageManifest, dataDir: string): ImageFile[] {
  const wanted = new Map(manifest.files.map((entry) => [checkPath(entry), entry.type]));
  const typeOf = (entry: fs.Dirent) => (entry.isDirectory() ? 'dir' : entry.isSymbolicLink() ? 'symlink' : entry.isFile() ? 'file' : 'other');
  const walk = (relative: string) => {
    for (const entry of fs.readdirSync(path.join(dataDir, relative), { withFileTypes: true })) {
      const rel = relative ? path.join(relative, entry.name) : entry.name;
      if (wanted.get(rel) !== typeOf(entry)) fs.rmSync(path.join(dataDir, rel), { recursive: true, force: true });
      else if (entry.isDirectory()) walk(rel);
    }
  };
  walk('');
  const files: ImageFile[] = [];
  for (const entry of manifest.files) {
    const target = path.join(dataDir, checkPath(entry));
    if (entry.type === 'dir') fs.mkdirSync(target, { recursive: true, mode: entry.mode & 0o7777 });
    else if (entry.type === 'file') files.push(entry); // symlinks: fixTree makes them
  }
  return files;
}

/** True when a file of a neighbouring image holds exactly `entry` (same size, same chunks). */
function sameFile(entry: ImageFile, other?: ImageFile): boolean {
  if (!other || other.size !== entry.size) return false;
  const mine = entry.chunks ?? new ChunkList();
  const theirs = other.chunks ?? new ChunkList();
  if (mine.length !== theirs.length) return false;
  for (let i = 0; i < mine.length; i++) if (!mine.sameAt(i, theirs)) return false;
  return true;
}

function hashOf(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

function defaultBudget(dir: string): number {
  try {
    const { bavail, bsize } = fs.statfsSync(dir);
    return Math.min(4 * GiB, (bavail * bsize) / 4);
  } catch {
    return 0;
  }
}
