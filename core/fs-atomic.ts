import fs from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';

// node:crypto is loaded on the first temp name, not with this module: every CLI call imports it, and loading
// crypto costs ~20 ms of a command that may write nothing.
let randomBytes: typeof import('node:crypto').randomBytes | undefined;
const random = (size: number): Buffer =>
  (randomBytes ??= (createRequire(import.meta.url)('node:crypto') as typeof import('node:crypto')).randomBytes)(size);

/** fsync a directory, so that a rename or a new entry in it survives a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** The name of a temporary file beside `file`; such names are never listed as objects or state. */
export function tempNameFor(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.tmp-${random(6).toString('hex')}`);
}

/** True for names made by {@link tempNameFor}. */
export function isTempName(name: string): boolean {
  return name.startsWith('.') && /\.tmp-[0-9a-f]{12}$/.test(name);
}

/**
 * Write a small file atomically and durably: temp file, fsync, rename over the target, fsync the directory.
 * A crash at any point leaves the old content or the new, never a mix.
 */
export async function writeFileAtomic(file: string, data: string | Buffer, mode = 0o644): Promise<void> {
  const temp = tempNameFor(file);
  const handle = await fs.open(temp, 'wx', mode);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await fs.rename(temp, file);
  } catch (error) {
    await fs.rm(temp, { force: true });
    throw error;
  }
  await fsyncDir(path.dirname(file));
}

/** Read and parse a JSON file; undefined when it does not exist. */
export async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as T;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}
