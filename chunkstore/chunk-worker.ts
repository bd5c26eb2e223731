// Entry of a hashing worker (see workers.ts): hashes, zero-tests and compresses the batches of chunks it is sent,
// and checks pulled packs record by record.
// Chunks and stored bytes live in shared memory that the pipeline reuses; only the small per-chunk results
// (hashes, flags, lengths) travel in the reply. Bundled as its own file in dist/.
import { parentPort } from 'node:worker_threads';
import { checkPack, processBatch } from './codec.js';
import type { BatchReply, WorkerRequest } from './workers.js';
import { backgroundThread } from '../lib/worker.js';

backgroundThread();

const port = parentPort;
if (!port) throw new Error('chunk-worker.ts runs only as a worker thread');

port.on('message', (request: WorkerRequest) => {
  let reply: BatchReply;
  try {
    if (request.kind === 'check') {
      const result = checkPack(new Uint8Array(request.pack, request.offset, request.length), request.records);
      port.postMessage({ id: request.id, result } satisfies BatchReply);
      return;
    }
    const result = processBatch(new Uint8Array(request.input), request.starts, new Uint8Array(request.out));
    reply = { id: request.id, result };
    port.postMessage(reply, [result.hashes.buffer, result.flags.buffer, result.stored.buffer] as ArrayBuffer[]);
  } catch (error) {
    reply = { id: request.id, error: (error as Error).message ?? String(error) };
    port.postMessage(reply);
  }
});
