import fs from 'node:fs';
import path from 'node:path';
import { ChunkStore } from '../chunkstore/index.js';
import { NeonError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fs-atomic.js';
import type { NeonHooks } from '../core/hooks.js';
import type { Logger } from '../core/log.js';
import type { PgUser } from '../postgres/user.js';
import type { WalStore } from '../wal/store.js';
import { formatLsn, type Lsn, parseLsn } from '../core/wal.js';
import { History, type Branch } from './history.js';
import { decodeManifest, encodeManifest, imageKey, lsnOfImageKey, type ImageManifest } from './manifest.js';
import { recoverySettings, stageWal, type RecoveryTarget } from './recovery.js';
import { markUnsynced } from './unsynced.js';
import { restoreImage } from './restore.js';
import { ImageCache, type ImageMirror } from './image-cache.js';
import type { NewImage } from './take-image.js';
import { collectWhenIdle } from '../lib/worker.js';
import { takeIncrementalImage, type IncrementalRequest } from './incremental.js';

/** What the pageserver needs from its host (the daemon, or `neon init`). */
export interface PageserverDeps {
  repoDir: string;
  log: Logger;
  owner?: PgUser;
  /** WAL of every branch; absent in `neon init`, which only stores the first image. */
  wal?: WalStore;
  hooks?: NeonHooks;
}

/** An image as listed: where it is, and the LSN from which it is consistent. */
export interface ImageEntry {
  key: string;
  branch: string;
  endLsn: Lsn;
  createdAt: string;
}

/** A data directory made ready to start at a point of history: settings for its first start. */
export interface Prepared {
  image: ImageManifest;
  /** postgresql.conf settings of the recovery (restore_command, target, action). */
  settings: Record<string, string>;
  walDir: string;
  walFiles: number;
}

/**
 * The pageserver: owns base images (in the chunk store), the history of branches and snapshots, and makes a data
 * directory for any point of a branch's history: the newest image at or before the point, plus the WAL to replay
 * up to it, which Postgres itself replays.
 */
export class Pageserver {
  readonly history: History;
  readonly cache: ImageCache;
  private constructor(
    readonly dir: string,
    readonly store: ChunkStore,
    private readonly deps: PageserverDeps,
  ) {
    this.history = new History(path.join(dir, 'history.json'));
    this.cache = new ImageCache(path.join(dir, 'cache'), {
      warn: (message) => deps.log.warn('%s', message),
      info: (message) => deps.log.info('%s', message),
    });
  }

  static async open(deps: PageserverDeps): Promise<Pageserver> {
    const dir = path.join(deps.repoDir, 'pageserver');
    fs.mkdirSync(path.join(dir, 'images'), { recursive: true });
    return new Pageserver(dir, await ChunkStore.open(path.join(dir, 'chunks')), deps);
  }

  private firstImage?: Promise<unknown>;

  /**
   * The first image of a new repository is being taken (from the running compute, see the daemon): points of
   * history are chosen after it, and images read, once it is stored.
   */
  setFirstImage(taking: Promise<unknown>): void {
    this.firstImage = taking.catch((error) => this.deps.log.error('first base image failed: %s', (error as Error).message));
  }

  /** Resolves once the first image (if one is being taken) is stored. */
  async firstImageReady(): Promise<void> {
    await this.firstImage;
  }

  async close(): Promise<void> {
    await this.firstImage;
    await this.cache.close(); // a copy not flushed yet would be dropped at the next start
    await this.store.close();
  }

  private fileOf(key: string): string {
    return path.join(this.dir, ...key.split('/'));
  }

  /** Record a new image: its manifest is written after every chunk it names is durable (flushed by the taker). */
  async storeImage(image: NewImage): Promise<ImageManifest> {
    const key = imageKey(image.branch, parseLsn(image.endLsn));
    const file = this.fileOf(key);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const encoded = await encodeManifest(image);
    await writeFileAtomic(file, encoded);
    const manifest = await decodeManifest(key, encoded);
    this.deps.log.info(
      'base image of %s at %s stored: %d MB of files, %d kB new',
      image.branch,
      image.endLsn,
      mb(image.rawBytes),
      Math.round(image.newBytes / 1024),
    );
    await this.deps.hooks?.baseImageStored
      .promise({ branch: image.branch, lsn: image.endLsn, manifestKey: key })
      .catch((e) => this.deps.log.error('%s', e.message));
    return manifest;
  }

  /**
   * Take and store an image: `take` builds it (into the chunk store, and as plain files for the cache), then its
   * manifest is written, and last the plain copy becomes the branch's cached one.
   */
  async takeImage(take: (mirror: ImageMirror) => Promise<NewImage>): Promise<ImageManifest> {
    const mirror = this.cache.writer();
    let manifest: ImageManifest;
    try {
      manifest = await this.storeImage(await take(mirror));
    } catch (error) {
      await mirror.abandon();
      throw error;
    }
    const key = imageKey(manifest.branch, parseLsn(manifest.endLsn));
    // The copy is only a cache: the image is stored whether or not its copy could be written.
    await mirror.commit(key).catch(async (error: Error) => {
      this.deps.log.warn('the cached copy of %s could not be written (%s): computes restore it from chunks', key, error.message);
      await mirror.abandon();
    });
    // Once the copy is on disk the image's buffers are all let go: collect them, or an idle daemon keeps them. Some
    // of what an image leaves goes only seconds later (cause not found; 1 GB: RSS 122–152 MB after the first
    // collection, 96–104 MB after a second one 12 s later, none 1 s later): collect once more then.
    void this.cache.settled(key).then(() => {
      collectWhenIdle();
      setTimeout(collectWhenIdle, 12_000).unref();
    });
    return manifest;
  }

  /**
   * Take and store an incremental image after `request.previous` (see incremental.ts), advancing its plain copy in
   * place. Rejects with `needs_full_image` when only a full image can describe the change.
   */
  async takeIncremental(request: IncrementalRequest & { binDir: string }): Promise<ImageManifest> {
    const { wal, owner, log } = this.deps;
    if (!wal) throw new Error('the pageserver has no WAL store here');
    const context = { store: this.store, cache: this.cache, wal, owner, log, binDir: request.binDir };
    const spans = this.history.chain(request.previous.branch);
    const started = Date.now();
    const taken = await takeIncrementalImage(
      { ...context, spans, scratch: path.join(this.deps.repoDir, 'computes', '.image-replay') },
      request,
    );
    log.info('incremental image of %s: %d pages read, %d ms', request.previous.branch, taken.image.pagesRead, Date.now() - started);
    try {
      const manifest = await this.storeImage(taken.image);
      taken.commit(imageKey(manifest.branch, parseLsn(manifest.endLsn)));
      return manifest;
    } catch (error) {
      taken.abandon();
      throw error;
    }
  }

  /** Images of a branch, oldest first. */
  images(branch: string): ImageEntry[] {
    const dir = path.join(this.dir, 'images', branch);
    const entries: ImageEntry[] = [];
    for (const file of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
      const key = `images/${branch}/${file}`;
      const endLsn = lsnOfImageKey(key);
      if (endLsn !== undefined) entries.push({ key, branch, endLsn, createdAt: fs.statSync(path.join(dir, file)).mtime.toISOString() });
    }
    return entries.sort((a, b) => (a.endLsn < b.endLsn ? -1 : 1));
  }

  async readImage(key: string): Promise<ImageManifest> {
    let data: Buffer;
    try {
      data = fs.readFileSync(this.fileOf(key));
    } catch {
      throw new NeonError('image_missing', `base image ${key} is missing`, { status: 500 });
    }
    return decodeManifest(key, data);
  }

  /**
   * The newest image on `branch`'s line of history from which `target` can be reached: on the branch itself at
   * or before the target, or on an ancestor at or before the fork point.
   */
  async chooseImage(branch: string, target: { lsn?: Lsn; time?: Date }): Promise<ImageManifest> {
    await this.firstImage;
    const spans = this.history.chain(branch).reverse();
    for (const span of spans) {
      const limit = span.to === undefined ? target.lsn : target.lsn === undefined || target.lsn > span.to ? span.to : target.lsn;
      const candidates = this.images(span.branch).filter((image) => limit === undefined || image.endLsn <= limit);
      for (const entry of candidates.reverse()) {
        const manifest = await this.readImage(entry.key);
        if (target.time && new Date(manifest.createdAt) > target.time) continue;
        return manifest;
      }
    }
    const what = target.lsn !== undefined ? `LSN ${formatLsn(target.lsn)}` : target.time ? `time ${target.time.toISOString()}` : 'its tip';
    throw new NeonError(
      'no_image',
      `no base image of branch ${branch} at or before ${what}: that point is older than the branch's history`,
      {
        status: 400,
      },
    );
  }

  /**
   * Make `dataDir` (which must not exist) ready to start at `target` on `branch`: restore the chosen image, gather
   * the WAL from it on into `walDir`, and return the recovery settings for the first start. Its files are not
   * waited for to reach the disk: it is marked so (see unsynced.ts), and the compute started on it flushes them;
   * a `scratch` directory (an export's) is neither marked nor flushed.
   */
  async prepare(
    branch: string,
    target: RecoveryTarget,
    dataDir: string,
    walDir: string,
    options: { finishedWalOnly?: boolean; takeCache?: boolean; scratch?: boolean; progress?: (bytes: number, total: number) => void } = {},
  ): Promise<Prepared> {
    const wal = this.deps.wal;
    if (!wal) throw new Error('the pageserver has no WAL store here');
    const image = await this.chooseImage(branch, target);
    // The WAL is gathered and checked (CPU on this thread) while the image's files are copied (on libuv's threads).
    const staging = stageWal(wal, this.history.chain(branch), parseLsn(image.startLsn), walDir, {
      owner: this.deps.owner,
      finishedOnly: options.finishedWalOnly,
      until: target.lsn,
      untilTime: target.time,
    });
    const key = imageKey(image.branch, parseLsn(image.endLsn));
    const restoring = (async () => {
      // takeCache: an older image's copy may be renamed into place (a checkout), see ImageCache.restore; a rename
      // costs nothing, and the copy must not be used up by a checkout that its WAL then refuses.
      if (options.takeCache) await staging;
      if (!this.cache.has(key)) await this.cache.refilled(); // a copy that a checkout took is being written again
      const { owner } = this.deps;
      const progress = options.progress && ((bytes: number) => options.progress!(bytes, image.rawBytes));
      const take = options.takeCache ? this.store : undefined;
      if (this.cache.has(key)) return this.cache.restore(key, image, dataDir, owner, { take, progress });
      const neighbour = await this.cachedNeighbour(image);
      if (neighbour) {
        const from = imageKey(neighbour.branch, parseLsn(neighbour.endLsn));
        this.deps.log.info('restoring %s from the cached copy of %s and the pages that differ', key, from);
        return this.cache.restoreFrom(from, neighbour, image, dataDir, this.store, owner, { take: !!take, progress });
      }
      return restoreImage(this.store, image, dataDir, { owner, progress: options.progress });
    })();
    const [staged, restored] = await Promise.allSettled([staging, restoring]);
    if (staged.status === 'rejected' || restored.status === 'rejected') {
      fs.rmSync(dataDir, { recursive: true, force: true });
      throw staged.status === 'rejected' ? staged.reason : (restored as PromiseRejectedResult).reason;
    }
    const { files } = staged.value;
    fs.writeFileSync(path.join(dataDir, 'recovery.signal'), '');
    if (this.deps.owner) fs.chownSync(path.join(dataDir, 'recovery.signal'), this.deps.owner.uid, this.deps.owner.gid);
    if (!options.scratch) await markUnsynced(dataDir, this.deps.owner);
    return { image, settings: recoverySettings(walDir, target), walDir, walFiles: files };
  }

  /**
   * The image with a cached copy nearest in LSN to `image` on the branches of its line of history (same system),
   * to derive `image` from when it has no copy of its own (see ImageCache.restoreFrom).
   */
  private async cachedNeighbour(image: ImageManifest): Promise<ImageManifest | undefined> {
    const target = parseLsn(image.endLsn);
    const distance = (lsn: Lsn) => (lsn > target ? lsn - target : target - lsn);
    const candidates = this.history
      .chain(image.branch)
      .flatMap((span) => this.images(span.branch))
      .filter((entry) => this.cache.has(entry.key))
      .sort((a, b) => (distance(a.endLsn) < distance(b.endLsn) ? -1 : distance(a.endLsn) > distance(b.endLsn) ? 1 : 0));
    for (const entry of candidates) {
      const manifest = await this.readImage(entry.key).catch(() => undefined);
      if (manifest?.systemId === image.systemId && manifest.pgVersion === image.pgVersion) return manifest;
    }
    return undefined;
  }

  /** Create the root branch `main` (at `neon init`). */
  async createMain(): Promise<Branch> {
    return this.history.addBranch({ name: 'main', parent: null, forkLsn: null, createdAt: new Date().toISOString() });
  }
}

function mb(bytes: number): number {
  return Math.round(bytes / 1024 / 1024);
}
