import { Readable } from 'node:stream';
import { retryKind } from './errors.js';

/**
 * The body of a GET that survives a dropped connection: when the response stream fails with a transient error
 * (or ends short of `size`), the rest is fetched with `reopen(offset)` (a ranged GET pinned to the same ETag,
 * so a replaced object fails instead of splicing two versions) up to `retries` times. The reader sees one
 * uninterrupted byte stream; memory stays at one chunk, with the usual backpressure. `retries` bounds failures in a
 * row without progress.
 */
export function resumable(
  first: Readable,
  size: number | undefined,
  reopen: (offset: number) => Promise<Readable>,
  retries: number,
  fail: (error: unknown) => Error,
): Readable {
  async function* bytes() {
    let body = first;
    let offset = 0;
    for (let failures = 0; ;) {
      const start = offset;
      try {
        for await (const chunk of body) {
          offset += (chunk as Buffer).length;
          yield chunk as Buffer;
        }
        if (size === undefined || offset >= size) return;
        throw Object.assign(new Error(`response ended after ${offset} of ${size} bytes`), { code: 'ECONNRESET' });
      } catch (error) {
        body.destroy();
        // Retries count failures in a row: a long download on a flaky link goes on while it makes progress.
        if (offset > start) failures = 0;
        if (retryKind(error) === 'no' || failures++ >= retries) throw fail(error);
      }
      try {
        body = await reopen(offset);
      } catch (error) {
        throw fail(error);
      }
    }
  }
  return Readable.from(bytes(), { objectMode: false });
}
