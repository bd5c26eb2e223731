import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { PgUser } from '../postgres/user.js';
import type { ImageManifest } from './manifest.js';
import { checkPath, createTree } from './restore.js';
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
}

const DONE = '.complete';

/**
 * Plain copies of the newest image of each branch, beside the chunk store. Restoring from chunks reads, inflates
 * and checks every 8 KiB page; restoring from this copy is a file clone (copy-on-write where the file system
 * offers it, an in-kernel copy otherwise), as fast as `cp -a`. It costs the disk space of one image per branch,
 * and is only a cache: the chunk store stays the truth, and a missing or incomplete copy is simply not used.
 */
export class ImageCache {
  constructor(readonly dir: string) {}

  private folderOf(key: string): string {
    return path.join(this.dir, key.replace(/\//g, '_').replace(/\.json\.gz$/, ''));
  }

  /** True when a complete copy of the image `key` is here. */
  has(key: string): boolean {
    return fs.existsSync(path.join(this.folderOf(key), DONE));
  }

  /** Start a copy of an image being taken; commit it under the image's key once the image is stored. */
  writer(): ImageMirror & { commit(key: string): void; abandon(): void } {
    fs.mkdirSync(this.dir, { recursive: true });
    const root = fs.mkdtempSync(path.join(this.dir, 'incoming-'));
    let fd: number | undefined;
    return {
      addDir: (dir) => fs.mkdirSync(path.join(root, dir), { recursive: true }),
      beginFile: (file) => {
        fs.mkdirSync(path.dirname(path.join(root, file)), { recursive: true });
        fd = fs.openSync(path.join(root, file), 'w');
      },
      write: (data) => {
        for (let done = 0; done < data.length;) done += fs.writeSync(fd!, data, done);
      },
      endFile: () => {
        if (fd !== undefined) fs.closeSync(fd);
        fd = undefined;
      },
      commit: (key) => {
        const final = this.folderOf(key);
        fs.rmSync(final, { recursive: true, force: true });
        fs.writeFileSync(path.join(root, DONE), '');
        fs.renameSync(root, final);
        // One copy per branch: the older ones of the same branch go.
        const prefix = path.basename(final).replace(/_[0-9a-f]{16}$/, '_');
        for (const other of fs.readdirSync(this.dir)) {
          if (other.startsWith(prefix) && path.join(this.dir, other) !== final)
            fs.rmSync(path.join(this.dir, other), { recursive: true, force: true });
        }
      },
      abandon: () => {
        if (fd !== undefined) fs.closeSync(fd);
        fs.rmSync(root, { recursive: true, force: true });
      },
    };
  }

  /** Drop the copy of an image (it was removed by gc). */
  remove(key: string): void {
    fs.rmSync(this.folderOf(key), { recursive: true, force: true });
  }

  /**
   * Take the copy of image `key` out of the cache to advance it in place into a newer image (an incremental:
   * Postgres replays WAL in it). It stops being the copy of `key` at once (computes made meanwhile restore from
   * chunks); it moves to `root` (a folder that must not exist, on the same file system: Postgres must be able to
   * reach it); commit() files it under the new image's key, abandon() removes it. Undefined when there is no copy.
   */
  adopt(key: string, root: string): { root: string; commit(key: string): void; abandon(): void } | undefined {
    if (!this.has(key)) return undefined;
    fs.renameSync(this.folderOf(key), root);
    fs.rmSync(path.join(root, DONE), { force: true });
    return {
      root,
      commit: (next) => {
        const final = this.folderOf(next);
        fs.rmSync(final, { recursive: true, force: true });
        fs.writeFileSync(path.join(root, DONE), '');
        fs.renameSync(root, final);
      },
      abandon: () => fs.rmSync(root, { recursive: true, force: true }),
    };
  }

  /** Clone the copy of `manifest` (stored as `key`) into `dataDir`, with the manifest's modes; files in parallel. */
  async restore(key: string, manifest: ImageManifest, dataDir: string, owner?: PgUser, concurrency = 8): Promise<number> {
    const source = this.folderOf(key);
    const files = createTree(manifest, dataDir, owner);
    let bytes = 0;
    const next = files[Symbol.iterator]();
    const worker = async () => {
      for (let item = next.next(); !item.done; item = next.next()) {
        const entry = item.value;
        const target = path.join(dataDir, checkPath(entry));
        await fs.promises.copyFile(path.join(source, entry.path), target, fs.constants.COPYFILE_FICLONE);
        await fs.promises.chmod(target, entry.mode & 0o7777);
        if (owner) await fs.promises.lchown(target, owner.uid, owner.gid);
        bytes += entry.size;
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    return bytes;
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
        const chunks = entry.chunks ?? [];
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
              : hashOf(page) === chunks[index]
                ? undefined
                : `differs from the image (chunk ${chunks[index]?.slice(0, 12)})`;
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

function hashOf(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
