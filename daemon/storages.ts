import path from 'node:path';
import { NeonError } from '../core/errors.js';
import { readJson, writeFileAtomic } from '../core/fs-atomic.js';
import type { NeonHooks } from '../core/hooks.js';
import { resolveStorage } from '../core/resolve.js';
import { parseStorageUrl, type Storage, type StorageRequest } from '../core/storage.js';
import type { WalHolder } from '../wal/copies.js';

/** The seed's storage types: a folder (`native`) or an S3 bucket and prefix. */
export type StorageType = 'native' | 's3';

/** An attached storage: another repository's history (or an empty place to push to), known by a name. */
export interface AttachedStorage {
  name: string;
  type: StorageType;
  /** Normalised URL; never holds credentials (those come from the environment or plugin options). */
  url: string;
  attachedAt: string;
}

/** A local root branch made by pulling a snapshot: where it came from. */
export interface PulledBranch {
  /** The storage's name when it was pulled from an attached one, else null. */
  storage: string | null;
  url: string;
  snapshot: string;
  lsn: string;
  pulledAt: string;
}

interface StoragesFile {
  version: 1;
  storages: Record<string, AttachedStorage>;
  pulled: Record<string, PulledBranch>;
}

const queues = new Map<string, Promise<unknown>>();

/** The name under which the repository's own storage_dest is listed. */
export const DEFAULT_STORAGE = 'default';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const TYPES: Record<string, StorageType> = { native: 'native', s3: 's3' };

/** The type of storage a URL names (`file` → native). */
export function typeOfUrl(url: string): string {
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]?.toLowerCase() ?? 'file';
  return scheme === 'file' ? 'native' : scheme;
}

/**
 * Parse a storage URL a user typed, refusing credentials in it: they would end up in state files, logs and
 * answers. The message does not repeat the URL, since it holds a secret.
 */
export function parseRemoteUrl(raw: string, cwd?: string): StorageRequest {
  const request = parseStorageUrl(raw, cwd);
  if (request.scheme !== 'file') {
    let parsed: URL | undefined;
    try {
      parsed = new URL(request.url);
    } catch {
      parsed = undefined;
    }
    if (parsed && (parsed.username || parsed.password)) {
      throw new NeonError(
        'credentials_in_url',
        `the ${request.scheme}:// URL holds credentials (user:password@): remove them and set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment (or the plugin's options) instead`,
      );
    }
  }
  return request;
}

/** The WAL pulled with snapshots, as the WAL store reads it: `<repo>/pulled/wal/<branch>/<segment>`. */
export function pulledWalHolder(repoDir: string): WalHolder {
  return { name: 'pulled', dir: path.join(repoDir, 'pulled'), statusOf: () => ({}) };
}

/**
 * The attached storages of a repository (`storages.json`, written atomically), and the branches pulled from
 * storages. The repository's storage_dest is listed as `default`.
 */
export class StorageRegistry {
  private readonly file: string;

  constructor(
    readonly repoDir: string,
    private readonly hooks: NeonHooks,
    /** The repository's storage_dest, opened, when it has one. */
    private readonly storageDest?: Storage,
  ) {
    this.file = path.join(repoDir, 'storages.json');
  }

  private async read(): Promise<StoragesFile> {
    return (await readJson<StoragesFile>(this.file)) ?? { version: 1, storages: {}, pulled: {} };
  }

  /** Change the file, one change at a time. */
  private update<T>(change: (data: StoragesFile) => T): Promise<T> {
    // Per file, not per instance: the daemon's routes and its computes each hold a registry of the same file.
    const run = (queues.get(this.file) ?? Promise.resolve()).then(async () => {
      const data = await this.read();
      const result = change(data);
      await writeFileAtomic(this.file, JSON.stringify(data, null, 2) + '\n');
      return result;
    });
    queues.set(
      this.file,
      run.catch(() => undefined),
    );
    return run;
  }

  /** Every storage: `default` (storage_dest) first, then the attached ones by name. */
  async list(): Promise<(AttachedStorage & { default: boolean })[]> {
    const { storages } = await this.read();
    const attached = Object.values(storages)
      .sort((a, b) => (a.name < b.name ? -1 : 1))
      .map((s) => ({ ...s, default: false }));
    if (!this.storageDest) return attached;
    const url = this.storageDest.url;
    return [{ name: DEFAULT_STORAGE, type: typeOfUrl(url) as StorageType, url, attachedAt: '', default: true }, ...attached];
  }

  /** The storage called `name`, or a 404 naming the known ones. */
  async get(name: string): Promise<AttachedStorage & { default: boolean }> {
    const all = await this.list();
    const found = all.find((s) => s.name === name);
    if (!found) {
      const known = all.map((s) => s.name).join(', ') || 'none';
      throw new NeonError('storage_not_found', `no storage named "${name}" (attached: ${known}); see neon storage attach --help`, {
        status: 404,
      });
    }
    return found;
  }

  /**
   * Check an attach request (name, type, path) and open the storage it names; nothing is saved. A URL that
   * holds credentials, a type that does not match the path, or a taken name is refused.
   */
  async check(body: Record<string, unknown>, cwd?: string): Promise<{ entry: AttachedStorage; storage: Storage }> {
    const { name, type, path: where } = body;
    if (typeof name !== 'string' || !NAME.test(name) || name.includes('..')) {
      throw new NeonError(
        'bad_storage_name',
        `invalid storage name ${JSON.stringify(name ?? null)}: use 1-63 letters, digits, ".", "_" or "-"`,
      );
    }
    if (name === DEFAULT_STORAGE)
      throw new NeonError('storage_exists', `"${DEFAULT_STORAGE}" is the repository's own storage_dest`, { status: 409 });
    if (typeof type !== 'string' || !TYPES[type]) {
      throw new NeonError('bad_storage_type', `--type must be native (a folder) or s3 (an s3:// URL), not ${JSON.stringify(type ?? null)}`);
    }
    if (typeof where !== 'string' || !where.trim()) {
      throw new NeonError('bad_request', '--path is needed: a folder for --type native, s3://bucket/prefix for --type s3');
    }
    const request = parseRemoteUrl(where, cwd);
    const actual = typeOfUrl(request.url);
    if (actual !== type) {
      const want = type === 's3' ? 'an s3://bucket/prefix URL' : 'a folder (a path or file:///path)';
      throw new NeonError('wrong_storage_type', `--type ${type} needs ${want}, but --path names a ${actual} storage`);
    }
    if ((await this.read()).storages[name]) {
      throw new NeonError('storage_exists', `a storage named "${name}" is already attached (neon storage detach -n ${name} first)`, {
        status: 409,
      });
    }
    const storage = await resolveStorage(this.hooks, request);
    return { entry: { name, type: TYPES[type], url: storage.url, attachedAt: new Date().toISOString() }, storage };
  }

  /** Save a checked storage under its name. */
  async attach(entry: AttachedStorage): Promise<AttachedStorage> {
    return this.update((data) => {
      if (data.storages[entry.name])
        throw new NeonError('storage_exists', `a storage named "${entry.name}" is already attached`, { status: 409 });
      data.storages[entry.name] = entry;
      return entry;
    });
  }

  /** Forget an attached storage; refused (409) while `users` names computes that use it. Nothing is deleted there. */
  async detach(name: string, users: string[]): Promise<void> {
    const entry = await this.get(name);
    if (entry.default)
      throw new NeonError('storage_default', `"${name}" is the repository's storage_dest and cannot be detached`, { status: 409 });
    if (users.length) {
      throw new NeonError(
        'storage_in_use',
        `storage ${name} is used by compute(s) ${users.join(', ')}: destroy them first (neon pg destroy -n NAME)`,
        {
          status: 409,
        },
      );
    }
    await this.update((data) => void delete data.storages[name]);
  }

  /**
   * Open a storage by name, or by URL / path when `target` is not a known name (push and pull accept both).
   * Returns the storage and the name it is attached under (null for a URL).
   */
  async open(target: string, cwd?: string): Promise<{ storage: Storage; name: string | null }> {
    if (target === DEFAULT_STORAGE && this.storageDest) return { storage: this.storageDest, name: DEFAULT_STORAGE };
    const { storages } = await this.read();
    const entry = storages[target];
    if (entry) return { storage: await resolveStorage(this.hooks, entry.url), name: entry.name };
    if (!target.includes('/') && !target.includes('=')) await this.get(target); // a name nobody attached: 404
    return { storage: await resolveStorage(this.hooks, parseRemoteUrl(target, cwd)), name: null };
  }

  /** The branches pulled from storages, by local branch name. */
  async pulled(): Promise<Record<string, PulledBranch>> {
    return (await this.read()).pulled;
  }

  /** Record that local branch `branch` was pulled (before the branch is added to the history). */
  async recordPulled(branch: string, info: PulledBranch): Promise<void> {
    await this.update((data) => void (data.pulled[branch] = info));
  }

  /** Forget that local branch `branch` was pulled (it was deleted). */
  async forgetPulled(branch: string): Promise<void> {
    await this.update((data) => void delete data.pulled[branch]);
  }
}
