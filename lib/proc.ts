import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * True when a process with this pid runs (even if it belongs to another user). A zombie — dead, not yet reaped
 * by a parent that may never reap it — does not count.
 */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  return !isZombie(pid);
}

/** The command line of a process, or undefined when it is gone. Zombies have an empty one. */
export function cmdlineOf(pid: number): string[] | undefined {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return undefined;
  }
}

/** The pids of every process whose working directory is `dir` (Postgres processes run in their data directory). */
export function processesIn(dir: string): number[] {
  let real: string;
  try {
    real = fs.realpathSync(dir);
  } catch {
    return [];
  }
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (fs.readlinkSync(`/proc/${entry}/cwd`) === real) pids.push(Number(entry));
    } catch {
      // gone, or not ours to look at
    }
  }
  return pids;
}

/** Every pid whose command line contains `text` (used by tests and by stale-process cleanup). */
export function processesMatching(text: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmd = cmdlineOf(Number(entry));
    if (cmd?.some((arg) => arg.includes(text))) pids.push(Number(entry));
  }
  return pids;
}

/** Wait until none of `pids` is alive, up to `timeoutMs`; true when they all went. */
export async function waitGone(pids: number[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = pids.filter(isAlive);
    if (left.length === 0) return true;
    if (Date.now() > deadline) return false;
    await sleep(25);
  }
}

function isZombie(pid: number): boolean {
  try {
    return / Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\)/, ''));
  } catch {
    return false;
  }
}

/** Send `signal` to a process, ignoring one that is already gone. */
export function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/**
 * Node flags of the daemon process. `--expose-gc` lets it collect once its last worker thread has ended
 * (collectWhenIdle in ./worker.ts): after an image, V8 holds tens of MB of dead buffers and an old space grown
 * for the image until allocation pressure triggers a GC, which an idle daemon never has (1 GB, 20 s after the
 * image: RSS 198 MB against 225 MB, medians of 3).
 */
export const DAEMON_NODE_FLAGS = ['--expose-gc'];

/**
 * Environment the daemon starts with (its watchdog passes it on; Postgres and the safekeepers get environments of
 * their own). glibc's malloc then maps every block of 128 KiB or more on its own and unmaps it once freed. By
 * default that threshold rises to the largest block freed (up to 32 MiB), after which an image's 1 MiB buffers
 * come from the heap, whose freed middle is never given back: at 1 GB the daemon kept ~100 MB of it (RSS 20 s
 * after an image 123 MB with the setting, 200 MB without). Other C libraries ignore the variable; a value the
 * user set wins.
 */
export const DAEMON_ENV: Record<string, string> = { MALLOC_MMAP_THRESHOLD_: String(128 * 1024) };
