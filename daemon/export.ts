import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { NeonError } from '../core/errors.js';
import type { FormatProgress } from '../core/format.js';
import { resolveFormat } from '../core/resolve.js';
import { formatLsn, type Lsn } from '../core/wal.js';
import type { RecoveryTarget } from '../pageserver/recovery.js';
import type { PgUser } from '../postgres/user.js';
import type { DaemonContext } from './context.js';
import { checkFormatName, openSnapshotPath, progressLogger, singleUser } from './import.js';
import { markPoint, primaryOfBranch, resolveTarget } from './snapshots.js';
import { withoutInternalHba } from '../postgres/internal.js';
import { UNSYNCED } from '../pageserver/unsynced.js';

/** What `neon export` asks for: where, in which format, and which point of history (default: main's present). */
export interface ExportRequest {
  snapshotPath: string;
  snapshotFormat: string;
  /** A snapshot name. */
  snapshot?: string;
  /** An LSN or a time (on `branch`, default the main compute's), or a snapshot name. */
  at?: string;
  branch?: string;
}

/** What an export did. */
export interface ExportSummary {
  snapshotPath: string;
  snapshotFormat: string;
  branch: string;
  /** The point exported: the LSN replay stopped at (the end of the WAL when the tip was asked for). */
  lsn: string | null;
  label: string;
  description: string;
  bytes: number;
}

/** The daemon as an export uses it: the context plus the Postgres user. */
export type ExportHost = DaemonContext & { readonly pgUser?: PgUser };

/** Where the point to export is: a snapshot, an LSN or time, or the present of a branch (marked now when it runs). */
async function targetOf(daemon: ExportHost, request: ExportRequest): Promise<{ branch: string; target: RecoveryTarget; label: string }> {
  if (request.snapshot !== undefined && request.at !== undefined) {
    throw new NeonError('bad_request', 'give --snapshot or --at, not both');
  }
  const at = request.snapshot ?? request.at;
  if (at !== undefined) {
    if (request.snapshot !== undefined) daemon.pageserver.history.snapshot(request.snapshot); // 404 when unknown
    const found = await resolveTarget(daemon, at, request.branch);
    return { branch: found.branch, target: { lsn: found.lsn, time: found.time, timeline: found.timeline, action: 'promote' }, label: found.label };
  }
  const branch = request.branch ?? daemon.mainBranch();
  daemon.pageserver.history.branch(branch);
  // The present of a running branch: a point marked now (its WAL is then on the safekeepers); else where its WAL ends.
  if (primaryOfBranch(daemon, branch)?.state === 'running') {
    const { lsn, timeline } = await markPoint(daemon, branch, 'export');
    return { branch, target: { lsn, timeline, action: 'promote' }, label: `the present of ${branch}` };
  }
  return { branch, target: { action: 'promote' }, label: `the end of ${branch}'s WAL` };
}

/**
 * Remove what only neon uses from a materialised data directory, so that vanilla Postgres runs it as it is:
 * neon.conf and the line including it, neon's block in pg_hba.conf, recovery signal files.
 */
export async function removeNeonSettings(dataDir: string): Promise<void> {
  for (const name of ['neon.conf', 'recovery.signal', 'standby.signal', 'postmaster.pid', 'postmaster.opts', UNSYNCED]) {
    await fs.rm(path.join(dataDir, name), { force: true });
  }
  const conf = path.join(dataDir, 'postgresql.conf');
  const text = await fs.readFile(conf, 'utf8').catch(() => undefined);
  if (text !== undefined) {
    const kept = text.replace(/\n?# Written by neon before every start\.\n/, '\n').replace(/^include_if_exists = 'neon\.conf'\n?/m, '');
    if (kept !== text) await fs.writeFile(conf, kept);
  }
  const hba = path.join(dataDir, 'pg_hba.conf');
  const rules = await fs.readFile(hba, 'utf8').catch(() => undefined);
  const kept = rules === undefined ? undefined : withoutInternalHba(rules);
  if (kept !== rules) await fs.writeFile(hba, kept!);
}

/**
 * Export a point of history: materialise it in a temporary data directory (the newest image before it plus the
 * WAL up to it), let Postgres replay to the point, promote and shut down cleanly (single-user mode: nothing can
 * connect), remove neon's own settings, and hand the stopped directory to the format plugin. The pages are the
 * ones vanilla Postgres wrote; the pgdata format copies files as they are. The exportSnapshot hooks run first.
 */
export async function exportPoint(
  daemon: ExportHost,
  request: ExportRequest,
  onProgress?: (progress: FormatProgress) => void,
): Promise<ExportSummary> {
  const formatName = checkFormatName(request.snapshotFormat);
  const format = await resolveFormat(daemon.hooks, formatName);
  if (!format.exportTo) throw new NeonError('format_cannot_export', `snapshot format ${formatName} cannot export`);
  const storage = await openSnapshotPath(daemon.hooks, request.snapshotPath, daemon.repo.dir, 'export');
  const { branch, target, label } = await targetOf(daemon, request);
  await daemon.hooks.exportSnapshot.promise({ repo: daemon.repo, log: daemon.log, snapshotPath: storage.url, snapshotFormat: formatName });
  const work = path.join(daemon.repo.dir, 'exports', `export-${randomBytes(4).toString('hex')}`);
  // Postgres (the Postgres user) replays in there: the folders are its own (the repository lets it pass through).
  await fs.mkdir(work, { recursive: true, mode: 0o700 });
  for (const dir of [path.dirname(work), work]) if (daemon.pgUser) await fs.chown(dir, daemon.pgUser.uid, daemon.pgUser.gid);
  const dataDir = path.join(work, 'pgdata');
  try {
    onProgress?.({ step: 'replay', bytes: 0 });
    const prepared = await daemon.pageserver.prepare(branch, target, dataDir, path.join(work, 'wal'), { scratch: true });
    const fields = await singleUser({
      binaries: daemon.binaries,
      dataDir,
      pgUser: daemon.pgUser,
      // Not a hot standby: the primary's max_connections, max_wal_senders, … need not be matched here.
      settings: { ...prepared.settings, hot_standby: 'off' },
      database: 'template1',
      input: 'select pg_last_wal_replay_lsn()::text as neon_lsn\n',
      what: `replaying WAL to ${label}`,
    });
    await removeNeonSettings(dataDir);
    const log = daemon.log.child('export');
    const progress = progressLogger(log, `export to ${storage.url}`);
    const result = await format.exportTo({
      dataDir,
      storage,
      pgVersion: daemon.binaries.version,
      log,
      onProgress: (p) => {
        progress(p);
        onProgress?.(p);
      },
    });
    return {
      snapshotPath: storage.url,
      snapshotFormat: formatName,
      branch,
      lsn: fields.neon_lsn || (target.lsn !== undefined ? formatLsn(target.lsn as Lsn) : null),
      label,
      description: result.description,
      bytes: result.bytes,
    };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}
