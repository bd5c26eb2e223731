import type { Worker } from 'node:worker_threads';
import { startWorker, workerEntry } from '../lib/worker.js';

/** One step of writing a copy: a folder, a file begun, `n` bytes of it (the next ones of the buffer), its end. */
export type WriterOp = { t: 'd'; p: string } | { t: 'b'; p: string } | { t: 'w'; n: number } | { t: 'e' };

/**
 * To the writer thread: steps, and the bytes their writes take in order; or close (report when all is written); or
 * last, sync the copy, which is now at the folder `sync`.
 */
export interface WriterRequest {
  ops: WriterOp[];
  data?: ArrayBuffer;
  close?: boolean;
  sync?: string;
}

/** From the writer thread: a buffer handed back for reuse, the end (bytes written), the copy synced, or what failed. */
export interface WriterReply {
  free?: ArrayBuffer;
  closed?: boolean;
  bytes?: number;
  synced?: boolean;
  error?: string;
}

/** Bytes per hand-over to the thread: few messages, and little to copy. */
const BUFFER = 1024 * 1024;
/** Buffers on their way or being written before {@link CacheWriter.drain} makes the image wait: memory bound. */
const IN_FLIGHT = 16;
/** Steps sent at once when no data fills a buffer (a run of folders and empty files). */
const MAX_OPS = 512;

const entry = workerEntry(import.meta.url, 'pageserver', 'cache-writer-worker');

/**
 * Writes the plain copy of an image being taken (see ImageCache.writer) on a thread of its own. Opening ~1000
 * files and writing 1 GB took ~0.8 s of blocking system calls on the daemon's event loop, which is what delayed its
 * REST answers during an image (an async writer through libuv's pool measured slower: one trip per call). The
 * bytes are copied into 1 MiB buffers that travel to the thread and back (transferred, not copied); the image
 * waits on {@link drain} when the thread falls behind, so memory stays bounded. {@link close} resolves when every
 * byte is written, {@link sync} when it is all on disk: the image need not wait for the second.
 */
export class CacheWriter {
  private readonly worker: Worker;
  private ops: WriterOp[] = [];
  private buffer = Buffer.from(new ArrayBuffer(BUFFER));
  private used = 0;
  private readonly free: ArrayBuffer[] = [];
  private inFlight = 0;
  private failure?: Error;
  private waiters: (() => void)[] = [];
  private closed?: { resolve: (bytes: number) => void; reject: (error: Error) => void };
  private synced?: { resolve: (bytes: number) => void; reject: (error: Error) => void };

  /** `flushAsWritten`: flush each file while it is written, not only in {@link sync} (see cache-writer-worker.ts). */
  constructor(root: string, flushAsWritten = false) {
    if (!entry) throw new Error('the image-cache writer thread (cache-writer-worker) is missing from this build');
    this.worker = startWorker(entry, 'neon-cache-writer', { root, flushAsWritten });
    this.worker.on('message', (reply: WriterReply) => {
      if (reply.error) return this.fail(new Error(`writing the image's cached copy: ${reply.error}`));
      if (reply.closed) return this.closed?.resolve(reply.bytes ?? 0);
      if (reply.synced) return this.synced?.resolve(0);
      if (reply.free) this.free.push(reply.free);
      if (--this.inFlight === 0 && !this.closed) this.worker.unref();
      if (this.inFlight <= IN_FLIGHT / 2) this.wake();
    });
    this.worker.on('error', (error) => this.fail(error));
    this.worker.on('exit', () => this.fail(new Error('the image-cache writer thread ended')));
    // The thread keeps the process alive only while it has work (see send): an idle writer that is never closed must
    // not hold a process open, but an image waiting on drain() may have nothing else keeping the loop alive (`neon
    // init` takes its image in the CLI's own process). After the listeners: adding a 'message' listener refs again.
    this.worker.unref();
  }

  addDir(path: string): void {
    this.push({ t: 'd', p: path });
  }

  beginFile(path: string): void {
    this.push({ t: 'b', p: path });
  }

  write(data: Buffer): void {
    if (this.failure) return;
    for (let offset = 0; offset < data.length;) {
      if (this.used === BUFFER) this.send();
      const n = Math.min(BUFFER - this.used, data.length - offset);
      data.copy(this.buffer, this.used, offset, offset + n);
      this.used += n;
      offset += n;
      this.push({ t: 'w', n });
    }
  }

  endFile(): void {
    this.push({ t: 'e' });
  }

  /** True when the thread has fallen behind: {@link drain} would wait. */
  get busy(): boolean {
    return this.inFlight > IN_FLIGHT;
  }

  /**
   * Resolves when the thread has caught up enough (at once when it has). A failed copy does not hold the image up:
   * the rest is dropped, and {@link close} reports the failure.
   */
  drain(): Promise<void> {
    if (this.failure || this.inFlight <= IN_FLIGHT) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Send what is left, wait until every file and folder is written (not synced); the bytes of the files. */
  close(): Promise<number> {
    this.send();
    return this.ask({ ops: [], close: true }, (waiter) => (this.closed = waiter));
  }

  /** After {@link close}, once the copy has moved to the folder `root`: flush it all to disk, then end the thread. */
  async sync(root: string): Promise<void> {
    await this.ask({ ops: [], sync: root }, (waiter) => (this.synced = waiter));
    await this.stop();
  }

  /** Ask the thread for one answer, holding the process open until it comes. */
  private ask(request: WriterRequest, wait: (waiter: { resolve: (n: number) => void; reject: (e: Error) => void }) => void): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      wait({ resolve, reject });
      if (this.failure) return reject(this.failure);
      this.worker.ref();
      this.worker.postMessage(request);
    });
  }

  /** Stop the thread, whatever it was doing (the copy is abandoned). */
  async stop(): Promise<void> {
    this.worker.removeAllListeners('exit');
    await this.worker.terminate();
  }

  private push(op: WriterOp): void {
    if (this.failure) return;
    this.ops.push(op);
    if (this.ops.length >= MAX_OPS) this.send();
  }

  private send(): void {
    if (this.failure || (!this.ops.length && !this.used)) return;
    const data = this.used ? (this.buffer.buffer as ArrayBuffer) : undefined;
    this.worker.postMessage({ ops: this.ops, data } satisfies WriterRequest, data ? [data] : []);
    if (this.inFlight++ === 0) this.worker.ref();
    this.ops = [];
    if (data) {
      this.buffer = Buffer.from(this.free.pop() ?? new ArrayBuffer(BUFFER));
      this.used = 0;
    }
  }

  private fail(error: Error): void {
    this.failure ??= error;
    this.closed?.reject(this.failure);
    this.synced?.reject(this.failure);
    this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter();
  }
}
