/**
 * One queue per key: work under the same key runs one at a time, in the order it was asked for; work under other
 * keys runs meanwhile. Not re-entrant: work must not wait for its own key. Keys with nothing queued are forgotten,
 * so the map stays as small as the number of keys in use.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<unknown>>();

  /** Run `work` once everything queued before it under `key` has settled; resolves or rejects as `work` does. */
  run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const result = previous.then(work, work);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }

  /** True while work runs or waits under `key`. */
  busy(key: string): boolean {
    return this.tails.has(key);
  }
}
