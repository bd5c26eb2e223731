import { Transform, pipeline, type Readable } from 'node:stream';
import type { Storage } from '../core/storage.js';
import { trace } from '../lib/trace.js';
import type { OperationHandle } from './operations.js';

/*
 * How a push or pull reports what it does: bytes and objects counted as they pass (for the operation's progress
 * and result), and each step noted in the NEON_TRACE file when one is set.
 */

/** A storage that counts the bytes and objects that go through it (puts and reads), for progress and results. */
export function countingStorage(storage: Storage, count: (bytes: number, objects: number) => void): Storage {
  return {
    url: storage.url,
    head: (key) => storage.head(key),
    list: (prefix) => storage.list(prefix),
    delete: (key) => storage.delete(key),
    async put(key, body, options) {
      if (typeof body === 'string' || Buffer.isBuffer(body)) {
        await storage.put(key, body, options);
        return count(typeof body === 'string' ? Buffer.byteLength(body) : body.length, 1);
      }
      // A stream is counted as it goes, so that progress moves during a long upload.
      await storage.put(
        key,
        pipeline(body, counter(), () => undefined),
        options,
      );
      count(0, 1);
    },
    async get(key) {
      const source = await storage.get(key);
      count(0, 1);
      return pipeline(source, counter(), () => undefined); // an error of the source destroys the counter with it
    },
  };
  function counter(): Transform {
    return new Transform({
      transform(chunk: Buffer, _encoding, done) {
        count(chunk.length, 0);
        done(null, chunk);
      },
    });
  }
}

/** The process's memory for a trace line (only computed when tracing: process.memoryUsage() walks the heap). */
function memory(): string {
  if (!process.env.NEON_TRACE) return '';
  const { rss, heapUsed, external, arrayBuffers } = process.memoryUsage();
  const mb = (bytes: number) => (bytes / 1048576).toFixed(0);
  return ` (rss ${mb(rss)} MB, heap ${mb(heapUsed)} MB, external ${mb(external)} MB, array buffers ${mb(arrayBuffers)} MB)`;
}

/**
 * `op`, noting each step in the NEON_TRACE file with the process's memory, so that a slow or memory-hungry
 * transfer shows which step it was.
 */
export function traced(op: OperationHandle, what: string): OperationHandle {
  trace('transfer', `${what}: start${memory()}`);
  return {
    step(step, totalBytes) {
      trace('transfer', `${what}: ${step}${memory()}`);
      op.step(step, totalBytes);
    },
    add: (bytes, objects) => op.add(bytes, objects),
  };
}
