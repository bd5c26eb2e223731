import fs from 'node:fs';
import path from 'node:path';
import { pullPacks, pushPacks } from '../chunkstore/sync.js';
import { chunkSetOf } from '../pageserver/manifest.js';
import type { Pageserver } from '../pageserver/pageserver.js';
import { NeonError, messageOf } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { readObject, type Storage } from '../core/storage.js';

/** `repository.json` in a storage_dest: whose history the storage holds, and how to log in to its computes. */
export interface StoredRepository {
  format: 'neon-repository';
  version: 1;
  systemId: string;
  pgVersion: number;
  createdAt: string;
  /**
   * The main compute's user and database, never its password: a storage_dest must hold no secret in plain text.
   * The database itself keeps the password's SCRAM verifier (pg_authid); a machine that restores from storage
   * alone sets a new password (see daemon/restore.ts). Storages written before this held a `password` here: the
   * next push rewrites the file without it.
   */
  login: { user: string; database: string };
}

const REPOSITORY_KEY = 'repository.json';
const HISTORY_KEY = 'history.json';
/** Which branch the main compute is on: where a machine starting from storage alone resumes. */
const HEAD_KEY = 'head.json';

/** What identifies the repository a push comes from, and where its main compute is. */
export type PushIdentity = Omit<StoredRepository, 'format' | 'version' | 'createdAt'> & { branch: string };

/** Read `repository.json` of a storage, or undefined when the storage holds no repository yet. */
export async function readStoredRepository(storage: Storage): Promise<StoredRepository | undefined> {
  if (!(await storage.head(REPOSITORY_KEY))) return undefined;
  const stored = JSON.parse((await readObject(storage, REPOSITORY_KEY)).toString('utf8')) as StoredRepository;
  if (stored.format !== 'neon-repository' || stored.version !== 1) {
    throw new NeonError('bad_format', `${storage.url}/${REPOSITORY_KEY} has an unknown format version (${stored.version}): upgrade neon`);
  }
  return stored;
}

/**
 * Push what the storage lacks, in an order that never shows a broken state: the chunk packs, then the image
 * manifests that name them, then the history of branches and snapshots. A storage that holds another cluster's
 * history is refused, never overwritten.
 */
export async function pushRepository(
  pageserver: Pageserver,
  storage: Storage,
  identity: PushIdentity,
): Promise<{ packs: number; images: number }> {
  const stored = await readStoredRepository(storage);
  if (stored && stored.systemId !== identity.systemId) {
    throw new NeonError(
      'system_mismatch',
      `storage ${storage.url} holds the history of database system ${stored.systemId}, not ${identity.systemId}: use another storage_dest`,
    );
  }
  if (!stored || 'password' in stored.login) {
    const { systemId, pgVersion, login } = identity;
    const body: StoredRepository = {
      format: 'neon-repository',
      version: 1,
      createdAt: stored?.createdAt ?? new Date().toISOString(),
      systemId,
      pgVersion,
      login: { user: login.user, database: login.database },
    };
    // A legacy file is replaced (it held the password); a new one is only created.
    await storage.put(REPOSITORY_KEY, JSON.stringify(body, null, 2), { ifAbsent: !stored }).catch((error) => {
      if (!(error instanceof NeonError && error.code === 'conflict')) throw error;
    });
  }
  const { uploaded } = await pushPacks(pageserver.store, storage);
  const remote = new Set<string>();
  for await (const object of storage.list('images/')) remote.add(object.key);
  let images = 0;
  for (const branch of pageserver.history.branches()) {
    for (const image of pageserver.images(branch.name)) {
      if (remote.has(image.key)) continue;
      await storage
        .put(image.key, fs.readFileSync(path.join(pageserver.dir, ...image.key.split('/'))), { ifAbsent: true })
        .catch((error) => {
          if (!(error instanceof NeonError && error.code === 'conflict')) throw error;
        });
      images++;
    }
  }
  await storage.put(HISTORY_KEY, fs.readFileSync(path.join(pageserver.dir, 'history.json')));
  await storage.put(HEAD_KEY, JSON.stringify({ branch: identity.branch }));
  return { packs: uploaded.length, images };
}

/**
 * Bring a repository back from storage alone: its history and image manifests, and the chunk packs of the newest
 * image on the line of the branch the main compute was on. Returns that branch.
 */
export async function pullRepository(pageserver: Pageserver, storage: Storage): Promise<{ branch: string; packs: number }> {
  if (!(await storage.head(HISTORY_KEY))) {
    throw new NeonError('no_history', `storage ${storage.url} holds no history.json: it was never pushed completely`);
  }
  fs.writeFileSync(path.join(pageserver.dir, 'history.json'), await readObject(storage, HISTORY_KEY));
  pageserver.history.reload();
  const head = (await storage.head(HEAD_KEY))
    ? (JSON.parse((await readObject(storage, HEAD_KEY)).toString('utf8')) as { branch: string })
    : { branch: 'main' };
  for await (const object of storage.list('images/')) {
    const file = path.join(pageserver.dir, ...object.key.split('/'));
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, await readObject(storage, object.key));
  }
  const image = await pageserver.chooseImage(head.branch, {});
  const { downloaded } = await pullPacks(pageserver.store, storage, chunkSetOf([image]));
  return { branch: head.branch, packs: downloaded.length };
}

/** Pushes to storage_dest in the background whenever something new is stored; retries with backoff. */
export class StorageSync {
  private pending = false;
  private running?: Promise<void>;
  private timer?: NodeJS.Timeout;
  private failures = 0;
  private error: string | null = null;
  private lastSync: string | null = null;

  constructor(
    private readonly pageserver: Pageserver,
    private readonly storage: Storage,
    private readonly identity: () => PushIdentity,
    private readonly log: Logger,
  ) {}

  /** Push soon (several changes close together make one push). */
  schedule(delayMs = 200): void {
    this.pending = true;
    if (!this.timer && !this.running) this.timer = setTimeout(() => void this.run(), delayMs);
  }

  /** Push now and wait for it (used by tests and `neon stop`). */
  async flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
    this.pending = true;
    await this.run();
  }

  status(): { last_sync: string | null; error: string | null } {
    return { last_sync: this.lastSync, error: this.error };
  }

  private async run(): Promise<void> {
    this.timer = undefined;
    if (!this.pending) return;
    this.pending = false;
    this.running = pushRepository(this.pageserver, this.storage, this.identity())
      .then(({ packs, images }) => {
        this.failures = 0;
        this.error = null;
        this.lastSync = new Date().toISOString();
        if (packs || images) this.log.info('pushed %d pack(s) and %d image(s) to %s', packs, images, this.storage.url);
      })
      .catch((error) => {
        this.failures++;
        this.error = messageOf(error);
        this.log.warn('push to %s failed: %s', this.storage.url, this.error);
        this.pending = true;
      })
      .finally(() => {
        this.running = undefined;
        if (this.pending) this.schedule(Math.min(200 * 2 ** this.failures, 30_000));
      });
    await this.running;
  }
}
