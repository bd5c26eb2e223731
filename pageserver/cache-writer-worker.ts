// Entry of the image-cache writer thread (see cache-writer.ts): creates the folders and files of an image's plain
// copy and writes their bytes, so that none of these blocking system calls runs on the daemon's event loop. Files
// are flushed to disk as they are written (every SYNC_EVERY bytes, and at their end), so that the copy is durable
// when it is committed and the disk writes overlap the image instead of piling up for the first compute's start.
// Bundled as its own file in dist/.
import fs from 'node:fs';
import path from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import type { WriterOp, WriterReply, WriterRequest } from './cache-writer.js';

const port = parentPort;
if (!port) throw new Error('cache-writer-worker.ts runs only as a worker thread');
const root: string = workerData.root;

/** Bytes of a file written between two fdatasync calls: writeback streams instead of waiting for the end. */
const SYNC_EVERY = 32 * 1024 * 1024;

let fd: number | undefined;
let unsynced = 0;
let bytes = 0;
const dirs = new Set<string>([root]);

function apply(op: WriterOp, data: Uint8Array, at: number): number {
  switch (op.t) {
    case 'd':
      fs.mkdirSync(path.join(root, op.p), { recursive: true });
      dirs.add(path.join(root, op.p));
      return at;
    case 'b': {
      const file = path.join(root, op.p);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      dirs.add(path.dirname(file));
      fd = fs.openSync(file, 'w');
      unsynced = 0;
      return at;
    }
    case 'w': {
      for (let done = 0; done < op.n;) done += fs.writeSync(fd!, data, at + done, op.n - done);
      unsynced += op.n;
      bytes += op.n;
      if (unsynced >= SYNC_EVERY) {
        fs.fdatasyncSync(fd!);
        unsynced = 0;
      }
      return at + op.n;
    }
    case 'e':
      if (fd !== undefined) {
        fs.fdatasyncSync(fd);
        fs.closeSync(fd);
      }
      fd = undefined;
      return at;
  }
  return at;
}

port.on('message', (request: WriterRequest) => {
  try {
    if (request.close) {
      // The folders' entries too: a file whose name is not on disk is not there after a power loss.
      for (const dir of dirs) {
        const handle = fs.openSync(dir, 'r');
        fs.fsyncSync(handle);
        fs.closeSync(handle);
      }
      port.postMessage({ closed: true, bytes } satisfies WriterReply);
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
