import * as assert from 'uvu/assert';

/** Assert that `fn` rejects with an error whose message matches `pattern`; returns the error. */
export async function rejects(fn: () => Promise<unknown>, pattern: RegExp): Promise<Error> {
  try {
    await fn();
  } catch (error) {
    assert.match((error as Error).message, pattern);
    return error as Error;
  }
  assert.unreachable(`expected a rejection matching ${pattern}`);
  throw new Error('unreachable');
}
