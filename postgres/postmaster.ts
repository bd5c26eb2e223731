import fs from 'node:fs';
import path from 'node:path';
import type { LaunchedProcess, ProcessExit } from '../core/launcher.js';
import { isAlive, processesIn, signal, waitGone } from '../lib/proc.js';

/** What postmaster.pid says about a running (or crashed) server. */
export interface PostmasterInfo {
  pid: number;
  port: number;
  /** `ready`, `starting`, `stopping`, `standby` (PG 10+), or '' on older servers. */
  status: string;
}

/** Read `postmaster.pid` of a data directory; undefined when there is none (or it is half-written). */
export function readPostmasterPid(dataDir: string): PostmasterInfo | undefined {
  let lines: string[];
  try {
    lines = fs.readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n');
  } catch {
    return undefined;
  }
  const pid = Number(lines[0]);
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  return { pid, port: Number(lines[3]), status: (lines[7] ?? '').trim() };
}

/**
 * Stop whatever still runs in a data directory after a crash of the daemon: the orphaned postmaster (fast
 * shutdown, then immediate, then SIGKILL) and any backend left behind. Returns the pids it found.
 */
export async function stopLeftovers(dataDir: string): Promise<number[]> {
  const found = processesIn(dataDir);
  const postmaster = readPostmasterPid(dataDir);
  if (postmaster && isAlive(postmaster.pid) && found.includes(postmaster.pid)) {
    for (const [sig, wait] of [
      ['SIGINT', 30_000],
      ['SIGQUIT', 5_000],
      ['SIGKILL', 5_000],
    ] as const) {
      signal(postmaster.pid, sig);
      if (await waitGone([postmaster.pid], wait)) break;
    }
  }
  // Backends of a killed postmaster notice its death and exit on their own within moments.
  const rest = processesIn(dataDir);
  if (rest.length && !(await waitGone(rest, 5_000))) {
    for (const pid of rest) signal(pid, 'SIGKILL');
    await waitGone(rest, 5_000);
  }
  // A killed postmaster that is not our child may linger as a zombie until its new parent reaps it; Postgres would
  // take its pid for a live server and refuse to start. Nothing runs in the folder any more: the lock is stale.
  const lock = readPostmasterPid(dataDir);
  if (lock && !isAlive(lock.pid) && processesIn(dataDir).length === 0) fs.rmSync(path.join(dataDir, 'postmaster.pid'), { force: true });
  return found;
}

/**
 * Take over a postmaster that still runs in `dataDir` (started by a daemon that was killed): its process is not
 * our child, so its end is noticed by polling. Undefined when none runs there, or it is not ready for clients.
 */
export function adoptPostmaster(dataDir: string): (LaunchedProcess & { port: number }) | undefined {
  const info = readPostmasterPid(dataDir);
  if (!info || info.status !== 'ready' || !isAlive(info.pid) || !processesIn(dataDir).includes(info.pid)) return undefined;
  const { pid } = info;
  const exited = new Promise<ProcessExit>((resolve) => {
    const timer = setInterval(() => {
      if (isAlive(pid)) return;
      clearInterval(timer);
      resolve({ code: null, signal: null });
    }, 100);
  });
  return {
    pid,
    port: info.port,
    exited,
    kill: (sig) => {
      if (!isAlive(pid)) return false;
      signal(pid, sig);
      return true;
    },
  };
}
