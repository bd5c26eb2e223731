// Helpers of bench/branch.ts: where a branch compute's creation went (from its Postgres log), and the memory of a
// repository's processes (from /proc). Generic timing, clusters and the machine header are in lib-snapshot.ts.
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { neonJson } from '../testkit/env.js';
import * as lib from './lib-snapshot.js';

// ---- a branch compute's log ----

/** The wall-clock stamps (as Date.now()) of a Postgres log's lines: `at(text)` is the first line with `text`. */
export function logStamps(file: string): { at(text: string, last?: boolean): number; line(text: string): string | undefined } {
  const lines = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n') : [];
  const stampOf = (line: string | undefined) => {
    const stamp = line && /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d+) UTC/.exec(line);
    return stamp ? Date.parse(`${stamp[1]}T${stamp[2]}Z`) : NaN;
  };
  return {
    at: (text, last = false) => stampOf(last ? lines.findLast((l) => l.includes(text)) : lines.find((l) => l.includes(text))),
    line: (text) => lines.find((l) => l.includes(text)),
  };
}

/** Where a new primary's time went, from the request (`requestedAt`) to its first answer (`answeredAt`). */
export interface BranchPhases {
  /** Request → Postgres starts: the CLI's start, the fork point, the image clone, WAL staging. */
  beforePgMs: number;
  /** Postgres starts → recovery begins: reading the control file, syncing the data directory. */
  startupMs: number;
  /** redo starts → redo done. Missing (NaN) when there was nothing to replay. */
  replayMs: number;
  /** Bytes of WAL between where redo started and where it was done (a segment switch's padding counts). */
  redoBytes: number;
  /** Postgres starts → ready to accept connections (startup, replay, promotion, end-of-recovery checkpoint). */
  pgMs: number;
  /** Ready → first answer: the password, the CLI's exit, the client's connection. */
  afterReadyMs: number;
}

export function branchPhases(repoDir: string, name: string, requestedAt: number, answeredAt: number): BranchPhases {
  const { at, line } = logStamps(path.join(repoDir, 'logs', `compute-${name}.log`));
  const lsnAfter = (text: string) => {
    const match = new RegExp(`${text} ([0-9A-F]+)/([0-9A-F]+)`).exec(line(text) ?? '');
    return match ? parseInt(match[1], 16) * 2 ** 32 + parseInt(match[2], 16) : NaN;
  };
  const started = at('starting PostgreSQL');
  const ready = at('database system is ready to accept connections', true);
  return {
    beforePgMs: started - requestedAt,
    startupMs: at('starting point-in-time recovery') - started,
    replayMs: at('redo done at') - at('redo starts at'),
    redoBytes: lsnAfter('redo done at') - lsnAfter('redo starts at'),
    pgMs: ready - started,
    afterReadyMs: answeredAt - ready,
  };
}

export type Metrics = Record<string, number>;

/**
 * `neon pg create -n NAME` until the new branch answers a query, with where the time went (keys prefixed with
 * `prefix`). Checks that the branch sees the data: pgbench_branches has `scale` rows.
 */
export async function branchToQuery(dir: string, name: string, scale: number, prefix: string): Promise<Metrics> {
  const requestedAt = Date.now();
  const t0 = performance.now();
  const made = await neonJson(['pg', 'create', '-n', name], { cwd: dir });
  await lib.firstQuery(made.connection_string);
  const totalMs = performance.now() - t0;
  const phases = branchPhases(path.join(dir, '.neon'), name, requestedAt, Date.now());
  const [{ n }] = await lib.query(made.connection_string, 'select count(*)::int as n from pgbench_branches');
  if (n !== scale) throw new Error(`branch ${name} sees ${n} pgbench_branches rows, not ${scale}`);
  const m: Metrics = { [`${prefix}Ms`]: totalMs };
  for (const [key, value] of Object.entries(phases)) m[`${prefix}${key[0].toUpperCase()}${key.slice(1)}`] = value;
  return m;
}

// ---- memory, from /proc ----

/** A field of /proc/<pid>/status or /proc/meminfo, in kB (NaN when gone). */
function kbField(file: string, field: string): number {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(file, 'utf8'));
    return match ? Number(match[1]) : 0;
  } catch {
    return NaN;
  }
}

export const memAvailableKb = () => kbField('/proc/meminfo', 'MemAvailable');

/** Every pid whose working directory is `dir` or under it (Postgres processes run in their data directory). */
export function pidsUnder(dir: string): number[] {
  const real = fs.realpathSync(dir);
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cwd = fs.readlinkSync(`/proc/${entry}/cwd`);
      if (cwd === real || cwd.startsWith(`${real}/`)) pids.push(Number(entry));
    } catch {
      // gone, or not ours to look at
    }
  }
  return pids;
}

/** The neon processes of a repository named by their command line (`… cli.js __daemon --repo DIR`). */
export function neonPids(repoDir: string, role: '__daemon' | '__safekeeper'): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (args.includes(role) && args[args.indexOf('--repo') + 1] === repoDir) pids.push(Number(entry));
    } catch {
      // gone
    }
  }
  return pids;
}

/** Summed VmRSS and Pss (shared pages split between their users) of processes, in bytes. */
export interface Memory {
  count: number;
  rss: number;
  pss: number;
}

export function memoryOf(pids: number[]): Memory {
  let rss = 0;
  let pss = 0;
  let count = 0;
  for (const pid of pids) {
    const r = kbField(`/proc/${pid}/status`, 'VmRSS');
    if (!Number.isFinite(r)) continue;
    count++;
    rss += r * 1024;
    const p = kbField(`/proc/${pid}/smaps_rollup`, 'Pss');
    pss += (Number.isFinite(p) ? p : r) * 1024;
  }
  return { count, rss, pss };
}

/** The memory of a repository's processes: its Postgres processes (all, and those under `only` computes), daemon, safekeepers. */
export function repoMemory(repoDir: string, only: string[] = []): Record<'postgres' | 'these' | 'daemon' | 'safekeepers', Memory> {
  const computes = path.join(repoDir, 'computes');
  const these = only.flatMap((name) => (fs.existsSync(path.join(computes, name)) ? pidsUnder(path.join(computes, name)) : []));
  return {
    postgres: memoryOf(pidsUnder(computes)),
    these: memoryOf(these),
    daemon: memoryOf(neonPids(repoDir, '__daemon')),
    safekeepers: memoryOf(neonPids(repoDir, '__safekeeper')),
  };
}
