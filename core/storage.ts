import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Readable } from 'node:stream';
import { NeonError } from './errors.js';

/** One object in a storage: its key (a `/`-separated path) and size in bytes. */
export interface StorageObject {
  key: string;
  size: number;
  mtime?: Date;
}

/** Options of {@link Storage.put}. */
export interface PutOptions {
  /**
   * Create the object only if no object has this key (a conditional write). When one exists the put fails with
   * a `NeonError` whose code is `conflict`, and the existing object is left as it was.
   */
  ifAbsent?: boolean;
}

/**
 * The interface every storage backend implements (a folder, S3, …). Keys are relative, `/`-separated, never
 * contain `..` or empty segments. A put is atomic: readers see the old object or the new one, never a part.
 */
export interface Storage {
  /** Canonical URL of the storage root, e.g. `file:///var/neon` or `s3://bucket/prefix`. */
  readonly url: string;
  /** Store `body` under `key`, replacing what was there unless `ifAbsent` is set. */
  put(key: string, body: Buffer | string | Readable, options?: PutOptions): Promise<void>;
  /** Read an object as a stream. A missing key fails with a `NeonError` whose code is `not_found`. */
  get(key: string): Promise<Readable>;
  /** Size and time of an object, or `undefined` when there is none. */
  head(key: string): Promise<StorageObject | undefined>;
  /** Every object whose key starts with `prefix`, in key order. */
  list(prefix?: string): AsyncIterable<StorageObject>;
  /** Remove an object; removing a missing key is not an error. */
  delete(key: string): Promise<void>;
}

/** What the storage bail hook is asked to open. */
export interface StorageRequest {
  /** URL scheme without the colon: `file`, `s3`, … */
  scheme: string;
  /** The normalised URL (`file:///abs/path` for bare paths). */
  url: string;
  /** What the user wrote, for messages. */
  raw: string;
}

/** Plugins that ship with neon for a scheme, named in the error when none is configured. */
export const KNOWN_STORAGE_PLUGINS: Record<string, string> = {
  file: "storageFile() from 'neon-local/plugins/storage-file'",
  s3: "storageS3() from 'neon-local/plugins/storage-s3'",
};

// WAL-G names its destinations with environment variables (WALG_FILE_PREFIX=/x, WALG_S3_PREFIX=s3://b/p);
// accept those spellings so that a WAL-G user can paste what they have.
const WALG_PREFIX = /^(?:WALG_)?(FILE|S3|GS|AZ|SWIFT|SSH)_PREFIX=(.*)$/;

/**
 * Turn what a user typed as `--storage_dest` into a {@link StorageRequest}: `file:///abs`, `s3://bucket/p`, a
 * bare path (relative to `cwd`), or a WAL-G style `FILE_PREFIX=/abs` / `S3_PREFIX=s3://…`.
 */
export function parseStorageUrl(raw: string, cwd = process.cwd()): StorageRequest {
  const input = raw.trim();
  if (!input) throw new NeonError('bad_storage_url', 'storage URL is empty: pass a path, file:///path or s3://bucket/prefix');
  const walg = WALG_PREFIX.exec(input);
  if (walg) {
    const [, kind, value] = walg;
    if (kind === 'FILE') return { ...parseStorageUrl(value, cwd), raw };
    const scheme = kind.toLowerCase();
    const url = value.includes('://') ? value : `${scheme}://${value}`;
    return { ...parseStorageUrl(url, cwd), raw };
  }
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//.exec(input)?.[1]?.toLowerCase();
  if (!scheme) {
    return { scheme: 'file', url: pathToFileURL(path.resolve(cwd, input)).href, raw };
  }
  if (scheme === 'file') {
    let parsed: URL;
    try {
      parsed = new URL(input);
    } catch {
      throw new NeonError('bad_storage_url', `"${raw}" is not a valid file URL: use file:///absolute/path`);
    }
    if (parsed.host) throw new NeonError('bad_storage_url', `"${raw}" names a host; use file:///absolute/path (three slashes)`);
    return { scheme, url: parsed.href.replace(/\/+$/, ''), raw };
  }
  return { scheme, url: input.replace(/\/+$/, ''), raw };
}

/** Check that a storage key is relative and plain, so that no backend can be led outside its root. */
export function checkKey(key: string): string {
  if (!key || key.startsWith('/') || key.split('/').some((part) => part === '' || part === '.' || part === '..')) {
    throw new NeonError('bad_key', `invalid storage key "${key}": keys are relative paths without empty, "." or ".." parts`);
  }
  if (key.includes('\0')) throw new NeonError('bad_key', 'invalid storage key: contains a NUL byte');
  return key;
}

/** Read a whole object into memory (for small objects: manifests, metadata). */
export async function readObject(storage: Storage, key: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of await storage.get(key)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
