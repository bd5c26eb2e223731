import * as assert from 'uvu/assert';
import { NeonError } from '../core/errors.js';
import type { Storage } from '../core/storage.js';

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

/** The code of the NeonError that `promise` rejects with. */
export async function codeOf(promise: Promise<unknown>): Promise<string> {
  const error = await promise.then(
    () => 'resolved',
    (e: unknown) => e,
  );
  assert.instance(error, NeonError, `expected a NeonError, got ${String(error)}`);
  return (error as NeonError).code;
}

/** Every key a storage lists under `prefix`, in its order. */
export async function keys(storage: Storage, prefix?: string): Promise<string[]> {
  const out: string[] = [];
  for await (const object of storage.list(prefix)) out.push(object.key);
  return out;
}
