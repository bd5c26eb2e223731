import type { Readable } from 'node:stream';
import { NeonError } from '../core/errors.js';
import type { PutOptions, Storage, StorageObject } from '../core/storage.js';

/*
 * The storage as one generation of writers sees it. Objects that two writers could both write (WAL, image
 * manifests, the history and head records) are stored as `<key>~g<generation>`; generation 1 keeps the plain key,
 * so storages written before generations existed read the same. A reader takes, for each key, the version of
 * the newest generation that is valid for it: its own generation's, or an older generation's that the next
 * generation accepted when it took over (keys up to the greatest one that generation saw in the same folder).
 * What a stale writer wrote after it was taken over is therefore never current, even where the store ignores
 * conditional writes. Content-addressed objects (chunk packs) and the claims themselves pass through unchanged.
 */

/** Who holds a claim. */
export interface ClaimHolder {
  /** Random id of the repository (kept in `<repo>/claim.json`). */
  id: string;
  host: string;
  repository: string;
}

/** `claims/<generation>.json`. */
export interface ClaimRecord {
  generation: number;
  holder: ClaimHolder;
  since: string;
  /** Per key folder, the greatest key of older generations this generation took over (see FencedStorage). */
  accepts: Record<string, string>;
}

const SUFFIX = /^(.*)~g(\d+)$/;
const ROOT_KEYS = ['history.json', 'head.json'];
const FOLDERS = ['wal/', 'images/'];

/** True for keys that carry a generation. */
export function isGenerational(key: string): boolean {
  return FOLDERS.some((folder) => key.startsWith(folder)) || ROOT_KEYS.includes(key);
}

/** The stored key of `key` written by `generation`. */
export function physicalKey(key: string, generation: number): string {
  return generation === 1 || !isGenerational(key) ? key : `${key}~g${generation}`;
}

/** The key and generation a stored key holds. */
export function parseKey(stored: string): { key: string; generation: number } {
  const match = SUFFIX.exec(stored);
  if (match && isGenerational(match[1])) return { key: match[1], generation: Number(match[2]) };
  return { key: stored, generation: 1 };
}

const folderOf = (key: string) => key.slice(0, key.lastIndexOf('/') + 1);

/** True when a reader at `current` may read the version of `key` that `generation` wrote. */
function accepted(key: string, generation: number, current: number, claims: ClaimRecord[]): boolean {
  if (generation > current) return false;
  if (generation === current) return true;
  const next = claims.find((claim) => claim.generation > generation);
  if (!next || next.generation > current) return true;
  const limit = next.accepts[folderOf(key)];
  return limit !== undefined && key <= limit;
}

/** A {@link Storage} that reads and writes as generation `generation` (see the comment at the top). */
export class FencedStorage implements Storage {
  constructor(
    readonly raw: Storage,
    readonly generation: number,
    private readonly claims: ClaimRecord[],
    /** Throws when this generation may no longer write (its claim was taken over). */
    private readonly ensure: () => Promise<void> = async () => undefined,
  ) {}

  get url(): string {
    return this.raw.url;
  }

  /** The stored key to read for `key`, or undefined when no valid version exists. */
  async resolve(key: string): Promise<string | undefined> {
    if (!isGenerational(key)) return (await this.raw.head(key)) ? key : undefined;
    const versions = (await this.versions(key)).filter((v) => accepted(key, v.generation, this.generation, this.claims));
    return versions.sort((a, b) => b.generation - a.generation)[0]?.stored;
  }

  private async versions(key: string): Promise<{ stored: string; generation: number }[]> {
    const found: { stored: string; generation: number }[] = [];
    for await (const object of this.raw.list(key)) {
      const parsed = parseKey(object.key);
      if (parsed.key === key) found.push({ stored: object.key, generation: parsed.generation });
    }
    return found;
  }

  async put(key: string, body: Buffer | string | Readable, options?: PutOptions): Promise<void> {
    await this.ensure();
    if (!isGenerational(key)) return this.raw.put(key, body, options);
    if (options?.ifAbsent && (await this.resolve(key))) {
      throw new NeonError('conflict', `${key} already exists in ${this.url}`, { status: 409 });
    }
    return this.raw.put(physicalKey(key, this.generation), body, options);
  }

  async get(key: string): Promise<Readable> {
    const stored = await this.resolve(key);
    if (!stored) throw new NeonError('not_found', `${key} is not in ${this.url}`, { status: 404 });
    return this.raw.get(stored);
  }

  async head(key: string): Promise<StorageObject | undefined> {
    const stored = await this.resolve(key);
    const object = stored ? await this.raw.head(stored) : undefined;
    return object && { ...object, key };
  }

  async *list(prefix = ''): AsyncIterable<StorageObject> {
    const mixed = prefix === '' || [...FOLDERS, ...ROOT_KEYS].some((k) => k.startsWith(prefix) || prefix.startsWith(k));
    if (!mixed) {
      yield* this.raw.list(prefix);
      return;
    }
    // Versions of one key need not be next to each other in key order (`a` < `a.b` < `a~g2`): gather, then sort.
    const best = new Map<string, { object: StorageObject; generation: number }>();
    for await (const object of this.raw.list(prefix)) {
      const { key, generation } = parseKey(object.key);
      if (!accepted(key, generation, this.generation, this.claims)) continue;
      const seen = best.get(key);
      if (!seen || generation > seen.generation) best.set(key, { object: { ...object, key }, generation });
    }
    const keys = [...best.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const key of keys) yield best.get(key)!.object;
  }

  async delete(key: string): Promise<void> {
    await this.ensure();
    if (!isGenerational(key)) return this.raw.delete(key);
    for (const version of await this.versions(key)) await this.raw.delete(version.stored);
  }
}

/**
 * What a new generation takes over from `generation`: per folder, the greatest key valid at that generation. Older
 * generations' objects beyond it (written by a writer that did not yet know it was taken over) are never read.
 */
export async function acceptsOf(raw: Storage, generation: number, claims: ClaimRecord[]): Promise<Record<string, string>> {
  const view = new FencedStorage(raw, generation, claims);
  const accepts: Record<string, string> = {};
  for (const prefix of [...FOLDERS, ...ROOT_KEYS]) {
    for await (const object of view.list(prefix)) {
      const folder = folderOf(object.key);
      if (!(folder in accepts) || object.key > accepts[folder]) accepts[folder] = object.key;
    }
  }
  return accepts;
}

/** The storage as the current generation sees it, for a reader that holds no claim. */
export async function currentView(raw: Storage, claims: ClaimRecord[]): Promise<FencedStorage> {
  return new FencedStorage(raw, claims.at(-1)?.generation ?? 1, claims);
}
