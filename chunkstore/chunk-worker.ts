// Entry of a hashing worker (see workers.ts): hashes, zero-tests and compresses the batches of chunks it is sent
// and sends back the results, moving (not copying) every buffer both ways. Bundled as its own file in dist/.
import { parentPort } from 'node:worker_threads';
import { processBatch } from './codec.js';
import type { BatchReply, BatchRequest } from './workers.js';

const port = parentPort;
if (!port) throw new Error('chunk-worker.ts runs only as a worker thread');

port.on('message', (request: BatchRequest) => {
  let reply: BatchReply;
  try {
    const result = processBatch(new Uint8Array(request.input), new Uint32Array(request.starts));
    reply = { id: request.id, result, input: request.input };
    port.postMessage(reply, [result.hashes.buffer, result.flags.buffer, result.stored.buffer, result.out.buffer, request.input] as ArrayBuffer[]);
  } catch (error) {
    reply = { id: request.id, error: (error as Error).message ?? String(error) };
    port.postMessage(reply);
  }
});
