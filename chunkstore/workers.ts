// A small pool of worker threads that hash and compress batches of chunks off the main thread, so that the
// daemon's event loop (its REST API) stays responsive while a base image is taken. Written by hand: a pool
// library (piscina…) resolves its own worker file, which the esbuild bundle of dist/ does not ship, and the
// pool needed here is two message types and a FIFO per worker.
import os from 'node:os';
import type { Worker } from 'node:worker_threads';
import { collectWhenIdle, startWorker, workerEntry } from '../lib/worker.js';
import { checkPack, processBatch, type BatchResult, type PackCheck } from './codec.js';

/**
 * A batch sent to a worker: chunk i is `input[starts[i] .. starts[i+1])`, stored bytes go to `out`. Both are
 * shared memory: posting them costs no copy and no transfer (measured here: moving a 1 MiB ArrayBuffer to a
 * worker took 0.5–8 ms of the main thread, sharing one 1 µs), and the pipeline reuses them batch after batch.
 */
export interface BatchRequest {
  kind: 'batch';
  id: number;
  input: SharedArrayBuffer;
  out: SharedArrayBuffer;
  starts: Uint32Array;
}

/**
 * A pulled pack to check (see {@link checkPack}): `length` bytes of `pack`, shared memory the caller leaves alone
 * until the answer, and its records (5 numbers each).
 */
export interface CheckRequest {
  kind: 'check';
  id: number;
  pack: SharedArrayBuffer;
  offset: number;
  length: number;
  records: Uint32Array;
}

/** What a worker is sent. */
export type WorkerRequest = BatchRequest | CheckRequest;

/** A worker's answer, or what went wrong. */
export type BatchReply = { id: number; result: BatchResult | PackCheck } | { id: number; error: string };

interface Pending {
  resolve(result: BatchResult | PackCheck): void;
  reject(error: Error): void;
}

interface Slot {
  worker: Worker;
  pending: Map<number, Pending>;
  /** Ends an idle worker (each holds a V8 heap: tens of MB the daemon should not keep between images). */
  idle?: NodeJS.Timeout;
}

/** How long a worker with nothing to do lives on, waiting for the next batch. */
const IDLE_MS = 15_000;

/** Most workers a pool starts, whatever the core count: the main thread still parses and packs. */
const MAX_WORKERS = 4;

/**
 * Runs {@link processBatch} on worker threads, one per core (at most {@link MAX_WORKERS}). A batch goes to the
 * worker with the fewest batches queued; each worker answers its batches in order. A worker that dies fails
 * its queued batches and is replaced on the next run. Idle workers do not keep the process alive.
 */
export class ChunkWorkers {
  private readonly slots: Slot[] = [];
  private nextId = 1;

  constructor(
    readonly size = Math.max(1, Math.min(os.availableParallelism(), MAX_WORKERS)),
    private readonly entry: URL | undefined = workerEntry(import.meta.url, 'chunkstore', 'chunk-worker'),
  ) {}

  /** False when no worker entry exists (batches run inline). */
  get threaded(): boolean {
    return this.entry !== undefined;
  }

  /**
   * Process a batch (see {@link BatchRequest}); `out` must be at least as long as the chunks. The caller must
   * not touch `input` or `out` until the promise settles.
   */
  run(input: SharedArrayBuffer, starts: Uint32Array, out: SharedArrayBuffer): Promise<BatchResult> {
    if (!this.entry) return Promise.resolve(processBatch(new Uint8Array(input), starts, new Uint8Array(out)));
    return this.post({ kind: 'batch', id: this.nextId++, input, out, starts }) as Promise<BatchResult>;
  }

  /**
   * Hash the pack in `pack` and check its records (see {@link checkPack}) on a worker. A view of shared memory
   * is used in place (the caller must not change it until the promise settles); other memory is copied.
   */
  check(pack: Uint8Array, records: Uint32Array): Promise<PackCheck> {
    if (!this.entry) return Promise.resolve(checkPack(pack, records));
    let memory = pack.buffer;
    let offset = pack.byteOffset;
    if (!(memory instanceof SharedArrayBuffer)) {
      // One copy (milliseconds for a 16 MiB pack) buys the hashing and decompression off this thread.
      memory = new SharedArrayBuffer(pack.length);
      new Uint8Array(memory).set(pack);
      offset = 0;
    }
    const request: CheckRequest = { kind: 'check', id: this.nextId++, pack: memory, offset, length: pack.length, records };
    return this.post(request) as Promise<PackCheck>;
  }

  /** Send `request` to the least busy worker; settles with its answer. */
  private post(request: WorkerRequest): Promise<BatchResult | PackCheck> {
    const slot = this.pick();
    return new Promise((resolve, reject) => {
      clearTimeout(slot.idle);
      if (slot.pending.size === 0) slot.worker.ref();
      slot.pending.set(request.id, { resolve, reject });
      slot.worker.postMessage(request);
    });
  }

  /** Stop every worker (batches in flight fail). */
  async close(): Promise<void> {
    const slots = this.slots.splice(0);
    await Promise.all(slots.map((slot) => slot.worker.terminate()));
  }

  /** End an idle worker; the next batch starts a new one. */
  private retire(slot: Slot): void {
    if (slot.pending.size) return;
    const index = this.slots.indexOf(slot);
    if (index >= 0) this.slots.splice(index, 1);
    void slot.worker.terminate().then(() => {
      if (!this.slots.length) collectWhenIdle(); // the work that made garbage is done: give it back now
    });
  }

  private pick(): Slot {
    let best = this.slots.reduce<Slot | undefined>((a, b) => (!a || b.pending.size < a.pending.size ? b : a), undefined);
    if (!best || (best.pending.size > 0 && this.slots.length < this.size)) best = this.spawn();
    return best;
  }

  private spawn(): Slot {
    const worker = startWorker(this.entry!, 'neon-chunk-worker');
    const slot: Slot = { worker, pending: new Map() };
    worker.unref();
    const fail = (error: Error) => {
      clearTimeout(slot.idle);
      const index = this.slots.indexOf(slot);
      if (index >= 0) this.slots.splice(index, 1);
      for (const pending of slot.pending.values()) pending.reject(error);
      slot.pending.clear();
    };
    worker.on('message', (reply: BatchReply) => {
      const pending = slot.pending.get(reply.id);
      if (!pending) return;
      slot.pending.delete(reply.id);
      if (slot.pending.size === 0) {
        worker.unref();
        slot.idle = setTimeout(() => this.retire(slot), IDLE_MS).unref();
      }
      if ('error' in reply) pending.reject(new Error(`a hashing worker failed: ${reply.error}`));
      else pending.resolve(reply.result);
    });
    worker.on('error', (error) => fail(new Error(`a hashing worker failed: ${error.message}`)));
    worker.on('exit', (code) => fail(new Error(`a hashing worker exited with code ${code}`)));
    this.slots.push(slot);
    return slot;
  }
}

let shared: ChunkWorkers | undefined;

/** The process's pool, started on first use. */
export function chunkWorkers(): ChunkWorkers {
  return (shared ??= new ChunkWorkers());
}
