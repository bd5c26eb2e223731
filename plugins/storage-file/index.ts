import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { NeonError } from '../../core/errors.js';
import { fsyncDir, isTempName, tempNameFor } from '../../core/fs-atomic.js';
import { checkPluginOptions, type NeonPlugin } from '../../core/plugin.js';
import { checkKey, type PutOptions, type Storage, type StorageObject } from '../../core/storage.js';

/** Options of {@link storageFile}. */
export interface StorageFileOptions {
  /**
   * fsync every object and its folder before a put returns (default true). Turning it off is only for
   * throw-away repositories: a machine crash can then lose objects that were reported as stored.
   */
  fsync?: boolean;
}

/**
 * Storage in a local folder, for `file:///abs/path` URLs and bare paths. Each object is a file named by its
 * key; a put writes a temp file beside it, fsyncs it, renames it into place and fsyncs the folder.
 */
export default function storageFile(options?: StorageFileOptions): NeonPlugin {
  const { fsync = true } = checkPluginOptions('storage-file', options, ['fsync']);
  return {
    name: 'storage-file',
    resolveStorage: {
      schemes: ['file'],
      async handler(request) {
        const root = fileURLToPath(request.url);
        try {
          await fs.mkdir(root, { recursive: true });
          await fs.access(root, constants.W_OK);
        } catch (error) {
          throw new NeonError('storage_unwritable', `cannot use ${root} as storage: ${(error as Error).message}`);
        }
        return new FileStorage(root, request.url, fsync);
      },
    },
  };
}

/** A {@link Storage} over a folder. */
export class FileStorage implements Storage {
  constructor(
    readonly root: string,
    readonly url: string,
    private readonly fsync = true,
  ) {}

  private pathOf(key: string): string {
    return path.join(this.root, ...checkKey(key).split('/'));
  }

  async put(key: string, body: Buffer | string | Readable, options: PutOptions = {}): Promise<void> {
    const file = this.pathOf(key);
    const dir = path.dirname(file);
    await fs.mkdir(dir, { recursive: true });
    const temp = tempNameFor(file);
    const handle = await fs.open(temp, 'wx', 0o644);
    try {
      if (body instanceof Readable) {
        for await (const chunk of body) await handle.write(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
      } else {
        await handle.writeFile(body);
      }
      if (this.fsync) await handle.sync();
    } catch (error) {
      await handle.close();
      await fs.rm(temp, { force: true });
      throw error;
    }
    await handle.close();
    try {
      if (options.ifAbsent) {
        // link() fails if the name exists, so the check and the creation are one atomic step.
        await fs.link(temp, file);
        await fs.rm(temp);
      } else {
        await fs.rename(temp, file);
      }
    } catch (error) {
      await fs.rm(temp, { force: true });
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new NeonError('conflict', `${key} already exists in ${this.url}: another writer stored it first`, { status: 409 });
      }
      throw error;
    }
    if (this.fsync) await fsyncDir(dir);
  }

  async get(key: string): Promise<Readable> {
    let handle;
    try {
      handle = await fs.open(this.pathOf(key), 'r');
    } catch (error) {
      throw isMissing(error) ? this.notFound(key) : error;
    }
    // A folder opens too (it holds longer keys), but it is not an object.
    if (!(await handle.stat()).isFile()) {
      await handle.close();
      throw this.notFound(key);
    }
    return handle.createReadStream();
  }

  async head(key: string): Promise<StorageObject | undefined> {
    try {
      const stat = await fs.stat(this.pathOf(key));
      return stat.isFile() ? { key, size: stat.size, mtime: stat.mtime } : undefined;
    } catch (error) {
      if (isMissing(error)) return undefined;
      throw error;
    }
  }

  async *list(prefix = ''): AsyncIterable<StorageObject> {
    // Walk only the folder the prefix points into; the rest of the prefix filters names.
    const cut = prefix.lastIndexOf('/');
    const base = cut >= 0 ? prefix.slice(0, cut) : '';
    if (base) checkKey(base);
    const found: StorageObject[] = [];
    await this.walk(base, prefix, found);
    found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    yield* found;
  }

  private async walk(dirKey: string, prefix: string, out: StorageObject[]): Promise<void> {
    let entries;
    try {
      entries = await fs.readdir(path.join(this.root, ...dirKey.split('/').filter(Boolean)), { withFileTypes: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT' || (error as NodeJS.ErrnoException).code === 'ENOTDIR') return;
      throw error;
    }
    for (const entry of entries) {
      if (isTempName(entry.name)) continue;
      const key = dirKey ? `${dirKey}/${entry.name}` : entry.name;
      if (entry.isDirectory()) {
        if (key.startsWith(prefix) || prefix.startsWith(key + '/')) await this.walk(key, prefix, out);
      } else if (entry.isFile() && key.startsWith(prefix)) {
        const stat = await fs.stat(path.join(this.root, ...key.split('/')));
        out.push({ key, size: stat.size, mtime: stat.mtime });
      }
    }
  }

  async delete(key: string): Promise<void> {
    const file = this.pathOf(key);
    try {
      await fs.rm(file, { force: true });
    } catch (error) {
      // A path through an object, or a folder of longer keys: there is no object by this name.
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOTDIR' || code === 'ERR_FS_EISDIR') return;
      throw error;
    }
    if (this.fsync) await fsyncDir(path.dirname(file)).catch(() => undefined);
  }

  private notFound(key: string): NeonError {
    return new NeonError('not_found', `${key} not found in ${this.url}`, { status: 404 });
  }
}

/** True for errors that mean no object has this name: nothing there, or a path through an object (`obj/x`). */
function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}
