import fs from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { NeonError } from '../core/errors.js';
import { fsyncDir, tempNameFor } from '../core/fs-atomic.js';
import type { Storage } from '../core/storage.js';

/**
 * Fetch WAL object `key` (gzip, see core/wal.ts packWal) from `storage` into `target`, decompressed as it streams
 * and written atomically (temp file, fsync, rename). Streaming rather than unpacking a whole segment in memory:
 * 16 MiB of fresh memory per segment cost more than the download on this machine's VM, and it kept four of
 * them in the daemon at once. gzip's CRC is checked at the end of the stream; a damaged object is a `corrupt`
 * error naming the key, and nothing is left at `target`.
 */
export async function fetchWal(storage: Storage, key: string, target: string): Promise<void> {
  const temp = tempNameFor(target);
  const handle = await fs.open(temp, 'wx', 0o644);
  try {
    try {
      // Written through the handle (not a write stream that would close it): it is fsynced before it is closed.
      await pipeline(await storage.get(key), createGunzip(), async (chunks: AsyncIterable<Buffer>) => {
        for await (const chunk of chunks) {
          for (let at = 0; at < chunk.length; ) at += (await handle.write(chunk, at)).bytesWritten;
        }
      });
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (typeof code === 'string' && code.startsWith('Z_')) {
        throw new NeonError('corrupt', `WAL object ${key} is corrupt (${(error as Error).message})`, { status: 500 });
      }
      throw error;
    }
    await handle.sync();
  } catch (error) {
    await handle.close();
    await fs.rm(temp, { force: true });
    throw error;
  }
  await handle.close();
  await fs.rename(temp, target);
  await fsyncDir(path.dirname(target));
}
