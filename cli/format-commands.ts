import type { CAC } from 'cac';
import { NeonError } from '../core/errors.js';
import { parseStorageUrl } from '../core/storage.js';
import type { Wire } from '../core/rest.js';
import type { OperationInfo } from '../daemon/operations.js';
import { Repository, repoDirFrom } from '../daemon/repository.js';
import type { TransferResult } from '../daemon/transfer.js';
import { formatBytes, followOperation, progressMode, ProgressView } from './progress.js';

interface Options {
  json?: boolean;
  repo?: string;
}

/** What the command table lends these commands. */
export interface FormatCommandDeps {
  call: <T>(options: Options, method: string, path: string, body?: unknown) => Promise<T>;
  print: (options: Options, value: unknown, human: () => string) => void;
}

type SnapshotOptions = Options & { snapshot_path?: unknown; snapshot_format?: unknown };

/**
 * `--snapshot_path` as the daemon must see it: a URL, relative paths made absolute here where they were typed
 * (the daemon runs elsewhere). Missing options are one clear line before anything happens.
 */
function snapshotOptions(options: SnapshotOptions, purpose: 'import' | 'export'): { path: string; format: string } {
  if (options.snapshot_path === undefined || options.snapshot_path === true || String(options.snapshot_path).trim() === '') {
    throw new NeonError('snapshot_path_missing', `--snapshot_path is needed: the folder or URL (s3://bucket/prefix) to ${purpose} ${purpose === 'import' ? 'from' : 'to'}`);
  }
  if (options.snapshot_format === undefined || options.snapshot_format === true || String(options.snapshot_format).trim() === '') {
    throw new NeonError(
      'snapshot_format_missing',
      `--snapshot_format is needed: pgdata, tar or walg${purpose === 'import' ? ` (${options.snapshot_path} holds no neon repository to clone)` : ', or neon with --snapshot'}`,
    );
  }
  return { path: parseStorageUrl(String(options.snapshot_path)).url, format: String(options.snapshot_format) };
}

const connectionString = (c: { user: string; password: string; port: number; database: string }) =>
  `postgresql://${encodeURIComponent(c.user)}:${encodeURIComponent(c.password)}@127.0.0.1:${c.port}/${encodeURIComponent(c.database)}`;

/**
 * `neon init --snapshot_path=… --snapshot_format=…` (seed 003, scenario 3): a repository whose main compute runs
 * the imported cluster. Runs here, like `neon init`: no daemon runs yet.
 */
export async function initFromSnapshot(
  options: SnapshotOptions & { storage_dest?: unknown; pgVersion?: number; force?: boolean; backup?: unknown },
  storageDest: Awaited<ReturnType<typeof parseStorageUrl>> | undefined,
  print: FormatCommandDeps['print'],
): Promise<void> {
  // Seed 003's "neon format": a storage a neon repository pushed to is cloned, not imported as a backup.
  if (options.snapshot_format === undefined || String(options.snapshot_format) === NEON_FORMAT) {
    const cloned = await initFromNeonStorage(options, storageDest, print);
    if (cloned) return;
  }
  const source = snapshotOptions(options, 'import');
  const { initRepository } = await import('../daemon/init.js');
  const { createLogger, silentLogger } = await import('../core/log.js');
  const { meta, repo } = await initRepository({
    repoDir: repoDirFrom(options.repo),
    projectDir: process.cwd(),
    storageDest,
    pgVersion: options.pgVersion,
    force: options.force,
    snapshot: { ...source, force: options.force, backup: options.backup === undefined ? undefined : String(options.backup) },
    // Progress and warnings (a config file the backup lacked, …) go to stderr; --json prints only the result.
    log: options.json ? silentLogger : createLogger('import', (line) => process.stderr.write(line)),
  });
  const main = (await new Repository(repo.dir).readState()).computes.main;
  const result = {
    repository: repo.dir,
    postgres: meta.postgres,
    storage_dest: meta.storageDest ?? null,
    imported_from: source.path,
    snapshot_format: source.format,
    user: main.user,
    database: main.database,
    connection: connectionString(main),
  };
  print(options, result, () =>
    [
      `Initialised a neon repository in ${repo.dir} from ${source.path} (${source.format})`,
      `PostgreSQL ${meta.postgres.fullVersion} (${meta.postgres.source}, ${meta.postgres.binDir})`,
      meta.storageDest ? `storage_dest: ${meta.storageDest}` : 'storage_dest: none (history stays in the repository)',
      `The imported roles keep their passwords, except the superuser ${main.user}, which has a new one (neon cannot read passwords):`,
      `  ${result.connection}`,
      'Next: neon start (it prints the connection string again: the port moves when another server holds it)',
    ].join('\n'),
  );
}

/** `--snapshot_format` of a storage that neon itself pushed snapshots to (`neon snapshot push`, a storage_dest). */
const NEON_FORMAT = 'neon';

/**
 * `neon init --snapshot_path=URL [--snapshot_format=neon]` where URL holds a neon repository: the same as `neon
 * clone URL` without starting. False when no format was named and URL holds no neon repository (it is then a
 * backup, and --snapshot_format must say which kind).
 */
async function initFromNeonStorage(
  options: SnapshotOptions,
  storageDest: unknown,
  print: FormatCommandDeps['print'],
): Promise<boolean> {
  const named = options.snapshot_format !== undefined;
  if (options.snapshot_path === undefined || options.snapshot_path === true) return false;
  if (storageDest !== undefined) {
    if (!named) return false; // a backup to import, then push to storage_dest
    throw new NeonError('bad_usage', '--storage_dest cannot be set when cloning a neon storage: it is attached as storage "origin" and history stays in the repository');
  }
  const [{ cloneRepository }, { silentLogger }, { localProgress }] = await Promise.all([
    import('../daemon/clone.js'),
    import('../core/log.js'),
    import('./progress.js'),
  ]);
  const view = new ProgressView('clone', progressMode(options.json));
  let cloned;
  try {
    cloned = await cloneRepository({
      repoDir: repoDirFrom(options.repo),
      projectDir: process.cwd(),
      url: String(options.snapshot_path),
      log: silentLogger,
      progress: localProgress(view),
    });
  } catch (error) {
    if (!named && error instanceof NeonError && error.code === 'no_repository') return false;
    throw error;
  } finally {
    view.finish();
  }
  const { meta, repo, transfer } = cloned;
  print(options, { repository: repo.dir, postgres: meta.postgres, snapshot_format: NEON_FORMAT, cloned: transfer }, () =>
    [
      `Initialised a neon repository in ${repo.dir} from snapshot ${transfer.snapshot} of ${transfer.storage} (neon format, attached as storage "origin")`,
      `PostgreSQL ${meta.postgres.fullVersion} (${meta.postgres.source}, ${meta.postgres.binDir})`,
      'Next: neon start',
    ].join('\n'),
  );
  return true;
}

interface ExportAnswer {
  snapshot_path: string;
  snapshot_format: string;
  branch: string;
  lsn: string | null;
  label: string;
  description: string;
  bytes: number;
}

/** `neon export` and `neon import`. */
export function registerFormatCommands(cli: CAC, deps: FormatCommandDeps): void {
  const { call, print } = deps;
  // The daemon runs exports and imports as operations: follow one to its end, drawing its progress on stderr.
  const follow = async <T = ExportAnswer>(started: Wire<OperationInfo>, options: Options, label: string): Promise<T> => {
    const view = new ProgressView(label, progressMode(options.json));
    const done = await followOperation(started, (id) => call(options, 'GET', `/operations/${id}`), view);
    return done.result as T;
  };
  cli
    .command('export', 'Write a point of history as a backup: plain PGDATA, pg_basebackup tar or WAL-G layout (default: the present of main)')
    .option('--snapshot_path <path>', 'Where: a folder, file:///path, s3://bucket/prefix, FILE_PREFIX=… or S3_PREFIX=…')
    .option('--snapshot_format <format>', 'pgdata, tar or walg; or neon (with --snapshot: the same as snapshot push)')
    .option('--snapshot <name>', 'Export this snapshot')
    .option('--at <point>', 'Export this LSN, time or snapshot (on --branch)')
    .option('--branch <branch>', "With --at or alone: the branch (default: the main compute's)")
    .example('neon export --snapshot_path=/backups/pgdata --snapshot_format=pgdata')
    .example('neon export --snapshot_path=s3://bucket/walg --snapshot_format=walg --snapshot before-migration')
    .example('neon export --snapshot_path=s3://team-bucket/alice --snapshot_format=neon --snapshot before-migration')
    .action(async (options: SnapshotOptions & { snapshot?: unknown; at?: unknown; branch?: unknown }) => {
      const { path, format } = snapshotOptions(options, 'export');
      if (options.snapshot !== undefined && options.at !== undefined) throw new NeonError('bad_usage', 'give --snapshot or --at, not both');
      const started =
        options.snapshot !== undefined
          ? await call<Wire<OperationInfo>>(options, 'POST', `/snapshots/${encodeURIComponent(String(options.snapshot))}/actions`, {
              action: 'export',
              snapshot_path: path,
              snapshot_format: format,
            })
          : await call<Wire<OperationInfo>>(options, 'POST', '/export', {
              snapshot_path: path,
              snapshot_format: format,
              ...(options.at !== undefined ? { at: String(options.at) } : {}),
              ...(options.branch !== undefined ? { branch: String(options.branch) } : {}),
            });
      if (format === NEON_FORMAT) {
        const pushed = await follow<Wire<TransferResult>>(started, options, 'export');
        return print(options, pushed, () => `pushed snapshot ${pushed.snapshot} to ${pushed.storage} (neon format): ${formatBytes(pushed.bytes)} in ${pushed.objects} object(s)`);
      }
      const answer = await follow(started, options, 'export');
      print(options, answer, () => `exported ${answer.label}${answer.lsn ? ` (LSN ${answer.lsn})` : ''} to ${answer.snapshot_path}: ${answer.description}`);
    });

  cli
    .command('import', "Import a backup of this repository's cluster (same system identifier) as a new branch with a compute")
    .option('--snapshot_path <path>', 'Where: a folder, file:///path, s3://bucket/prefix, FILE_PREFIX=… or S3_PREFIX=…')
    .option('--snapshot_format <format>', 'pgdata, tar or walg')
    .option('--branch <name>', 'The new branch and its compute (default: import-<time>)')
    .option('--backup <name>', 'walg: which backup (default: the newest)')
    .option('--force', 'pgdata: take a cluster that was not shut down cleanly (Postgres runs crash recovery)')
    .example('neon import --snapshot_path=/backups/nightly --snapshot_format=pgdata --branch nightly')
    .action(async (options: SnapshotOptions & { branch?: unknown; backup?: unknown; force?: boolean }) => {
      const { path, format } = snapshotOptions(options, 'import');
      const started = await call<Wire<OperationInfo>>(options, 'POST', '/import', {
        snapshot_path: path,
        snapshot_format: format,
        ...(options.branch !== undefined ? { branch: String(options.branch) } : {}),
        ...(options.backup !== undefined ? { backup: String(options.backup) } : {}),
        ...(options.force ? { force: true } : {}),
      });
      const answer = await follow<{ branch: string; compute: string; snapshot_path: string; description: string }>(started, options, 'import');
      print(options, answer, () => `imported ${answer.description} as branch ${answer.branch} with compute ${answer.compute} (neon pg show -n ${answer.compute})`);
    });
}
