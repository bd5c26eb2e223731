// Entry of the image-cache writer thread (see cache-writer.ts): creates the folders and files of an image's plain
// copy and writes their bytes, so that none of these blocking system calls runs on the daemon's event loop. Nothing
// is synced while the image is taken (syncing each file as it was written made a 1 GB image take 1.6x as long): a
// `sync` request, after the copy is in its final folder, flushes every file and folder, and only then is the copy
// marked complete (image-cache.ts). Except where copies are clones (`flushAsWritten`): there the first compute's
// clone of a file would wait for its writeback anyway, so files are flushed as they are written, while the image is
// taken, as the disk allows. Bundled as its own file in dist/.
import fs from 'node:fs';
import path from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import type { WriterOp, WriterReply, WriterRequest } from './cache-writer.js';
import { backgroundThread } from '../lib/worker.js';

backgroundThread();

const port = parentPort;
if (!port) throw new Error('cache-writer-worker.ts runs only as a worker thread');
const root: string = workerData.root;
const flushAsWritten: boolean = workerData.flushAsWritten;

/** Bytes of a file written between two fdatasync calls when flushing as written: writeback streams. */
const FLUSH_EVERY = 32 * 1024 * 1024;

let fd: number | undefined;
let unflushed = 0;
let bytes = 0;
// Relative to the copy's root, which has moved by the time they are synced.
const files: string[] = [];
const dirs = new Set<string>(['.']);

function apply(op: WriterOp, data: Uint8Array, at: number): number {
  switch (op.t) {
    case 'd':
      fs.mkdirSync(path.join(root, op.p), { recursive: true });
      dirs.add(op.p);
      return at;
    case 'b': {
      const file = path.join(root, op.p);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      dirs.add(path.dirname(op.p));
      fd = fs.openSync(file, 'w');
      files.push(op.p);
      return at;
    }
    case 'w': {
      for (let done = 0; done < op.n;) done += fs.writeSync(fd!, data, at + done, op.n - done);
      bytes += op.n;
      unflushed += op.n;
      if (flushAsWritten && unflushed >= FLUSH_EVERY) flush();
      return at + op.n;
    }
    case 'e':
      if (fd !== undefined) {
        if (flushAsWritten && unflushed) flush();
        fs.closeSync(fd);
      }
      fd = undefined;
      unflushed = 0;
      return at;
  }
  return at;
}

function flush(): void {
  fs.fdatasyncSync(fd!);
  unflushed = 0;
}

/** Flush every file, then every folder (a file whose name is not on disk is not there after a power loss). */
function sync(at: string): void {
  for (const file of files) syncPath(path.join(at, file), fs.fdatasyncSync);
  for (const dir of dirs) syncPath(path.join(at, dir), fs.fsyncSync);
  syncPath(path.dirname(at), fs.fsyncSync); // the copy's own name in the cache folder
}

function syncPath(file: string, how: (fd: number) => void): void {
  const handle = fs.openSync(file, 'r');
  try {
    how(handle);
  } finally {
    fs.closeSync(handle);
  }
}

port.on('message', (request: WriterRequest) => {
  try {
    if (request.close) {
      // Every earlier request has been applied: the copy is written (not yet synced).
      port.postMessage({ closed: true, bytes } satisfies WriterReply);
      return;
    }
    if (request.sync) {
      sync(request.sync);
      port.postMessage({ synced: true } satisfies WriterReply);
      return;
    }
    const data = new Uint8Array(request.data ?? new ArrayBuffer(0));
    let at = 0;
    for (const op of request.ops) at = apply(op, data, at);
    // The buffer goes back to be filled again.
    if (request.data) port.postMessage({ free: request.data } satisfies WriterReply, [request.data]);
    else port.postMessage({ free: undefined } satisfies WriterReply);
  } catch (error) {
    port.postMessage({ error: (error as Error).message ?? String(error) } satisfies WriterReply);
  }
});
