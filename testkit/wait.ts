import { setTimeout as sleep } from 'node:timers/promises';

/** Poll `probe` until it returns something truthy (returned), or fail after `timeoutMs` naming `what`. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value as T;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}`);
    await sleep(100);
  }
}

/** Settle `promise` within `ms`: true if it resolved in time, false if it is still pending. Rejections throw. */
export async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  return Promise.race([promise.then(() => true), sleep(ms).then(() => false)]);
}

/** Poll `read` until `check` holds (generous by default: the machine is shared), or fail with what was last seen. */
export async function eventually<T>(what: string, read: () => Promise<T>, check: (value: T) => boolean, timeoutMs = 180_000): Promise<T> {
  let last: T | undefined;
  let error: unknown;
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await sleep(500)) {
    try {
      last = await read();
      if (check(last)) return last;
    } catch (e) {
      error = e;
    }
  }
  throw new Error(`${what}: last seen ${JSON.stringify(last)}${error ? ` (${(error as Error).message})` : ''}`);
}
