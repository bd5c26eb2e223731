import { rmSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { NeonError } from '../core/errors.js';
import { inspectDataDir, isCleanShutdown, type FormatProgress, type ImportResult } from '../core/format.js';
import type { NeonHooks } from '../core/hooks.js';
import type { Logger } from '../core/log.js';
import { resolveFormat, resolveStorage } from '../core/resolve.js';
import { parseStorageUrl, type Storage } from '../core/storage.js';
import { findBinaries, type PgBinaries } from '../postgres/binaries.js';
import type { Pageserver } from '../pageserver/pageserver.js';
import { takeOfflineImage } from '../pageserver/take-image.js';
import type { ComputeRecord } from './repository.js';
import { asUser, chownTo, type PgUser } from '../postgres/user.js';

/** Where a one-time import comes from: `--snapshot_path` and `--snapshot_format` (never saved in the config). */
export interface SnapshotSource {
  /** As the user typed it: a folder, `file:///…`, `s3://bucket/prefix`, `FILE_PREFIX=…` or `S3_PREFIX=…`. */
  path: string;
  /** `pgdata`, `tar`, `walg`, or one a plugin adds. */
  format: string;
  /** For formats that hold several backups (WAL-G): which one (default the newest). */
  backup?: string;
  /** Take an unclean shutdown (Postgres then runs crash recovery). */
  force?: boolean;
}

/** A backup unpacked into a staging folder, checked, not yet part of any repository. */
export interface StagedImport {
  dir: string;
  result: ImportResult;
  /** The normalised URL it came from. */
  from: string;
  format: string;
}

/**
 * Open `--snapshot_path` through the storage plugin of its scheme (credentials come from the environment, as
 * for storage_dest). An import from a folder that does not exist is refused here: opening a folder storage
 * would create it.
 */
export async function openSnapshotPath(hooks: NeonHooks, raw: string | undefined, cwd: string, purpose: 'import' | 'export'): Promise<Storage> {
  if (!raw?.trim()) {
    throw new NeonError('snapshot_path_missing', `--snapshot_path is needed: the folder or URL to ${purpose} ${purpose === 'import' ? 'from' : 'to'}`);
  }
  const request = parseStorageUrl(raw, cwd);
  if (request.scheme === 'file' && purpose === 'import') {
    const dir = fileURLToPath(request.url);
    const stat = await fs.stat(dir).catch(() => undefined);
    if (!stat?.isDirectory()) throw new NeonError('snapshot_path_missing', `--snapshot_path ${dir} does not exist or is not a folder: nothing to import`);
  }
  return resolveStorage(hooks, request);
}

/** Check `--snapshot_format` before anything else happens. */
export function checkFormatName(format: string | undefined): string {
  if (!format?.trim()) throw new NeonError('snapshot_format_missing', '--snapshot_format is needed: pgdata, tar or walg');
  return format.trim();
}

/**
 * Unpack a backup into `stagingDir` (which must not exist) and check it: everything that can be wrong with the
 * input fails here, before the repository is touched. The importSnapshot hooks run first (a plugin may refuse).
 */
export async function stageImport(
  hooks: NeonHooks,
  source: SnapshotSource,
  context: { repoDir: string; cwd: string; stagingDir: string; log: Logger; onProgress?: (progress: FormatProgress) => void },
): Promise<StagedImport> {
  const formatName = checkFormatName(source.format);
  const format = await resolveFormat(hooks, formatName);
  if (!format.importFrom) throw new NeonError('format_cannot_import', `snapshot format ${formatName} cannot import`);
  const storage = await openSnapshotPath(hooks, source.path, context.cwd, 'import');
  await hooks.importSnapshot.promise({ repo: { dir: context.repoDir }, log: context.log, snapshotPath: storage.url, snapshotFormat: formatName });
  await fs.mkdir(path.dirname(context.stagingDir), { recursive: true });
  try {
    const result = await format.importFrom({
      storage,
      dataDir: context.stagingDir,
      force: source.force,
      backup: source.backup,
      log: context.log,
      onProgress: context.onProgress,
    });
    return { dir: context.stagingDir, result, from: storage.url, format: formatName };
  } catch (error) {
    await fs.rm(context.stagingDir, { recursive: true, force: true });
    throw error;
  }
}

/** The staging folder of an import beside `repoDir` (same file system: it is renamed into place). */
export const stagingDirFor = (repoDir: string) => path.join(path.dirname(path.resolve(repoDir)), `.${path.basename(repoDir)}-import-${process.pid}`);

/** The login neon found (and gave a new password) in an imported cluster. */
export interface ImportedLogin {
  /** The cluster's bootstrap superuser (the role initdb made). */
  user: string;
  database: string;
}

const DEFAULT_HBA = [
  '# Written by neon: the imported backup had no pg_hba.conf (Debian keeps it in /etc/postgresql).',
  'local all all scram-sha-256',
  'host all all 127.0.0.1/32 scram-sha-256',
  'host all all ::1/128 scram-sha-256',
  'local replication all scram-sha-256',
  'host replication all 127.0.0.1/32 scram-sha-256',
  '',
].join('\n');

/**
 * Make an imported data directory one neon can run: config files it lacks (a Debian cluster keeps them in
 * /etc/postgresql), postgresql.conf including the neon.conf the daemon writes before each start, and every file
 * owned by the Postgres user.
 */
export async function prepareImportedDir(dataDir: string, pgUser: PgUser | undefined, log: Logger): Promise<void> {
  const conf = path.join(dataDir, 'postgresql.conf');
  const text = await fs.readFile(conf, 'utf8').catch(() => undefined);
  if (text === undefined) log.warn('the backup has no postgresql.conf: neon writes an empty one (settings come from neon.config.ts)');
  if (!text?.includes("include_if_exists = 'neon.conf'")) {
    await fs.appendFile(conf, "\n# Written by neon before every start.\ninclude_if_exists = 'neon.conf'\n", { mode: 0o600 });
  }
  const hba = path.join(dataDir, 'pg_hba.conf');
  if (!(await fs.stat(hba).catch(() => undefined))) {
    log.warn('the backup has no pg_hba.conf: neon writes one that asks every login for its password');
    await fs.writeFile(hba, DEFAULT_HBA, { mode: 0o600 });
  }
  const ident = path.join(dataDir, 'pg_ident.conf');
  if (!(await fs.stat(ident).catch(() => undefined))) await fs.writeFile(ident, '', { mode: 0o600 });
  await fs.chmod(dataDir, 0o700);
  await chownTo(pgUser, dataDir, true);
}

/** Options of {@link singleUser}. */
export interface SingleUserOptions {
  binaries: PgBinaries;
  dataDir: string;
  pgUser?: PgUser;
  /** Extra settings (-c) for this run: recovery settings, … */
  settings?: Record<string, string>;
  database: string;
  /** SQL, one statement per line (single-user mode runs each line). */
  input: string;
  /** What the run is, for the error message. */
  what: string;
}

/**
 * Run Postgres once in single-user mode on a stopped data directory: no socket, no TCP (nobody can connect
 * while it runs), recovery (crash recovery from a backup_label, or archive recovery with recovery.signal) first,
 * the SQL of `input` after, and a shutdown checkpoint at the end: the directory is then cleanly shut down.
 * Returns the `name = "value"` fields Postgres printed.
 */
export async function singleUser(options: SingleUserOptions): Promise<Record<string, string>> {
  const flags = Object.entries({ ...options.settings, password_encryption: 'scram-sha-256' }).flatMap(([key, value]) => ['-c', `${key}=${value}`]);
  const run = await execa(path.join(options.binaries.binDir, 'postgres'), ['--single', '-D', options.dataDir, ...flags, options.database], {
    ...asUser(options.pgUser),
    cwd: options.dataDir,
    input: options.input,
    reject: false,
    env: { LC_ALL: 'C', LANG: 'C', TZ: 'UTC' },
    extendEnv: true,
  });
  const errors = `${run.stderr}`.split('\n').filter((line) => /\b(FATAL|ERROR|PANIC)\b/.test(line));
  if (run.exitCode !== 0 || errors.length) {
    const tail = `${run.stderr}`.trim().split('\n').slice(-2).join(' / ');
    throw new NeonError('recovery_failed', `${options.what} failed: ${errors.slice(-2).join(' / ') || `postgres --single exited with ${run.exitCode}: ${tail}`}`, {
      status: 500,
    });
  }
  const fields: Record<string, string> = {};
  for (const match of `${run.stdout}`.matchAll(/\b(neon_\w+) = "([^"]*)"/g)) fields[match[1]] = match[2];
  return fields;
}

/**
 * Finish an imported data directory: Postgres replays the WAL it came with (when the backup needs it) and shuts
 * down cleanly; in the same run the cluster's bootstrap superuser (the role initdb made, whatever its name) gets
 * `password`, since neon cannot know the passwords of the imported roles. Returns that login.
 */
export async function recoverImported(options: {
  binaries: PgBinaries;
  dataDir: string;
  pgUser?: PgUser;
  password: string;
}): Promise<ImportedLogin> {
  if (!/^[A-Za-z0-9_-]+$/.test(options.password)) throw new Error('generated passwords are base64url');
  const input = [
    'select rolname as neon_user from pg_authid where oid = 10',
    "select coalesce((select datname from pg_database where datname = 'postgres'), (select datname from pg_database where not datistemplate and datallowconn order by oid limit 1), 'template1') as neon_db",
    `do $$ begin execute format('alter role %I password %L', (select rolname from pg_authid where oid = 10), '${options.password}'); end $$`,
    '',
  ].join('\n');
  const fields = await singleUser({ ...options, database: 'template1', input, what: 'recovering the imported cluster' });
  const { control } = await inspectDataDir(options.dataDir);
  if (!isCleanShutdown(control)) throw new NeonError('recovery_failed', `the imported cluster did not shut down cleanly after recovery`, { status: 500 });
  if (!fields.neon_user || !fields.neon_db) throw new NeonError('recovery_failed', 'the imported cluster did not name its superuser', { status: 500 });
  return { user: fields.neon_user, database: fields.neon_db };
}

/**
 * `neon init --snapshot_path`: unpack and check the backup beside the repository (nothing in the repository
 * changes if it is bad), and check that its major version is the one asked for and that binaries of it exist.
 * The staging folder is removed when this process exits, unless it was adopted by then.
 */
export async function stageInitImport(
  hooks: NeonHooks,
  source: SnapshotSource,
  context: { repoDir: string; cwd: string; log: Logger; pgVersion?: number; storageHoldsRepository?: string; bin?: string },
): Promise<StagedImport> {
  if (context.storageHoldsRepository) {
    throw new NeonError(
      'storage_not_empty',
      `storage_dest ${context.storageHoldsRepository} already holds a repository: import into an empty storage_dest, or leave out --snapshot_path to bring that repository back`,
      { status: 409 },
    );
  }
  const stagingDir = stagingDirFor(context.repoDir);
  await fs.rm(stagingDir, { recursive: true, force: true });
  const staged = await stageImport(hooks, source, { ...context, stagingDir, onProgress: progressLogger(context.log, 'import') });
  process.once('exit', () => void rmSync(stagingDir, { recursive: true, force: true }));
  try {
    if (context.pgVersion !== undefined && context.pgVersion !== staged.result.pgVersion) {
      throw new NeonError('bad_pg_version', `${staged.from} holds a PostgreSQL ${staged.result.pgVersion} cluster, not ${context.pgVersion}: pass --pg-version ${staged.result.pgVersion}`);
    }
    await findBinaries({ version: staged.result.pgVersion, bin: context.bin });
  } catch (error) {
    await fs.rm(stagingDir, { recursive: true, force: true });
    throw error;
  }
  context.log.info('imported %s', staged.result.description);
  return staged;
}

/**
 * The staged import becomes the main compute's data directory: Postgres finishes its recovery there, the main
 * login becomes the cluster's bootstrap superuser with `main.password`, and the first base image of `main` is
 * taken from it, stopped: the repository's history starts at the imported cluster.
 */
export async function adoptImport(
  staged: StagedImport,
  context: { pageserver: Pageserver; binaries: PgBinaries; pgUser?: PgUser; dataDir: string; main: ComputeRecord; log: Logger },
): Promise<void> {
  const { pageserver, binaries, pgUser, dataDir, main } = context;
  await fs.mkdir(path.dirname(dataDir), { recursive: true, mode: 0o755 });
  await moveDir(staged.dir, dataDir);
  await prepareImportedDir(dataDir, pgUser, context.log);
  const login = await recoverImported({ binaries, dataDir, pgUser, password: main.password });
  main.user = login.user;
  main.database = login.database;
  await pageserver.createMain();
  await pageserver.takeImage((mirror) => takeOfflineImage({ store: pageserver.store, branch: 'main', pgVersion: binaries.version, dataDir, mirror }));
}

/** Rename a folder; across file systems, copy it and remove the original. */
export async function moveDir(from: string, to: string): Promise<void> {
  try {
    await fs.rename(from, to);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EXDEV') throw error;
    await fs.cp(from, to, { recursive: true, preserveTimestamps: true });
    await fs.rm(from, { recursive: true, force: true });
  }
}

/** Progress of a transfer as log lines, at most one per step and 10 %. */
export function progressLogger(log: Logger, what: string): (progress: FormatProgress) => void {
  let step = '';
  let tenth = -1;
  return ({ step: now, bytes, totalBytes }) => {
    const share = totalBytes ? Math.floor((bytes / totalBytes) * 10) : 0;
    if (now === step && share === tenth) return;
    step = now;
    tenth = share;
    log.info('%s: %s %d MB%s', what, now, Math.round(bytes / 1024 / 1024), totalBytes ? ` of ${Math.round(totalBytes / 1024 / 1024)} MB` : '');
  };
}
