import fs from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

/**
 * The entry file of a worker thread: `<folder>/<name>.js` in dist/ (the caller is bundled into dist/<folder>/ or
 * dist/chunks/, one level below dist/), or `<name>.ts` beside the caller when run from sources under tsx (tests,
 * benchmarks). `from` is the caller's `import.meta.url`. Undefined when neither exists.
 */
export function workerEntry(from: string, folder: string, name: string): URL | undefined {
  const candidates = from.endsWith('.ts') ? [`./${name}.ts`] : [`../${folder}/${name}.js`, `./${name}.js`, `./${folder}/${name}.js`];
  for (const candidate of candidates) {
    const url = new URL(candidate, from);
    if (url.protocol === 'file:' && fs.existsSync(fileURLToPath(url))) return url;
  }
  return undefined;
}

/** Start a worker thread on `entry`; from sources, the worker first needs tsx's loader to import a .ts entry. */
export function startWorker(entry: URL, name: string, workerData?: unknown): Worker {
  return entry.pathname.endsWith('.ts')
    ? new Worker(`import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(entry.href)}); });`, {
        eval: true,
        name,
        workerData,
      })
    : new Worker(entry, { name, workerData });
}

/**
 * Called first by a background worker thread: lower its own scheduling priority (nice 10), so that on a machine with
 * fewer cores than busy threads the daemon's event loop (REST answers, WAL acknowledgements) runs as soon as it has
 * work, and the hashing or copying waits instead. Linux applies a priority to one thread when given its thread id;
 * elsewhere (no /proc/thread-self) the thread keeps its priority.
 */
export function backgroundThread(): void {
  try {
    const tid = Number(fs.readlinkSync('/proc/thread-self').split('/').pop());
    if (tid) os.setPriority(tid, 10);
  } catch {
    // not Linux, or not allowed: only responsiveness under load is at stake
  }
}

/** A full garbage collection, where the process allows it (the daemon: see DAEMON_NODE_FLAGS in ./proc.ts); else nothing. */
export function collectWhenIdle(): void {
  (globalThis as { gc?: () => void }).gc?.();
}
