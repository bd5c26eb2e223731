// The plain copy of an image being taken (ImageCache.writer), written off the daemon's event loop. The image
// builder hands it the files' bytes synchronously, in pieces of any size (a tar stream's are ~64 KiB); they are
// copied into 1 MiB blocks, and each full block is written by libuv's thread pool at its offset in the file. A
// write() on the main thread (as before) took the kernel's copy and, once the disk fell behind, its dirty-page
// throttling with it: GET /status waited 150 ms and more behind one. The copy is made durable before it is
// committed: big files are synced as they grow (the disk writes them back while the image is still streaming),
// and the whole file system once at the end (syncfs, one call for the ~1000 small files of a cluster).
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const BLOCK = 1024 * 1024;
/** Writes at once on the thread pool (4 threads, which the chunk store's pack writes and the REST API need too). */
const IN_FLIGHT = 2;
/** Blocks waiting for a thread: past this (the disk is slower than the input) a block is written synchronously. */
const QUEUED = 32;
/** Bytes of one file between two fdatasync calls: writeback starts during the image, not at its commit. */
const SYNC_EVERY = 64 * 1024 * 1024;

interface OpenFile {
  fd: number;
  /** Blocks submitted and not yet written. */
  pending: number;
  ended: boolean;
  /** Bytes written, and those since the file was last synced. */
  written: number;
  unsynced: number;
  /** An fdatasync is queued or running: the file is closed after it. */
  syncing: boolean;
  closed: boolean;
}

interface Job {
  file: OpenFile;
  block: Buffer;
  length: number;
  position: number;
}

/** Writes a tree of files under `root` asynchronously; see the top of this file. */
export class MirrorWriter {
  /** Bytes of all files. */
  bytes = 0;
  private file?: OpenFile;
  private position = 0;
  private block?: Buffer;
  private fill = 0;
  private readonly spare: Buffer[] = [];
  private readonly queue: Job[] = [];
  private inFlight = 0;
  /** Files not closed yet (their writes or syncs are under way). */
  private open = 0;
  /** Files waiting for an fdatasync, done one at a time (one thread at most waits on the disk for them). */
  private readonly syncs: OpenFile[] = [];
  private syncing = false;
  private error?: Error;
  private dropped = false;
  private waiters: (() => void)[] = [];

  constructor(readonly root: string) {}

  addDir(dir: string): void {
    fs.mkdirSync(path.join(this.root, dir), { recursive: true });
  }

  beginFile(file: string): void {
    this.endFile();
    fs.mkdirSync(path.dirname(path.join(this.root, file)), { recursive: true });
    const fd = fs.openSync(path.join(this.root, file), 'w');
    this.file = { fd, pending: 0, ended: false, written: 0, unsynced: 0, syncing: false, closed: false };
    this.open++;
    this.position = 0;
  }

  /** Bytes of the current file, in order; copied, so the caller may reuse `data` at once. */
  write(data: Buffer): void {
    this.bytes += data.length;
    for (let at = 0; at < data.length;) {
      this.block ??= this.spare.pop() ?? Buffer.allocUnsafeSlow(BLOCK);
      const copied = data.copy(this.block, this.fill, at, Math.min(data.length, at + BLOCK - this.fill));
      this.fill += copied;
      at += copied;
      if (this.fill === BLOCK) this.submit();
    }
  }

  endFile(): void {
    const file = this.file;
    if (!file) return;
    if (this.fill) this.submit();
    file.ended = true;
    this.file = undefined;
    this.settle(file);
  }

  /**
   * Wait until every byte is written and durable: undefined then, or the first error (the copy must not be
   * committed; the image itself is not affected).
   */
  async finish(): Promise<Error | undefined> {
    this.endFile();
    await this.idle();
    if (!this.error && !this.dropped) await syncTree(this.root).catch((error: Error) => (this.error ??= error));
    return this.error;
  }

  /** Stop writing (queued blocks are dropped); files close once their writes under way are done. */
  abandon(): void {
    this.dropped = true;
    this.endFile();
    for (const job of this.queue.splice(0)) this.done(job);
  }

  private submit(): void {
    const file = this.file!;
    const job = { file, block: this.block!, length: this.fill, position: this.position };
    this.position += this.fill;
    this.block = undefined;
    this.fill = 0;
    file.pending++;
    if (this.dropped || this.error) this.done(job);
    else if (this.inFlight < IN_FLIGHT) this.start(job);
    else if (this.queue.length < QUEUED) this.queue.push(job);
    else this.writeNow(job);
  }

  private start(job: Job, done = 0): void {
    if (done === 0) this.inFlight++;
    fs.write(job.file.fd, job.block, done, job.length - done, job.position + done, (error, written) => {
      if (!error && done + written < job.length) return this.start(job, done + written);
      this.inFlight--;
      if (error) this.error ??= error;
      this.done(job);
      const next = this.queue.shift();
      if (next) {
        if (this.dropped || this.error) this.done(next);
        else this.start(next);
      }
      this.wake();
    });
  }

  // The disk is far behind: wait for it here, as the old synchronous copy always did.
  private writeNow(job: Job): void {
    try {
      for (let done = 0; done < job.length;) done += fs.writeSync(job.file.fd, job.block, done, job.length - done, job.position + done);
    } catch (error) {
      this.error ??= error as Error;
    }
    this.done(job);
  }

  private done(job: Job): void {
    const { file } = job;
    if (this.spare.length < IN_FLIGHT + 2) this.spare.push(job.block);
    file.pending--;
    file.written += job.length;
    file.unsynced += job.length;
    if (file.unsynced >= SYNC_EVERY && !file.syncing && !this.dropped && !this.error) this.sync(file);
    this.settle(file);
  }

  /** Close an ended file once its writes and syncs are done; a big one is synced a last time first. */
  private settle(file: OpenFile): void {
    if (!file.ended || file.pending > 0 || file.syncing || file.closed) return;
    if (file.written >= SYNC_EVERY && file.unsynced > 0 && !this.dropped && !this.error) return this.sync(file);
    file.closed = true;
    fs.close(file.fd, () => {
      this.open--;
      this.wake();
    });
  }

  private sync(file: OpenFile): void {
    file.syncing = true;
    file.unsynced = 0;
    this.syncs.push(file);
    this.nextSync();
  }

  private nextSync(): void {
    if (this.syncing) return;
    const file = this.syncs.shift();
    if (!file) return this.wake();
    this.syncing = true;
    fs.fdatasync(file.fd, (error) => {
      if (error) this.error ??= error;
      this.syncing = false;
      file.syncing = false;
      this.settle(file);
      this.nextSync();
    });
  }

  private wake(): void {
    if (this.inFlight || this.queue.length || this.open || this.syncs.length || this.syncing) return;
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  private idle(): Promise<void> {
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      this.wake();
    });
  }
}

/**
 * Make every file under `root` durable: syncfs(2) of its file system through coreutils' `sync -f` (one call,
 * one journal commit, where an fsync per file costs one each: seconds for a cluster's ~1000 small files), else
 * an fsync of each file.
 */
async function syncTree(root: string): Promise<void> {
  const synced = await new Promise<boolean>((resolve) => execFile('sync', ['-f', root], (error) => resolve(!error)));
  if (synced) return;
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await fs.promises.readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile()) {
        const handle = await fs.promises.open(full, 'r');
        await handle.datasync().finally(() => handle.close());
      }
    }
  };
  await walk(root);
}
