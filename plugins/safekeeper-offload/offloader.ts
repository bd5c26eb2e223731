import fs from 'node:fs/promises';
import path from 'node:path';
import { messageOf, NeonError } from '../../core/errors.js';
import type { BaseImageEvent, WalSegmentEvent } from '../../core/hooks.js';
import type { Logger } from '../../core/log.js';
import { readObject, type Storage } from '../../core/storage.js';
import { historyFileName, packWal, parseLsn, partialObjectKey, unpackWal, walObjectKey } from '../../core/wal.js';
import type { WalSource } from '../../core/hooks.js';
import { UploadQueue } from './queue.js';
import { newestPartialFile, removeOffloaded, walFilesIn, walFolders, type LocalWalFile, type OffloadState } from './state.js';

const RETRY_MIN_MS = 200;
/** How long `stop` waits for an upload in flight; an abandoned one is simply redone at the next start. */
const STOP_GRACE_MS = 5000;
const isPartialJob = (key: string) => key.startsWith('partial:');

/** What an {@link Offloader} works with, taken from the daemon's start context. */
export interface OffloadContext {
  storage: Storage;
  wal: WalSource;
  repoDir: string;
  log: Logger;
}

/** Settings of an {@link Offloader} (the plugin's options with their defaults applied). */
export interface OffloadSettings {
  partialIntervalMs: number;
  retryMaxMs: number;
  removeLocal: boolean;
}

/** What the plugin adds to `GET /status` as `offload`. */
export interface OffloadStatus {
  storage: string;
  /** Newest finished segment of `main` in storage. */
  last_segment: string | null;
  /** Newest partial segment in storage and the flush LSN its bytes are complete up to (null: unknown). */
  last_partial: { segment: string; flush_lsn: string | null } | null;
  /** Finished segments and history files waiting to be uploaded (including one in flight). */
  pending: number;
  /** Finished segments uploaded since the daemon started. */
  uploaded: number;
  /** The last upload error, until an upload succeeds again. */
  error: string | null;
}

/**
 * Ships the WAL files of one repository's safekeepers to its storage: finished segments and history files once
 * each (in name order, through a serial retrying queue), and the newest unfinished segment again whenever its
 * flush position moves, so that losing the whole machine loses at most a partial interval of commits.
 */
export class Offloader {
  /** The branch of the main compute, whose progress the status shows (the active branches come main first). */
  private get branch(): string {
    return this.ctx.wal.activeBranches()[0] ?? 'main';
  }

  private readonly queue: UploadQueue;
  private timer?: NodeJS.Timeout;
  private error: string | null = null;
  private uploaded = 0;
  private readonly lastPartialFile = new Map<string, { path: string; mtimeMs: number }>();

  constructor(
    private readonly ctx: OffloadContext,
    private readonly state: OffloadState,
    private readonly settings: OffloadSettings,
  ) {
    this.queue = new UploadQueue({
      retryMinMs: Math.min(RETRY_MIN_MS, settings.retryMaxMs),
      retryMaxMs: settings.retryMaxMs,
      onError: (job, error) => {
        const message = messageOf(error);
        // Retries go on forever: log when the problem changes, not on every attempt.
        if (message !== this.error)
          ctx.log.warn('upload of %s failed: %s (retrying, every %d ms at most)', job.key, message, settings.retryMaxMs);
        this.error = message;
      },
      onSuccess: () => {
        if (this.error) ctx.log.info('uploads work again; %d pending', this.pending());
        this.error = null;
      },
    });
  }

  /** Queue what the safekeepers finished while nobody was uploading (daemon down, crash), then start. */
  async start(early: WalSegmentEvent[]): Promise<void> {
    try {
      for (const folder of await walFolders(this.ctx.repoDir)) for (const file of await walFilesIn(folder)) this.enqueue(file);
    } catch (error) {
      this.ctx.log.error('could not list local WAL: %s', messageOf(error));
    }
    for (const event of early) this.segmentCompleted(event);
    this.ctx.log.info('offloading WAL to %s; %d file(s) to upload', this.ctx.storage.url, this.pending());
    this.queue.start();
    this.timer = setInterval(() => this.checkPartial(), this.settings.partialIntervalMs);
    this.timer.unref();
    for (const branch of this.ctx.wal.activeBranches()) await this.prune(branch);
  }

  /** A safekeeper finished a segment: queue it (every safekeeper reports the same name; the queue dedupes). */
  segmentCompleted(event: WalSegmentEvent): void {
    this.enqueue({ branch: event.branch, name: event.segment, path: event.path, kind: 'segment' });
    // The history file of a new timeline is needed to restore past the switch; it sits beside the segments.
    if (event.timeline > 1) {
      const name = historyFileName(event.timeline);
      this.enqueue({ branch: event.branch, name, path: path.join(path.dirname(event.path), name), kind: 'history' });
    }
  }

  /** Remember the newest base image: local segments wholly before it are no longer needed to restore. */
  baseImageStored(event: BaseImageEvent): void {
    const record = this.state.branch(event.branch);
    try {
      if (record.base_lsn && parseLsn(record.base_lsn) >= parseLsn(event.lsn)) return;
    } catch (error) {
      this.ctx.log.warn('ignoring base image event: %s', messageOf(error));
      return;
    }
    record.base_lsn = event.lsn;
    // In the background, like uploads: an observer must not hold up whoever stored the base image.
    void this.state
      .save()
      .catch((error) => this.ctx.log.warn('could not save offload state: %s', messageOf(error)))
      .then(() => this.prune(event.branch));
  }

  /** Stop the partial timer and give the upload in flight a few seconds; the rest waits for the next start. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    const finished = await this.queue.stop(STOP_GRACE_MS);
    const left = this.pending();
    if (!finished || left) this.ctx.log.info('stopped with %d upload(s) pending; they are retried at the next start', left);
  }

  status(): OffloadStatus {
    return {
      storage: this.ctx.storage.url,
      last_segment: this.state.last(this.branch),
      last_partial: this.state.branch(this.branch).partial,
      pending: this.pending(),
      uploaded: this.uploaded,
      error: this.error,
    };
  }

  private pending(): number {
    return this.queue.count((key) => !isPartialJob(key));
  }

  private enqueue(file: LocalWalFile): void {
    if (this.state.has(file.branch, file.kind, file.name)) return;
    const rank = file.kind === 'history' ? 0 : 1;
    this.queue.add({ key: `${file.kind}:${file.branch}:${file.name}`, rank, run: () => this.upload(file) });
  }

  private async upload(file: LocalWalFile): Promise<void> {
    const { storage, log } = this.ctx;
    const data = await this.readLocal(file);
    if (!data) {
      log.warn('%s of branch %s is on no safekeeper any more; it cannot be offloaded', file.name, file.branch);
      return;
    }
    await this.putOnce(walObjectKey(file.branch, file.name), data);
    if (file.kind === 'segment') {
      // The finished segment supersedes the partial copy that bounded the loss window while it was written.
      await storage.delete(partialObjectKey(file.branch, file.name));
      this.uploaded += 1;
    }
    this.state.add(file.branch, file.kind, file.name);
    const record = this.state.branch(file.branch);
    if (record.partial?.segment === file.name) record.partial = null;
    await this.state.save();
    if (file.kind === 'segment') await this.prune(file.branch);
  }

  // Finished WAL never changes, so it is written only if absent: a second repository writing to the same
  // storage_dest is refused instead of silently overwritten. An identical object (uploaded just before a crash,
  // before the state was saved) counts as uploaded; an unreadable one is replaced.
  private async putOnce(key: string, data: Buffer): Promise<void> {
    const { storage, log } = this.ctx;
    const packed = await packWal(data);
    try {
      await storage.put(key, packed, { ifAbsent: true });
      return;
    } catch (error) {
      if ((error as NeonError).code !== 'conflict') throw error;
    }
    const existing = await unpackWal(key, await readObject(storage, key)).catch(() => undefined);
    if (existing?.equals(data)) return;
    if (existing) {
      throw new NeonError('conflict', `${key} in ${storage.url} holds different WAL: is another repository using this storage_dest?`);
    }
    log.warn('%s in %s is unreadable; replacing it', key, storage.url);
    await storage.put(key, packed);
  }

  /** The file's bytes from the safekeeper that reported it, else from any other that has it. */
  private async readLocal(file: LocalWalFile): Promise<Buffer | undefined> {
    const candidates = [file.path, ...(await walFolders(this.ctx.repoDir, file.branch)).map((f) => path.join(f.dir, file.name))];
    for (const candidate of candidates) {
      try {
        return await fs.readFile(candidate);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      }
    }
    return undefined;
  }

  // Only while WAL flows: an unchanged flush position means the partial in storage is already complete.
  // A timer callback: anything thrown here would be an uncaught exception, which stops the daemon.
  private checkPartial(): void {
    for (const branch of this.ctx.wal.activeBranches()) {
      try {
        const partial = this.ctx.wal.partial(branch);
        const last = this.state.branch(branch).partial;
        if (partial && this.state.has(branch, 'segment', partial.segment)) continue;
        if (partial && last?.segment === partial.segment && last.flush_lsn && parseLsn(partial.flushLsn) <= parseLsn(last.flush_lsn))
          continue;
        this.queue.add({ key: `partial:${branch}`, rank: 2, run: () => this.uploadPartial(branch) });
      } catch (error) {
        this.ctx.log.warn('partial check of %s failed: %s', branch, messageOf(error));
      }
    }
  }

  private async uploadPartial(branch: string): Promise<void> {
    // Look again when the job runs: the queue may have been busy, and the newest state is what matters.
    // Safekeepers report their flush position about once a second, so while WAL flows fast that position is
    // often in a segment finished since and the WAL store knows no partial: then take the newest .partial file
    // on disk, vouching for none of its bytes (flush LSN null), and upload it only when it changed.
    const reported = this.ctx.wal.partial(branch);
    const partial = reported ?? (await newestPartialFile(this.ctx.repoDir, branch));
    if (!partial || this.state.has(branch, 'segment', partial.segment)) return;
    let data: Buffer;
    let mtimeMs: number;
    try {
      mtimeMs = (await fs.stat(partial.path)).mtimeMs;
      if (!reported && this.lastPartialFile.get(branch)?.path === partial.path && this.lastPartialFile.get(branch)?.mtimeMs === mtimeMs)
        return;
      // Read after the flush LSN was taken, so the bytes up to it are all in `data` (the rest is zeros).
      data = await fs.readFile(partial.path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return; // it was just finished: uploaded as such
      throw error;
    }
    // Past a promotion the WAL is on a new timeline: without its history file a restore would not follow it, so
    // it goes up before the first partial of that timeline (not only when a segment of it is finished).
    const timeline = parseInt(partial.segment.slice(0, 8), 16);
    const history = historyFileName(timeline);
    if (timeline > 1 && !this.state.has(branch, 'history', history)) {
      await this.upload({ branch, name: history, path: path.join(path.dirname(partial.path), history), kind: 'history' });
    }
    await this.ctx.storage.put(partialObjectKey(branch, partial.segment), await packWal(data));
    this.lastPartialFile.set(branch, { path: partial.path, mtimeMs });
    this.state.branch(branch).partial = { segment: partial.segment, flush_lsn: reported?.flushLsn ?? null };
    await this.state.save();
  }

  /** With `removeLocal`, drop local copies the newest base image has made unnecessary (see removeOffloaded). */
  private async prune(branch: string): Promise<void> {
    const base = this.state.branch(branch).base_lsn;
    if (!this.settings.removeLocal || !base) return;
    await removeOffloaded(this.ctx.repoDir, branch, parseLsn(base), (name) => this.state.has(branch, 'segment', name)).catch((error) =>
      this.ctx.log.warn('could not remove offloaded local WAL: %s', messageOf(error)),
    );
  }
}
