/**
 * Run `fn` over `items` with at most `limit` calls in flight; rejects with the first error once the calls in
 * flight have settled (so no work is left running behind the caller's back).
 */
export async function eachLimit<T>(items: Iterable<T>, limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (!failure && queue.length) {
      const item = queue.shift()!;
      try {
        await fn(item);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, queue.length) }, worker));
  if (failure) throw failure.error;
}
