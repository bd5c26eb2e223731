import fs from 'node:fs';
import path from 'node:path';
import { fsyncDir, writeFileAtomic } from '../core/fs-atomic.js';
import type { PgUser } from '../postgres/user.js';
import { syncTree } from './clone.js';

// A data directory restored for a compute (copied from an image's cached copy, patched, or written from chunks)
// starts without waiting for its files to reach the disk, as `cp -a` + `pg_ctl start` would: flushing 1 GB first
// costs seconds. Postgres will not flush them itself (its checkpoints flush only what it wrote), so until the
// daemon has, a crash of the machine could leave the directory with pages that never reached the disk, and
// Postgres, trusting its last checkpoint, would not notice. The marker `neon.unsynced` in the directory says so:
// written (and flushed) before the directory is used, holding the kernel's boot id, and removed once every file
// is flushed (in the background, right after the compute starts).
//   same boot → nothing was lost (the page cache holds it all): start, and flush again in the background;
//   another boot → the machine went down first: the directory cannot be trusted, and is made again from the
//                  image and the WAL, which the page store and the safekeepers hold durably.

/** The marker's name, inside the data directory (left out of images and exports). */
export const UNSYNCED = 'neon.unsynced';

const BOOT_ID = '/proc/sys/kernel/random/boot_id';
let cachedBootId: string | null | undefined;

/** This boot of the machine (Linux), or null where the kernel does not say. */
export function bootId(): string | null {
  if (cachedBootId === undefined) {
    try {
      cachedBootId = fs.readFileSync(BOOT_ID, 'utf8').trim() || null;
    } catch {
      cachedBootId = null;
    }
  }
  return cachedBootId;
}

/**
 * Mark `dataDir` (restored, its files possibly still in the page cache only) as not yet on disk, durably. Where
 * there is no boot id to tell a reboot by, it is flushed now instead.
 */
export async function markUnsynced(dataDir: string, owner?: PgUser): Promise<void> {
  const boot = bootId();
  if (!boot) {
    await syncTree(dataDir);
  } else {
    const file = path.join(dataDir, UNSYNCED);
    await writeFileAtomic(file, `${boot}\n`, 0o600);
    // BASE_BACKUP (run by Postgres as its own user) reads every file of the directory.
    if (owner) fs.chownSync(file, owner.uid, owner.gid);
  }
  await fsyncDir(path.dirname(dataDir));
}

/**
 * Whether `dataDir`'s files are known to be on disk: `synced`; `pending` (this boot: flush them); `lost` (restored
 * under an earlier boot and never flushed: the machine went down in between).
 */
export function syncState(dataDir: string): 'synced' | 'pending' | 'lost' {
  let marked: string;
  try {
    marked = fs.readFileSync(path.join(dataDir, UNSYNCED), 'utf8').trim();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'synced';
    throw error;
  }
  // A marker torn by the crash itself (empty) is as good as one from another boot.
  return marked && marked === bootId() ? 'pending' : 'lost';
}

/** Flush every file of `dataDir` (a compute may be running on it), then remove its marker. */
export async function finishSync(dataDir: string): Promise<void> {
  await syncTree(dataDir, { live: true });
  await fs.promises.rm(path.join(dataDir, UNSYNCED), { force: true });
  await fsyncDir(dataDir);
}
