import fs from 'node:fs/promises';
import path from 'node:path';
import { messageOf, NeonError } from './errors.js';
import type { Logger } from './log.js';
import type { Storage } from './storage.js';
import { parseLsn as parseWalLsn, segmentName, segmentOf } from './wal.js';

/** What the format bail hook is asked for (`--snapshot_format`). */
export interface FormatRequest {
  format: string;
}

/** Where a long export or import stands; `step` names the phase (`copy`, `base.tar`, `wal`, …). */
export interface FormatProgress {
  step: string;
  /** Bytes done in this step. */
  bytes: number;
  /** Bytes the step will handle, when known up front. */
  totalBytes?: number;
}

/** Options of {@link BackupFormat.exportTo}. */
export interface ExportOptions {
  /**
   * A consistent, cleanly stopped data directory (its pg_control says "shut down" and its last checkpoint is a
   * shutdown checkpoint). Neon materialises it; the format only reads it.
   */
  dataDir: string;
  /**
   * WAL segments up to and including the one holding the shutdown checkpoint, when they are not in
   * `dataDir/pg_wal` (neon keeps WAL apart). A format that ships WAL takes what it needs from here.
   */
  walDir?: string;
  /** Where the backup goes (a Storage opened on `--snapshot_path`: a folder or S3). */
  storage: Storage;
  /** Major version of the cluster (15, 16, 17, …). */
  pgVersion: number;
  log?: Logger;
  onProgress?: (progress: FormatProgress) => void;
}

/** What an export wrote. */
export interface ExportResult {
  /** One line for the user: what was written where. */
  description: string;
  /** Bytes written into the storage (after compression). */
  bytes: number;
}

/** Options of {@link BackupFormat.importFrom}. */
export interface ImportOptions {
  /** Where the backup is (a Storage opened on `--snapshot_path`). */
  storage: Storage;
  /** An empty folder to fill; after a failed import it is empty again. */
  dataDir: string;
  /** Take what would otherwise be refused (an unclean shutdown of a plain data directory), with a warning. */
  force?: boolean;
  /** Which backup, for formats that hold several (WAL-G: a backup name; default the newest). */
  backup?: string;
  log?: Logger;
  onProgress?: (progress: FormatProgress) => void;
}

/** What an import produced. */
export interface ImportResult {
  pgVersion: number;
  /** The cluster's system identifier (decimal), from pg_control. */
  systemId: string;
  /**
   * True when Postgres must replay WAL before the directory is consistent (a `backup_label` is present, or the
   * cluster was not shut down cleanly): start it once (the WAL it needs is in `dataDir/pg_wal`) and let it
   * finish recovery. False: the directory is a clean shutdown and can be used as is.
   */
  needsRecovery: boolean;
  /** One line for the user: what was imported. */
  description: string;
}

/**
 * A backup format: the code that packs a data directory into a storage and unpacks it again (plain pgdata,
 * basebackup tar, WAL-G layout, …). The storage API is the same for all formats; only the packing differs.
 *
 * Contract:
 * - `importFrom` validates before it writes: no `PG_VERSION` or `global/pg_control` in the backup → a
 *   `NeonError` and nothing written. Archives are untrusted: extract them with `core/archive.ts`.
 * - A failed import leaves `dataDir` empty (see {@link emptyDir}).
 * - The imported directory is owned by the importing process with modes 0700/0600; running Postgres as another
 *   user is the caller's business (chown).
 */
export interface BackupFormat {
  readonly name: string;
  /** Write the cleanly stopped data directory `dataDir` into `storage`. */
  exportTo?(options: ExportOptions): Promise<ExportResult>;
  /** Fill the empty folder `dataDir` from what `storage` holds. */
  importFrom?(options: ImportOptions): Promise<ImportResult>;
}

// ---- pg_control: what every format needs to validate and describe a cluster -------------------------------

/** The pg_control fields formats use. Offsets are the same in PostgreSQL 15 to 17 (ControlFileData). */
export interface ControlData {
  systemId: string;
  pgControlVersion: number;
  /** 0 starting up, 1 shut down, 2 shut down in recovery, 3 shutting down, 4 in crash recovery, 5 in archive recovery, 6 in production. */
  state: number;
  /** LSN of the latest checkpoint record. */
  checkpoint: bigint;
  /** Its redo point. */
  redo: bigint;
  timeline: number;
  blockSize: number;
  walSegmentSize: number;
}

export const DB_STATES = ['starting up', 'shut down', 'shut down in recovery', 'shutting down', 'in crash recovery', 'in archive recovery', 'in production'];

/** Parse pg_control (8192 bytes; layout of ControlFileData in src/include/catalog/pg_control.h). */
export function parseControlFile(buffer: Buffer, where = 'global/pg_control'): ControlData {
  if (buffer.length < 232) throw new NeonError('bad_backup', `${where} is ${buffer.length} bytes: not a pg_control file`);
  const control: ControlData = {
    systemId: buffer.readBigUInt64LE(0).toString(),
    pgControlVersion: buffer.readUInt32LE(8),
    state: buffer.readUInt32LE(16),
    checkpoint: buffer.readBigUInt64LE(32),
    redo: buffer.readBigUInt64LE(40),
    timeline: buffer.readUInt32LE(48),
    blockSize: buffer.readUInt32LE(216),
    walSegmentSize: buffer.readUInt32LE(228),
  };
  const segOk = control.walSegmentSize >= 1 << 20 && control.walSegmentSize <= 1 << 30 && (control.walSegmentSize & (control.walSegmentSize - 1)) === 0;
  if (control.pgControlVersion < 1300 || control.pgControlVersion > 9999 || control.blockSize !== 8192 || !segOk) {
    throw new NeonError('bad_backup', `${where} is not a pg_control file of PostgreSQL 15 or newer (version ${control.pgControlVersion}, block size ${control.blockSize})`);
  }
  return control;
}

/** True for a clean shutdown ("shut down" or "shut down in recovery"). */
export const isCleanShutdown = (control: ControlData) => control.state === 1 || control.state === 2;

/** Parse the text of PG_VERSION (`17\n`) into a major version; anything else is a NeonError. */
export function parsePgVersion(text: string, where = 'PG_VERSION'): number {
  const match = /^(\d+)\s*$/.exec(text);
  const version = match ? Number(match[1]) : NaN;
  if (!(version >= 15 && version < 100)) {
    throw new NeonError('bad_backup', `${where} says ${JSON.stringify(text.trim().slice(0, 20))}: neon imports PostgreSQL 15 or newer`);
  }
  return version;
}

/** Read and check PG_VERSION and global/pg_control of a data directory on disk. */
export async function inspectDataDir(dataDir: string): Promise<{ pgVersion: number; control: ControlData }> {
  const read = async (rel: string) => {
    try {
      return await fs.readFile(path.join(dataDir, rel));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new NeonError('bad_backup', `${dataDir} is not a Postgres data directory: ${rel} is missing`);
      }
      throw error;
    }
  };
  const pgVersion = parsePgVersion((await read('PG_VERSION')).toString('utf8'), path.join(dataDir, 'PG_VERSION'));
  const control = parseControlFile(await read('global/pg_control'), path.join(dataDir, 'global/pg_control'));
  return { pgVersion, control };
}

// ---- WAL names -------------------------------------------------------------------------------------------

// The LSN maths and WAL names are core/wal.ts's; a backup's text that is not an LSN is a `bad_backup` error.
export { formatLsn, isWalFileName } from './wal.js';

/** Parse `X/Y` read from a backup (a backup_label, a manifest). */
export function parseLsn(text: string): bigint {
  try {
    return parseWalLsn(text);
  } catch (error) {
    throw new NeonError('bad_backup', messageOf(error));
  }
}

/** The name of the WAL segment file holding `lsn` on `timeline`. */
export const walSegmentName = (timeline: number, lsn: bigint, segmentSize: number) =>
  segmentName(timeline, segmentOf(lsn, segmentSize), segmentSize);

// ---- failed imports --------------------------------------------------------------------------------------

/** Remove everything inside `dir` (the folder itself stays): what a failed import leaves behind. */
export async function emptyDir(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  await Promise.all(names.map((name) => fs.rm(path.join(dir, name), { recursive: true, force: true })));
}

/** Check that `dir` is an empty folder (created when missing) before an import writes into it. */
export async function checkEmptyTarget(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const names = await fs.readdir(dir);
  if (names.length) throw new NeonError('target_not_empty', `cannot import into ${dir}: it is not empty (${names.slice(0, 3).join(', ')}…)`);
  await fs.chmod(dir, 0o700);
}

// ---- data directory layout -------------------------------------------------------------------------------

/**
 * Folders a data directory needs that backups often leave empty or out (pg_basebackup and WAL-G skip the
 * contents of several): {@link ensurePgDirs} recreates them after an import.
 */
export const PGDATA_DIRS = [
  'base', 'global', 'pg_commit_ts', 'pg_dynshmem', 'pg_logical', 'pg_logical/mappings', 'pg_logical/snapshots',
  'pg_multixact', 'pg_multixact/members', 'pg_multixact/offsets', 'pg_notify', 'pg_replslot', 'pg_serial',
  'pg_snapshots', 'pg_stat', 'pg_stat_tmp', 'pg_subtrans', 'pg_tblspc', 'pg_twophase', 'pg_wal',
  'pg_wal/archive_status', 'pg_xact',
];

/** Create the folders of {@link PGDATA_DIRS} (and `pg_wal/summaries` from PostgreSQL 17) that are missing. */
export async function ensurePgDirs(dataDir: string, pgVersion: number): Promise<void> {
  const dirs = pgVersion >= 17 ? [...PGDATA_DIRS, 'pg_wal/summaries'] : PGDATA_DIRS;
  for (const dir of dirs) await fs.mkdir(path.join(dataDir, dir), { recursive: true, mode: 0o700 });
}

/** One entry of a data directory walk. */
export interface DataDirEntry {
  /** `/`-separated, relative to the data directory. */
  rel: string;
  abs: string;
  type: 'directory' | 'file';
  size: number;
  mtime: Date;
}

/**
 * Every folder and file under `dataDir`, parents first, in name order. `pg_wal` may be a symbolic link (initdb
 * -X) and is followed; any other symbolic link (tablespaces in pg_tblspc) is an error, since a backup would not
 * hold what it points to. `skip(rel, isDir)` leaves an entry out (a skipped folder's contents too).
 */
export async function walkDataDir(dataDir: string, skip: (rel: string, isDir: boolean) => boolean = () => false): Promise<DataDirEntry[]> {
  const out: DataDirEntry[] = [];
  const visit = async (relDir: string) => {
    const absDir = path.join(dataDir, relDir);
    const names = (await fs.readdir(absDir)).sort();
    for (const name of names) {
      const rel = relDir ? `${relDir}/${name}` : name;
      const abs = path.join(absDir, name);
      let stat = await fs.lstat(abs);
      if (stat.isSymbolicLink()) {
        if (rel !== 'pg_wal') {
          throw new NeonError('unsupported_datadir', `${abs} is a symbolic link${rel.startsWith('pg_tblspc/') ? ' (a tablespace)' : ''}: tablespaces and linked files are not supported`);
        }
        stat = await fs.stat(abs);
      }
      if (stat.isDirectory()) {
        if (skip(rel, true)) continue;
        out.push({ rel, abs, type: 'directory', size: 0, mtime: stat.mtime });
        await visit(rel);
      } else if (stat.isFile()) {
        if (!skip(rel, false)) out.push({ rel, abs, type: 'file', size: stat.size, mtime: stat.mtime });
      }
      // sockets and other special files (none belong in a data directory) are left out
    }
  };
  await visit('');
  return out;
}

/** The WAL files a cleanly stopped cluster needs to start: the segments from redo to checkpoint, and the history of its timeline. */
export function neededWal(control: ControlData): string[] {
  const names = new Set<string>();
  const seg = BigInt(control.walSegmentSize);
  for (let lsn = (control.redo / seg) * seg; lsn <= control.checkpoint; lsn += seg) names.add(walSegmentName(control.timeline, lsn, control.walSegmentSize));
  if (control.timeline > 1) names.add(control.timeline.toString(16).toUpperCase().padStart(8, '0') + '.history');
  return [...names];
}

/** Find a WAL file in `walDir`, else in `dataDir/pg_wal`; a missing segment is an error naming both. */
export async function findWalFile(name: string, dataDir: string, walDir?: string): Promise<string> {
  for (const dir of [walDir, path.join(dataDir, 'pg_wal')]) {
    if (!dir) continue;
    const file = path.join(dir, name);
    try {
      if ((await fs.stat(file)).isFile()) return file;
    } catch {
      // try the next folder
    }
  }
  throw new NeonError('wal_missing', `WAL file ${name} (needed to start the exported cluster) is in neither ${walDir ?? '(no WAL folder)'} nor ${path.join(dataDir, 'pg_wal')}`);
}
