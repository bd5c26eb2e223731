import { setTimeout as sleep } from 'node:timers/promises';
import type { DaemonContext } from './context.js';
import { NeonError } from '../core/errors.js';
import { isPrimary } from './repository.js';
import type { Compute } from './compute.js';
import { formatLsn, type Lsn, parseLsn } from '../core/wal.js';
import { checkName, type Snapshot } from '../pageserver/history.js';

/** A point of history as the user named it, resolved. */
export interface Target {
  branch: string;
  lsn?: Lsn;
  time?: Date;
  timeline?: number;
  snapshot?: Snapshot;
  /** How to name it in messages. */
  label: string;
}

const LSN = /^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/;

/** The compute that writes a branch's WAL now, if it has one (stopped or running). */
export function primaryOfBranch(daemon: DaemonContext, branch: string): Compute | undefined {
  return [...daemon.computes.values()].find((c) => c.record.branch === branch && isPrimary(c.record) && !c.record.retired);
}

/** A branch's primary, running: what a point of its present is taken from. */
function runningPrimary(daemon: DaemonContext, branch: string): Compute {
  const primary = primaryOfBranch(daemon, branch);
  if (!primary || primary.state !== 'running') {
    throw new NeonError(
      'not_running',
      `branch ${branch} has no running primary compute${primary ? ` (neon pg start -n ${primary.record.name})` : ''}`,
      {
        status: 409,
      },
    );
  }
  return primary;
}

/**
 * Mark the present of a branch: its primary's insert position, followed by a small committed WAL record. Recovery
 * to an LSN stops before the first record starting there, so a record must exist after the point; the commit
 * (which waits for the safekeepers) makes everything before it durable too.
 */
export async function markPoint(daemon: DaemonContext, branch: string, label: string): Promise<{ lsn: Lsn; timeline: number }> {
  const primary = runningPrimary(daemon, branch);
  // A point must come after an image it can be reached from (right after init, the first one is being taken).
  await daemon.pageserver.firstImageReady();
  const [row] = await primary.query(
    `select lsn::text, ('x' || substr(pg_walfile_name(lsn), 1, 8))::bit(32)::int::text as tli, ` +
      `pg_logical_emit_message(true, 'neon', ${quoteLiteral(label)}) from pg_current_wal_insert_lsn() as lsn`,
  );
  const point = { lsn: parseLsn(row.lsn!), timeline: Number(row.tli) };
  await waitForSafekeepers(daemon, branch, point.lsn);
  return point;
}

function quoteLiteral(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

/** The newest LSN of a branch: its primary's position when it runs, else where its WAL ends. */
async function tipOf(daemon: DaemonContext, branch: string): Promise<Lsn | undefined> {
  const primary = primaryOfBranch(daemon, branch);
  if (primary?.state === 'running') {
    const [row] = await primary.query('select pg_current_wal_flush_lsn()::text as lsn');
    return parseLsn(row.lsn!);
  }
  const left = daemon.pageserver.history.branch(branch).tipLsn;
  return left ? parseLsn(left) : daemon.safekeepers.flushedOf(branch);
}

/** Resolve a snapshot name, an LSN (on `branch`, default the main compute's), or a time. */
export async function resolveTarget(daemon: DaemonContext, text: unknown, branch?: string): Promise<Target> {
  if (typeof text !== 'string' || !text.trim()) {
    throw new NeonError('bad_target', 'a target is needed: a snapshot name, an LSN (like 0/16B3748) or a time (like 2026-11-21T10:00:00Z)');
  }
  const history = daemon.pageserver.history;
  if (history.hasSnapshot(text)) {
    const snapshot = history.snapshot(text);
    return {
      branch: snapshot.branch,
      lsn: parseLsn(snapshot.lsn),
      timeline: snapshot.timeline,
      snapshot,
      label: `snapshot ${snapshot.name}`,
    };
  }
  const on = branch ?? daemon.computes.get('main')?.record.branch ?? 'main';
  history.branch(on);
  if (LSN.test(text)) {
    const lsn = parseLsn(text);
    const tip = await tipOf(daemon, on);
    if (tip !== undefined && lsn > tip) {
      throw new NeonError('future_lsn', `LSN ${text} is in the future of branch ${on}, whose WAL ends at ${formatLsn(tip)}`);
    }
    return { branch: on, lsn, label: `LSN ${text} of ${on}` };
  }
  const time = /\d{4}-\d{2}-\d{2}/.test(text) ? new Date(text) : undefined;
  if (time && !Number.isNaN(time.getTime())) {
    if (time.getTime() > Date.now()) throw new NeonError('future_time', `${text} is in the future`);
    return { branch: on, time, label: `time ${time.toISOString()} on ${on}` };
  }
  throw new NeonError('bad_target', `"${text}" is not a snapshot name, an LSN (like 0/16B3748) or a time (like 2026-11-21T10:00:00Z)`);
}

/** A default snapshot name from the time: `snap-20261121-103000`, with a suffix when taken. */
function defaultName(daemon: DaemonContext, prefix: string): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  let name = `${prefix}-${stamp}`;
  for (let i = 2; daemon.pageserver.history.hasSnapshot(name); i++) name = `${prefix}-${stamp}-${i}`;
  return name;
}

/**
 * Record a snapshot of the main compute's branch at the primary's flushed position. No data is copied: once the
 * safekeepers hold the WAL up to that point (a commit waits for them anyway), the point can always be reached.
 */
export async function createSnapshot(daemon: DaemonContext, options: { name?: unknown; auto?: boolean } = {}): Promise<Snapshot> {
  const name = options.name === undefined ? defaultName(daemon, options.auto ? 'auto' : 'snap') : checkName('snapshot', options.name);
  if (daemon.pageserver.history.hasSnapshot(name))
    throw new NeonError('snapshot_exists', `a snapshot named "${name}" already exists`, { status: 409 });
  const branch = daemon.mainBranch();
  const { lsn, timeline } = await markPoint(daemon, branch, `snapshot ${name}`);
  const snapshot = await daemon.pageserver.history.addSnapshot({
    name,
    branch,
    lsn: formatLsn(lsn),
    timeline,
    createdAt: new Date().toISOString(),
    auto: options.auto ?? false,
  });
  await daemon.hooks.snapshot.promise({ repo: daemon.repo, log: daemon.log, name, branch: snapshot.branch, lsn: snapshot.lsn });
  daemon.sync?.schedule();
  return snapshot;
}

/** Wait until a quorum of safekeepers has flushed `lsn` (it is then durable outside the compute). */
async function waitForSafekeepers(daemon: DaemonContext, branch: string, lsn: Lsn, timeoutMs = 10_000): Promise<void> {
  const nodes = daemon.safekeepers.nodes;
  if (!nodes.length) return;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const durable = nodes.filter((n) => {
      const flushed = n.statusOf(branch).flushLsn;
      return flushed && parseLsn(flushed) >= lsn;
    }).length;
    if (durable >= daemon.safekeepers.quorum) return;
    if (Date.now() > deadline) {
      throw new NeonError(
        'safekeepers_behind',
        `the safekeepers have not received the WAL up to ${formatLsn(lsn)}; see neon safekeeper list`,
        { status: 503 },
      );
    }
    await sleep(20);
  }
}

/** One line of `neon log`. */
export interface LogEntry {
  time: string;
  kind: 'branch' | 'snapshot' | 'image';
  name: string;
  branch: string;
  lsn: string | null;
  detail: string;
}

/** History as a time line: branches created, snapshots taken, base images stored. */
export async function historyLog(daemon: DaemonContext): Promise<LogEntry[]> {
  const { history } = daemon.pageserver;
  const entries: LogEntry[] = [];
  for (const branch of history.branches()) {
    const detail = branch.parent ? `forked from ${branch.parent} at ${branch.forkLsn}` : 'root';
    entries.push({ time: branch.createdAt, kind: 'branch', name: branch.name, branch: branch.name, lsn: branch.forkLsn, detail });
    for (const image of daemon.pageserver.images(branch.name)) {
      const manifest = await daemon.pageserver.readImage(image.key);
      entries.push({
        time: manifest.createdAt,
        kind: 'image',
        name: image.key,
        branch: branch.name,
        lsn: manifest.endLsn,
        detail: `${manifest.kind}, ${Math.round(manifest.rawBytes / 1048576)} MB of files, ${Math.round(manifest.newBytes / 1024)} kB new`,
      });
    }
  }
  for (const snapshot of history.snapshots()) {
    entries.push({
      time: snapshot.createdAt,
      kind: 'snapshot',
      name: snapshot.name,
      branch: snapshot.branch,
      lsn: snapshot.lsn,
      detail: snapshot.auto ? 'automatic' : '',
    });
  }
  return entries.sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : 0));
}
