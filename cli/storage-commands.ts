import path from 'node:path';
import type { CAC } from 'cac';
import { NeonError } from '../core/errors.js';
import type { Wire } from '../core/rest.js';
import type { OperationInfo } from '../daemon/operations.js';
import type { StorageContents } from '../daemon/storage-routes.js';
import type { AttachedStorage } from '../daemon/storages.js';
import type { TransferResult } from '../daemon/transfer.js';
import { keyValues, table } from './output.js';
import { formatBytes, followOperation, progressMode, ProgressView } from './progress.js';

interface Options {
  json?: boolean;
  repo?: string;
}

/** What the command table lends these commands. */
export interface StorageCommandDeps {
  call: <T>(options: Options, method: string, path: string, body?: unknown) => Promise<T>;
  print: (options: Options, value: unknown, human: () => string) => void;
  /** The CLI script (the daemon is spawned from it). */
  script: string;
}

type StorageRow = Wire<AttachedStorage & { default: boolean }>;

const STORAGE_ACTIONS = ['attach', 'detach', 'list', 'show'];

function needName(options: { name?: string }, action: string): string {
  if (!options.name) throw new NeonError('bad_usage', `storage ${action} needs -n NAME (see neon storage --help)`);
  return String(options.name);
}

/** `neon storage attach | detach | list | show`. */
async function storageCommand(
  action: string,
  options: Options & { name?: string; type?: string; path?: string },
  deps: StorageCommandDeps,
) {
  if (!STORAGE_ACTIONS.includes(action)) {
    throw new NeonError('unknown_command', `unknown storage action "${action}": use one of ${STORAGE_ACTIONS.join(', ')}`);
  }
  const { call, print } = deps;
  if (action === 'list') {
    const rows = await call<StorageRow[]>(options, 'GET', '/storages');
    return print(options, rows, () =>
      rows.length
        ? table(rows as unknown as Record<string, unknown>[], [
            ['name', 'name'],
            ['type', 'type'],
            ['url', 'url'],
          ])
        : 'no storages (neon storage attach -n NAME --type native|s3 --path DIR|URL)',
    );
  }
  const name = needName(options, action);
  if (action === 'detach') {
    const result = await call(options, 'DELETE', `/storages/${encodeURIComponent(name)}`);
    return print(options, result, () => `storage ${name} detached (nothing in it was deleted)`);
  }
  if (action === 'attach') {
    // A relative folder is relative to where the command runs, not to the daemon.
    const where =
      options.type === 'native' && options.path && !/^[a-z][a-z0-9+.-]*:/i.test(options.path)
        ? path.resolve(String(options.path))
        : options.path;
    const body = { name, type: options.type, path: where === undefined ? undefined : String(where) };
    const entry = await call<StorageRow>(options, 'PUT', '/storages', body);
    return print(options, entry, () => `storage ${entry.name} attached: ${entry.type} ${entry.url}`);
  }
  const shown = await call<StorageRow & Wire<StorageContents>>(options, 'GET', `/storages/${encodeURIComponent(name)}`);
  print(options, shown, () =>
    [
      keyValues([
        ['name', shown.name],
        ['type', shown.type],
        ['url', shown.url],
        ['reachable', shown.reachable ? 'yes' : `no: ${shown.error}`],
        [
          'database',
          shown.repository ? `system ${shown.repository.system_id}, PostgreSQL ${shown.repository.pg_version}` : 'none pushed yet',
        ],
        ['objects', `${shown.objects} (${formatBytes(shown.bytes)})`],
        ['branches', shown.branches.join(', ')],
      ]),
      '',
      shown.snapshots.length
        ? table(shown.snapshots as unknown as Record<string, unknown>[], [
            ['name', 'snapshot'],
            ['branch', 'branch'],
            ['lsn', 'lsn'],
            ['created_at', 'created'],
            ['source', 'source'],
          ])
        : 'no snapshots',
    ].join('\n'),
  );
}

/** `neon snapshot push NAME --to S` / `neon snapshot pull NAME --from S`: an operation, followed to its end. */
export async function transferCommand(
  action: 'push' | 'pull',
  name: string | undefined,
  options: Options & { to?: string; from?: string },
  deps: Pick<StorageCommandDeps, 'call' | 'print'>,
): Promise<void> {
  if (!name)
    throw new NeonError(
      'bad_usage',
      `snapshot ${action} needs the snapshot's name: neon snapshot ${action} NAME ${action === 'push' ? '--to' : '--from'} STORAGE|URL`,
    );
  const where = action === 'push' ? options.to : options.from;
  if (!where)
    throw new NeonError('bad_usage', `snapshot ${action} needs ${action === 'push' ? '--to' : '--from'} STORAGE (a storage name or URL)`);
  const body = action === 'push' ? { to: String(where) } : { from: String(where) };
  const started = await deps.call<Wire<OperationInfo>>(options, 'POST', `/snapshots/${encodeURIComponent(name)}/${action}`, body);
  const view = new ProgressView(`${action} ${name}`, progressMode(options.json));
  const done = await followOperation(started, (id) => deps.call(options, 'GET', `/operations/${id}`), view);
  const result = done.result as Wire<TransferResult>;
  deps.print(options, done, () =>
    result.up_to_date
      ? `snapshot ${name} is already ${action === 'push' ? 'in' : 'here from'} ${result.storage}: nothing moved`
      : `${action === 'push' ? 'pushed' : 'pulled'} snapshot ${name} ${action === 'push' ? 'to' : 'from'} ${result.storage}: ` +
        `${formatBytes(result.bytes)} in ${result.objects} object(s)${result.branch ? ` (local branch ${result.branch})` : ''}`,
  );
}

/** `neon clone URL [DIR]`: a new repository from someone's pushed snapshots, started like `neon start`. */
async function cloneCommand(url: string, dir: string | undefined, options: Options & { snapshot?: string }, deps: StorageCommandDeps) {
  const [{ cloneRepository }, { silentLogger }, { repoDirFrom, Repository }, { startCommand }, { localProgress }] = await Promise.all([
    import('../daemon/clone.js'),
    import('../core/log.js'),
    import('../daemon/repository.js'),
    import('./commands.js'),
    import('./progress.js'),
  ]);
  const projectDir = path.resolve(dir ?? '.');
  const repoDir = options.repo ? repoDirFrom(options.repo) : path.join(projectDir, '.neon');
  const view = new ProgressView(`clone ${url}`, progressMode(options.json));
  let cloned;
  try {
    cloned = await cloneRepository({
      repoDir,
      projectDir,
      url,
      snapshot: options.snapshot,
      log: silentLogger,
      progress: localProgress(view),
    });
  } finally {
    view.finish();
  }
  const { transfer } = cloned;
  if (!options.json)
    console.error(`cloned snapshot ${transfer.snapshot} from ${transfer.storage} (${formatBytes(transfer.bytes)}); starting neon`);
  const cwd = process.cwd();
  process.chdir(projectDir);
  try {
    await startCommand(new Repository(repoDir), deps.script, { json: options.json }, (o, value, human) =>
      deps.print(o, { cloned: transfer, ...(value as object) }, human),
    );
  } finally {
    process.chdir(cwd);
  }
}

/** Add `storage` and `clone` to the command table. */
export function registerStorageCommands(cli: CAC, deps: StorageCommandDeps): void {
  cli
    .command('storage <action>', 'Storages (where data lives): storage attach | detach | list | show -n NAME')
    .option('-n, --name <name>', 'Storage name ("default" is the repository\'s storage_dest)')
    .option('--type <type>', 'storage attach: native (a folder) or s3')
    .option('--path <dir|url>', 'storage attach: the folder, or s3://bucket/prefix (credentials from AWS_* variables, never in the URL)')
    .example('neon storage attach -n alice --type s3 --path s3://team-bucket/alice')
    .example('neon storage attach -n backup --type native --path /mnt/neon-backup')
    .example('neon storage show -n alice --json')
    .example('neon storage detach -n alice')
    .action((action: string, options) => storageCommand(action, options, deps));

  cli
    .command('clone <url> [dir]', "A new repository from someone's storage, started at its newest (or --snapshot) snapshot")
    .option('--snapshot <name>', 'The snapshot to start from (default: the newest)')
    .example('neon clone s3://team-bucket/alice my-copy')
    .example('neon clone /mnt/shared/neon --snapshot before-migration')
    .action((url: string, dir: string | undefined, options) => cloneCommand(url, dir, options, deps));
}
