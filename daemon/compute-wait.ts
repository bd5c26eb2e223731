import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { NeonError } from '../core/errors.js';
import type { LaunchedProcess, ProcessExit } from '../core/launcher.js';
import { readPostmasterPid } from '../postgres/postmaster.js';
import { freePort } from '../lib/net.js';
import path from 'node:path';
import type { PgUser } from '../postgres/user.js';

/*
 * The waits of a compute (daemon/compute.ts): until Postgres accepts connections, then until an archive recovery
 * has reached its end (an exit on the way is an error that says why, from the compute's log); and the pause of its
 * supervisor before a restart.
 */

/** How long a compute may take to accept connections (crash recovery of a big WAL backlog can be slow). */
const READY_TIMEOUT_MS = 120_000;
/** How long an archive recovery may take to reach its target. */
const RECOVERY_TIMEOUT_MS = 30 * 60_000;

/** Restart backoff after unexpected exits: at once, then 1 s doubling to 30 s; reset by a healthy minute. */
const RESTART_MIN_MS = 1000;
const RESTART_MAX_MS = 30_000;
export const HEALTHY_UPTIME_MS = 60_000;

/** The pause before the next restart after `failures` failed attempts in a row. */
export function restartDelay(failures: number): number {
  return failures === 0 ? 0 : Math.min(RESTART_MIN_MS * 2 ** (failures - 1), RESTART_MAX_MS);
}

/** Postgres' complaint when the WAL ends before a recovery target (a time after the last commit). */
export const ENDED_BEFORE_TARGET = /recovery ended before configured recovery target was reached/;

/** The compute being waited for. */
export interface Waited {
  name: string;
  dataDir: string;
  logFile: string;
}

/** Postgres writes "ready" into postmaster.pid once it accepts connections (what `pg_ctl -w` waits for). */
export async function waitReady(compute: Waited, child: LaunchedProcess): Promise<void> {
  let exited: ProcessExit | undefined;
  child.exited.then((exit) => (exited = exit));
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (exited) {
      const reason = lastFatal(compute.logFile);
      throw new NeonError(
        'compute_start_failed',
        `compute ${compute.name} exited while starting (${reason ?? describe(exited)}); see ${compute.logFile}`,
        { status: reason ? 400 : 500 },
      );
    }
    const info = readPostmasterPid(compute.dataDir);
    if (info?.pid === child.pid && (info.status === 'ready' || info.status === 'standby')) return;
    if (Date.now() > deadline) {
      throw new NeonError(
        'compute_start_failed',
        `compute ${compute.name} did not become ready in ${READY_TIMEOUT_MS / 1000}s; see ${compute.logFile}`,
        { status: 500 },
      );
    }
    await sleep(15);
  }
}

/** Postgres' last word when it could not bind its port (waitReady quotes it), and how often another is tried. */
const PORT_TAKEN = /could not create any TCP\/IP sockets/;
const BIND_ATTEMPTS = 4;

/**
 * `start()` (a Postgres start until ready), again on a free port after `moveTo` it when Postgres could not bind
 * its own: the port is looked at before Postgres binds it, and another program may take it in between.
 */
export async function onFreePort<T>(start: () => Promise<T>, moveTo: (port: number) => Promise<void>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (error) {
      if (attempt >= BIND_ATTEMPTS || !PORT_TAKEN.test((error as Error).message)) throw error;
      await moveTo(await freePort());
    }
  }
}

/**
 * Archive recovery towards a target: wait until Postgres has promoted there (a primary), or paused there (a
 * static compute), or accepts read-only connections (a replica). Recovery that ends early (no WAL to reach the
 * target) makes Postgres exit: say why. Returns the LSN replay reached.
 */
export async function waitRecovery(
  compute: Waited & { settings: Record<string, string>; query(sql: string): Promise<Record<string, string | null>[]> },
  child: LaunchedProcess,
  until: 'promoted' | 'paused' | 'standby',
): Promise<string | undefined> {
  let exited: ProcessExit | undefined;
  child.exited.then((exit) => (exited = exit));
  const query = {
    promoted: 'select (not pg_is_in_recovery())::text as done, pg_last_wal_replay_lsn()::text as lsn',
    paused: "select (pg_get_wal_replay_pause_state() = 'paused')::text as done, pg_last_wal_replay_lsn()::text as lsn",
    // A replica is ready once it accepts read-only connections: it follows its primary from then on.
    standby: 'select pg_is_in_recovery()::text as done, pg_last_wal_replay_lsn()::text as lsn',
  }[until];
  // As a standby at the end of the WAL nothing pauses: done once replay has stood still for a while.
  const standby = until === 'paused' && !hasTarget(compute.settings);
  let still = 0;
  let previous: string | null | undefined;
  const deadline = Date.now() + RECOVERY_TIMEOUT_MS;
  for (;;) {
    if (exited) {
      const reason = lastFatal(compute.logFile);
      throw new NeonError(
        'recovery_failed',
        `compute ${compute.name} stopped during recovery${reason ? `: ${reason}` : ''}; see ${compute.logFile}`,
        { status: 400 },
      );
    }
    const [row] = await compute.query(query).catch(() => []);
    if (standby && row) {
      still = row.lsn === previous ? still + 1 : 0;
      previous = row.lsn;
      if (still >= 10) row.done = 'true';
    }
    if (row?.done === 'true') return row.lsn ?? undefined;
    if (Date.now() > deadline)
      throw new NeonError('recovery_failed', `compute ${compute.name} did not finish recovery in time; see ${compute.logFile}`);
    await sleep(50);
  }
}

/**
 * A static compute with no target left (a time after the last commit) follows the WAL to its end as a standby,
 * which stays read-only there; archive recovery would promote it.
 */
export function signalFor(dataDir: string, recovery: { until: string; settings: Record<string, string> }, owner?: PgUser): void {
  if (recovery.until !== 'paused' || hasTarget(recovery.settings)) return;
  fs.rmSync(path.join(dataDir, 'recovery.signal'), { force: true });
  fs.writeFileSync(path.join(dataDir, 'standby.signal'), '');
  if (owner) fs.chownSync(path.join(dataDir, 'standby.signal'), owner.uid, owner.gid);
}

/** True when recovery settings name a point to stop at. */
export function hasTarget(settings: Record<string, string>): boolean {
  return Object.keys(settings).some((key) => /^recovery_target_(lsn|time|xid|name)$/.test(key) || key === 'recovery_target');
}

/** The last FATAL or PANIC message of a compute's log, which says why it stopped. */
function lastFatal(logFile: string): string | undefined {
  try {
    const lines = fs.readFileSync(logFile, 'utf8').split('\n').slice(-50);
    const fatal = lines.reverse().find((line) => /\b(FATAL|PANIC):/.test(line));
    return fatal?.replace(/^.*?\b(FATAL|PANIC):\s*/, '');
  } catch {
    return undefined;
  }
}

/** How a process ended, in words. */
export function describe(exit: ProcessExit): string {
  return exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`;
}
