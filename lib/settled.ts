/**
 * Wait for every one of `work` to finish, then resolve with their values or throw the first error. Unlike
 * Promise.all nothing is left running behind a failure: the caller's clean-up (a daemon's shutdown after a failed
 * start) must not race parts of the work still under way.
 */
export async function settled<T extends readonly unknown[]>(work: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const results = await Promise.allSettled(work);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}
