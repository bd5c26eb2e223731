import { createHash } from 'node:crypto';
import fs, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { NeonError } from '../core/errors.js';
import { fsyncDir, isTempName, writeFileAtomic } from '../core/fs-atomic.js';
import { PACK_HEADER, checkPackHeader, decodeIndex, encodeIndex, indexLength, scanPack, type PackEntries } from './format.js';

const PACK_NAME = /^([0-9a-f]{64})\.(pack|idx)$/;

/** Path of pack `id` under the store folder `dir`. */
export function packPath(dir: string, id: string): string {
  return path.join(dir, 'packs', `${id}.pack`);
}

/** Path of the index of pack `id` under the store folder `dir`. */
export function indexPath(dir: string, id: string): string {
  return path.join(dir, 'packs', `${id}.idx`);
}

/** True for errors that mean "no such file". */
export function isMissing(error: unknown): boolean {
  return (error as NodeJS.ErrnoException)?.code === 'ENOENT';
}

/**
 * Write pack `id` and then its index, each durably (temp file, fsync, rename, folder fsync): an index on disk
 * always means its pack is complete.
 */
export async function writePackFiles(dir: string, id: string, bytes: Buffer, entries: PackEntries): Promise<void> {
  await writeFileAtomic(packPath(dir, id), bytes);
  await writeFileAtomic(indexPath(dir, id), encodeIndex(entries, id, bytes.length));
}

/**
 * Remove pack `id`: the index first, so that a crash in between leaves a pack without an index (rebuilt at open:
 * garbage for the next gc), never an index without its pack.
 */
export async function removePackFiles(dir: string, id: string): Promise<void> {
  await fs.rm(indexPath(dir, id), { force: true });
  await fs.rm(packPath(dir, id), { force: true });
  await fsyncDir(path.join(dir, 'packs'));
}

/** A pack found at open. */
export interface LoadedPack {
  id: string;
  entries: PackEntries;
  length: number;
  /** True when its index was missing or damaged and was rebuilt from the pack. */
  rebuilt: boolean;
}

/** The packs in `<dir>/packs` (ids, sorted) and which of them have an index file. Temp files are ignored. */
export async function listPacks(dir: string): Promise<{ packs: string[]; indexes: Set<string> }> {
  const packs = new Set<string>();
  const indexes = new Set<string>();
  for (const name of await fs.readdir(path.join(dir, 'packs'))) {
    if (isTempName(name)) continue;
    const match = PACK_NAME.exec(name);
    if (match) (match[2] === 'pack' ? packs : indexes).add(match[1]);
  }
  // A deterministic order, so that which copy of a duplicated chunk wins does not depend on I/O timing.
  return { packs: [...packs].sort(), indexes };
}

/**
 * Load the index of pack `id` (`hasIndex`: its .idx exists). A missing or damaged index (or one that disagrees
 * with its pack's length) is rebuilt by scanning the pack, which must then hash to its name, and written back.
 * Throws `corrupt` when a pack that needs a rebuild is itself damaged, `bad_format` for another format version.
 */
export async function loadPack(dir: string, id: string, hasIndex: boolean): Promise<LoadedPack> {
  const file = packPath(dir, id);
  const stat = await fs.stat(file);
  if (hasIndex) {
    try {
      const index = decodeIndex(await fs.readFile(indexPath(dir, id)), indexPath(dir, id), id);
      if (index.packLength === stat.size) return { id, entries: index.entries, length: stat.size, rebuilt: false };
    } catch (error) {
      if (!(error instanceof NeonError) || error.code !== 'corrupt') throw error;
    }
  }
  let entries: PackEntries;
  try {
    entries = scanPack(await fs.readFile(file), file, id);
  } catch (error) {
    if (error instanceof NeonError && error.code === 'corrupt') {
      throw new NeonError(
        'corrupt',
        `${error.message}; its index is missing or damaged, so its chunks cannot be trusted: fetch it again from storage or move it away`,
        { status: 500, cause: error },
      );
    }
    throw error;
  }
  await writeFileAtomic(indexPath(dir, id), encodeIndex(entries, id, stat.size));
  return { id, entries, length: stat.size, rebuilt: true };
}

/**
 * The checksum (last 32 bytes) of pack `id`'s index when that index is intact, describes this pack and its
 * length is `packLength`; undefined otherwise (missing, damaged, or of another pack). Reads the index whole
 * and hashes it, but decodes no entry.
 */
export async function indexTrailer(dir: string, id: string, packLength: number): Promise<Buffer | undefined> {
  let buf: Buffer;
  try {
    buf = await fs.readFile(indexPath(dir, id));
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw error;
  }
  if (buf.length < 88 || buf.length !== indexLength(buf.readUInt32BE(12))) return undefined;
  if (buf.toString('hex', 24, 56) !== id || Number(buf.readBigUInt64BE(16)) !== packLength) return undefined;
  const trailer = buf.subarray(buf.length - 32);
  if (!createHash('sha256').update(buf.subarray(0, buf.length - 32)).digest().equals(trailer)) return undefined;
  return Buffer.from(trailer);
}

/** Remove temp files older than `ageMs` in `folder` (writes that a crash interrupted). */
export async function removeStaleTemps(folder: string, ageMs: number): Promise<void> {
  const names = await fs.readdir(folder).catch((error) => (isMissing(error) ? [] : Promise.reject(error)));
  for (const name of names) {
    if (!isTempName(name)) continue;
    const file = path.join(folder, name);
    const stat = await fs.stat(file).catch(() => undefined);
    if (stat && Date.now() - stat.mtimeMs > ageMs) await fs.rm(file, { force: true });
  }
}

interface Cached {
  handle: Promise<FileHandle>;
  users: number;
}

/**
 * Open pack files, kept for reuse (least recently used closed first). Reads are positional, so any number of
 * them can share one descriptor; a descriptor is closed only when no read uses it.
 */
export class HandleCache {
  private readonly open = new Map<string, Cached>();

  constructor(private readonly limit = 32) {}

  /** Run `fn` with an open handle on pack `file` (its header checked on first open). */
  async use<T>(file: string, fn: (handle: FileHandle) => Promise<T>): Promise<T> {
    let entry = this.open.get(file);
    if (entry) {
      this.open.delete(file);
      this.open.set(file, entry);
    } else {
      const opening = openPack(file);
      const created: Cached = { handle: opening, users: 0 };
      entry = created;
      this.open.set(file, created);
      opening.catch(() => this.open.get(file) === created && this.open.delete(file));
    }
    entry.users++;
    this.evict();
    try {
      return await fn(await entry.handle);
    } finally {
      entry.users--;
      // Evicted or forgotten while in use: close now that nobody reads through it.
      if (entry.users === 0 && this.open.get(file) !== entry) close(entry);
    }
  }

  /** Close the handle of `file` (now, or when its last read ends): the file was removed or replaced. */
  forget(file: string): void {
    const entry = this.open.get(file);
    if (!entry) return;
    this.open.delete(file);
    if (entry.users === 0) close(entry);
  }

  /** Close every handle (busy ones when their reads end). */
  closeAll(): void {
    for (const file of [...this.open.keys()]) this.forget(file);
  }

  private evict(): void {
    for (const [file, entry] of this.open) {
      if (this.open.size <= this.limit) break;
      if (entry.users === 0) this.forget(file);
    }
  }
}

async function openPack(file: string): Promise<FileHandle> {
  const handle = await fs.open(file, 'r');
  try {
    const head = Buffer.alloc(PACK_HEADER);
    const { bytesRead } = await handle.read(head, 0, PACK_HEADER, 0);
    checkPackHeader(head.subarray(0, bytesRead), file);
    return handle;
  } catch (error) {
    await handle.close();
    throw error;
  }
}

function close(entry: Cached): void {
  entry.handle.then((handle) => handle.close()).catch(() => {});
}
