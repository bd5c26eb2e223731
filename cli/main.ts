import fs from 'node:fs';
import { cac } from 'cac';
import { NeonError } from '../core/errors.js';
import { print, reportError } from './report.js';
import { Repository, repoDirFrom } from '../daemon/repository.js';
import { registerStorageCommands } from './storage-commands.js';
import { registerFormatCommands } from './format-commands.js';

// Every command that touches running state is a REST call to the daemon (client.ts); modules are imported
// lazily so that `neon status` does not load what `neon init` needs.

interface GlobalOptions {
  json?: boolean;
  repo?: string;
}

/** Options of `neon pg`. */
type PgOptions = GlobalOptions & { name?: string; storage?: string; branch?: string; at?: string; readOnly?: boolean; replica?: boolean };


function repoOf(options: GlobalOptions): Repository {
  return new Repository(repoDirFrom(options.repo));
}

async function call<T>(options: GlobalOptions, method: string, path: string, body?: unknown): Promise<T> {
  const { callDaemon } = await import('./client.js');
  return callDaemon<T>(repoOf(options), method, path, body);
}

/** `--storage_dest` parsed once, here where it was typed (relative paths are relative to this folder). */
async function storageDestOf(options: { storage_dest?: unknown }) {
  if (options.storage_dest === undefined) return undefined;
  const { parseStorageUrl } = await import('../core/storage.js');
  return parseStorageUrl(String(options.storage_dest));
}

// The seed spells these options with an underscore; a hyphen is what people type by habit, so accept both.
const SNAKE_OPTIONS = /^--(storage|snapshot)-(dest|path|format)(?==|$)/;

function checkPgVersion(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new NeonError('bad_pg_version', `--pg-version must be a major version number like 17, not "${value}"`);
  }
  return value;
}

/** The version in our package.json: the nearest one above this file (src/cli under tsx, dist/cli when built). */
function packageVersion(): string {
  for (let dir = new URL('.', import.meta.url); dir.pathname !== '/'; dir = new URL('..', dir)) {
    const file = new URL('package.json', dir);
    if (fs.existsSync(file)) return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version: string }).version;
  }
  return 'unknown';
}

/**
 * The command table. `script` is the file that runs the CLI (`dist/cli/bin.js`): the daemon and safekeepers
 * are spawned from it.
 */
export function createCli(script: string) {
  const cli = cac('neon');
  cli.option('--json', 'Print the raw JSON response').option('--repo <dir>', 'Repository folder (default: $NEON_REPO_DIR or ./.neon)');

  cli
    .command('init', "Create a repository: the main compute's data directory, token and settings")
    .option('--storage_dest <url>', 'Durable storage: a path, file:///path, s3://bucket/prefix, FILE_PREFIX=… or S3_PREFIX=…')
    .option('--pg-version <major>', 'PostgreSQL major version (default: the embedded one)')
    .option('--force', 'Delete an existing repository and create a new one')
    .option('--snapshot_path <path>', 'Start from a backup instead of initdb: a PGDATA folder, tar or WAL-G backup, or a storage neon pushed to (not saved)')
    .option('--snapshot_format <format>', 'With --snapshot_path: pgdata, tar, walg or neon (default neon when it holds a neon repository)')
    .action(async (options: GlobalOptions & { storage_dest?: string; pgVersion?: unknown; force?: boolean; snapshot_path?: string; snapshot_format?: string }) => {
      if (options.snapshot_path !== undefined || options.snapshot_format !== undefined) {
        const { initFromSnapshot } = await import('./format-commands.js');
        return initFromSnapshot({ ...options, pgVersion: checkPgVersion(options.pgVersion) }, await storageDestOf(options), print);
      }
      const { initRepository } = await import('../daemon/init.js');
      const { silentLogger } = await import('../core/log.js');
      const { meta, repo } = await initRepository({
        repoDir: repoDirFrom(options.repo),
        projectDir: process.cwd(),
        storageDest: await storageDestOf(options),
        pgVersion: checkPgVersion(options.pgVersion),
        force: options.force,
        log: silentLogger,
      });
      print(options, { repository: repo.dir, postgres: meta.postgres, storage_dest: meta.storageDest ?? null }, () =>
        [
          `Initialised a neon repository in ${repo.dir}`,
          `PostgreSQL ${meta.postgres.fullVersion} (${meta.postgres.source}, ${meta.postgres.binDir})`,
          meta.storageDest ? `storage_dest: ${meta.storageDest}` : 'storage_dest: none (history stays in the repository)',
          'Next: neon start',
        ].join('\n'),
      );
    });

  cli
    .command('start', 'Start the daemon and the computes (creates the repository on first use)')
    .option('--storage_dest <url>', 'On first use: durable storage; one that holds a repository brings it back')
    .option('--take-over', 'Make this repository the writer of its storage_dest even though another one holds it')
    .action(async (options: GlobalOptions & { storage_dest?: string; takeOver?: boolean }) => {
      const { startCommand } = await import('./commands.js');
      await startCommand(
        repoOf(options),
        script,
        { ...options, storageDest: await storageDestOf(options) },
        print,
      );
    });

  cli
    .command('doctor', "Check the repository's own files (config.json, state.json); exit 1 when one is damaged")
    .action(async (options: GlobalOptions) => {
      const { diagnose } = await import('../daemon/repair.js');
      const findings = await diagnose(repoOf(options));
      print(options, { ok: findings.length === 0, problems: findings }, () =>
        findings.length ? findings.map((f) => `${f.file}: ${f.problem}`).concat('Run `neon repair` to rebuild them').join('\n') : 'OK',
      );
      if (findings.length) process.exitCode = 1;
    });

  cli
    .command('repair', 'Rebuild a missing or unreadable config.json / state.json from what is on disk (nothing is deleted)')
    .option('--storage_dest <url>', 'The storage_dest the repository was created with, when config.json must be rebuilt')
    .example('neon repair                       # after config.json or state.json was lost')
    .action(async (options: GlobalOptions & { storage_dest?: string }) => {
      const { repairRepository } = await import('../daemon/repair.js');
      const result = await repairRepository(repoOf(options), { projectDir: process.cwd(), storageDest: await storageDestOf(options) });
      print(options, result, () =>
        [result.repaired.length ? `rebuilt ${result.repaired.join(', ')}` : 'nothing to repair', ...result.notes].join('\n'),
      );
    });

  cli.command('stop', 'Stop the daemon and every compute').action(async (options: GlobalOptions) => {
    const { stopDaemon } = await import('./daemon-control.js');
    const repo = repoOf(options);
    const pid = await stopDaemon(repo);
    print(options, { stopped: true, pid, repository: repo.dir }, () => `neon stopped (${repo.dir})`);
  });

  cli.command('status', 'Show the daemon, its components and computes').action(async (options: GlobalOptions) => {
    const { statusCommand } = await import('./status.js');
    await statusCommand(repoOf(options), options, print);
  });

  cli
    .command('pg <action>', 'Computes: pg list | show | create | start | stop | promote | destroy -n NAME')
    .option('-n, --name <name>', 'Compute name')
    .option('-s, --storage <name>', "pg create: the storage it runs over (default: the repository's)")
    .option('--branch <branch>', 'pg create: the branch (default: a new branch named like the compute)')
    .option('--at <point>', 'pg create: a snapshot, LSN or time (fork there; with --read-only, freeze there)')
    .option('--read-only', 'pg create: a static, read-only compute frozen at --at')
    .option('--replica', "pg create / pg start: a hot standby following the branch's primary")
    .action(async (action: string, options: PgOptions) => {
      const { pgCommand } = await import('./commands.js');
      await pgCommand(action, options, (method, path, body) => call(options, method, path, body), print);
    });

  cli
    .command('safekeeper <action>', 'Safekeepers: safekeeper list | safekeeper stop -n NAME | safekeeper start -n NAME')
    .option('-n, --name <name>', 'Safekeeper name (sk1, sk2, …)')
    .action(async (action: string, options: GlobalOptions & { name?: string }) => {
      const { safekeeperCommand } = await import('./commands.js');
      await safekeeperCommand(action, options.name, (method, path, body) => call(options, method, path, body), options, print);
    });

  cli
    .command('snapshot <action> [name]', 'Snapshots: snapshot create [NAME] | list | show NAME | delete NAME | push NAME --to S | pull NAME --from S')
    .option('--to <storage>', 'snapshot push: a storage name (neon storage list) or URL')
    .option('--from <storage>', 'snapshot pull: a storage name or URL')
    .example('neon snapshot push before-migration --to alice')
    .example('neon snapshot pull nightly --from s3://team-bucket/alice')
    .action(async (action: string, name: string | undefined, options: GlobalOptions & { to?: string; from?: string }) => {
      if (action === 'push' || action === 'pull') {
        const { transferCommand } = await import('./storage-commands.js');
        return transferCommand(action, name, options, { call, print });
      }
      const { snapshotCommand } = await import('./commands.js');
      await snapshotCommand(action, name, (method, path, body) => call(options, method, path, body), options, print);
    });

  cli
    .command('checkout <target>', 'Switch the main compute to a snapshot, an LSN or a time; the state left gets a snapshot')
    .action(async (target: string, options: GlobalOptions) => {
      // An operation: its steps and the bytes restored are drawn on a terminal while it runs (cli/progress.ts).
      const { followOperation, progressMode, ProgressView } = await import('./progress.js');
      type Op = import('../core/rest.js').Wire<import('../daemon/operations.js').OperationInfo>;
      const started = await call<Op>(options, 'POST', '/checkout', { target: String(target), background: true });
      const view = new ProgressView(`checkout ${target}`, progressMode(options.json));
      const poll = (id: string) => call<Op>(options, 'GET', `/operations/${id}`);
      const result = (await followOperation(started, poll, view, 50)).result as Record<string, unknown>;
      print(options, result, () =>
        [
          `main compute now on branch ${result.branch} (${result.continued ? 'continued' : 'new branch'}) at ${result.reached_lsn ?? '-'}`,
          result.left ? `the state you left is snapshot ${result.left}: neon checkout ${result.left} to go back` : '',
        ]
          .filter(Boolean)
          .join('\n'),
      );
    });

  cli.command('log', 'History: branches, snapshots and base images with their LSNs and times').action(async (options: GlobalOptions) => {
    const { logCommand } = await import('./commands.js');
    await logCommand((method, path, body) => call(options, method, path, body), options, print);
  });

  cli
    .command('image <action>', 'Base images: image create [-n COMPUTE] (take one now) | image list')
    .option('-n, --name <compute>', 'image create: the primary compute whose branch to image (default: main)')
    .action(async (action: string, options: GlobalOptions & { name?: string }) => {
      const { imageCommand } = await import('./commands.js');
      await imageCommand(action, (method, path, body) => call(options, method, path, body), options, print);
    });

  cli
    .command('verify [...snapshots]', 'Re-check every image, chunk and WAL file the snapshots (default: all) need')
    .action(async (snapshots: string[], options: GlobalOptions) => {
      const report = await call<{
        ok: boolean;
        checked: Record<string, number>;
        problems: { what: string; name: string; detail: string }[];
      }>(options, 'POST', '/verify', snapshots.length ? { snapshots } : {});
      print(options, report, () => {
        const checked = Object.entries(report.checked)
          .map(([k, v]) => `${v} ${k.replace('_', ' ')}`)
          .join(', ');
        if (report.ok) return `OK: checked ${checked}`;
        return [
          `${report.problems.length} problem(s) (checked ${checked}):`,
          ...report.problems.map((p) => `  ${p.what} ${p.name}: ${p.detail}`),
        ].join('\n');
      });
      if (!report.ok) process.exitCode = 1;
    });

  cli
    .command('gc', 'Remove images, chunks and WAL that no snapshot or branch needs')
    .option('--keep-wal-days <days>', 'Keep WAL younger than this, needed or not (default 7)')
    .action(async (options: GlobalOptions & { keepWalDays?: number }) => {
      const report = await call<Record<string, unknown>>(
        options,
        'POST',
        '/gc',
        options.keepWalDays === undefined ? {} : { keep_wal_days: Number(options.keepWalDays) },
      );
      print(
        options,
        report,
        () =>
          `removed ${(report.images_removed as string[]).length} image(s), ${report.packs_removed} pack(s) (${report.packs_rewritten} rewritten, ${Math.round(Number(report.freed_bytes) / 1024)} kB freed) and ${report.wal_removed} WAL file(s)${report.damaged_wal_removed ? ` (and ${report.damaged_wal_removed} damaged cop${report.damaged_wal_removed === 1 ? 'y' : 'ies'} verify had set aside)` : ''}`,
      );
    });

  cli
    .command('branch <action> [name]', 'Branches: branch create NAME [--parent P] [--at X] | list | delete NAME')
    .option('--parent <branch>', "branch create: the branch to fork from (default: the main compute's)")
    .option('--at <point>', "branch create: a snapshot, LSN or time (default: the parent's present)")
    .action(async (action: string, name: string | undefined, options: GlobalOptions & { parent?: string; at?: string }) => {
      const { branchCommand } = await import('./commands.js');
      await branchCommand(action, name, options, (method, path, body) => call(options, method, path, body), print);
    });

  registerStorageCommands(cli, { call, print, script });
  registerFormatCommands(cli, { call, print });

  cli.help();
  cli.version(packageVersion());
  return cli;
}

/** Run the CLI; expected errors print one line, others their stack; both exit non-zero. */
export async function main(argv: string[], script: string): Promise<void> {
  if (argv[2] === '__daemon') {
    const { runDaemon } = await import('../daemon/main.js');
    return runDaemon(argv[argv.indexOf('--repo') + 1], script);
  }
  if (argv[2] === '__watchdog') {
    const { runWatchdog } = await import('../daemon/watchdog.js');
    return runWatchdog(argv[argv.indexOf('--repo') + 1], script);
  }
  if (argv[2] === '__safekeeper') {
    const { runSafekeeper } = await import('../safekeeper/main.js');
    return runSafekeeper();
  }
  const cli = createCli(script);
  try {
    cli.parse(
      argv.map((arg) => arg.replace(SNAKE_OPTIONS, '--$1_$2')),
      { run: false },
    );
    if (!cli.matchedCommand) {
      if (cli.args.length) throw new NeonError('unknown_command', `unknown command "${cli.args[0]}": see \`neon --help\``);
      if (!cli.options.help && !cli.options.version) cli.outputHelp();
      return;
    }
    await cli.runMatchedCommand();
  } catch (error) {
    reportError(error, argv);
  }
}

