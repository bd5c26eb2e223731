import type { ComputeInfo } from '../daemon/compute.js';
import { callStartingDaemon, runningDaemonPid, spawnDaemon } from './daemon-control.js';
import { NeonError } from '../core/errors.js';
import type { StorageRequest } from '../core/storage.js';
import { branchTree, keyValues, table, type Column } from './output.js';
import type { SafekeeperInfo } from '../daemon/safekeepers.js';
import type { Repository } from '../daemon/repository.js';
import type { Status } from '../daemon/routes.js';
import type { Wire } from '../core/rest.js';
import type { Branch } from '../pageserver/history.js';
import { statusText } from './status.js';

/** An action a command knows, or a clear error listing the ones it does. */
function checkAction(command: string, action: string, known: string[]): void {
  if (!known.includes(action))
    throw new NeonError('unknown_command', `unknown ${command} action "${action}": use one of ${known.join(', ')}`);
}

/** The CLI's printer: JSON with --json, else the human text. */
type Print = (options: { json?: boolean }, value: unknown, human: () => string) => void;
type Call = <T>(method: string, path: string, body?: unknown) => Promise<T>;

/** `neon start`: create the repository on first use, start the daemon unless it runs, print how to connect. */
export async function startCommand(
  repo: Repository,
  cli: string,
  options: { json?: boolean; storageDest?: StorageRequest; takeOver?: boolean },
  print: Print,
): Promise<void> {
  let initialised = false;
  let restored: import('../daemon/init.js').Restored | undefined;
  // The daemon inherits it: it takes the storage_dest's claim from its holder (see daemon/claim.ts).
  if (options.takeOver) process.env.NEON_TAKE_OVER = '1';
  if (!(await repo.exists())) {
    const [{ initRepository }, { silentLogger }] = await Promise.all([import('../daemon/init.js'), import('../core/log.js')]);
    ({ restored } = await initRepository({
      repoDir: repo.dir,
      projectDir: process.cwd(),
      storageDest: options.storageDest,
      takeOver: options.takeOver,
      log: silentLogger,
    }));
    initialised = !restored;
  } else if (options.storageDest) {
    // Harmless when it names the storage the repository already uses; anything else would be ignored silently.
    const meta = await repo.readMeta();
    if (options.storageDest.url !== meta.storageDest) {
      throw new NeonError(
        'already_initialized',
        `${repo.dir} already exists with storage_dest ${meta.storageDest ?? '(none)'}; --storage_dest only applies when neon start creates the repository`,
      );
    }
  }
  let already = runningDaemonPid(repo) !== undefined;
  let answer: { status: Status; pgs: ComputeInfo[]; notice?: string } | undefined;
  if (!already) {
    try {
      answer = await spawnDaemon(repo, (await repo.readMeta()).projectDir, cli);
    } catch (error) {
      // A watchdog started a new daemon in the meantime (after a crash): use that one.
      if (!(error instanceof NeonError) || error.code !== 'already_running') throw error;
      already = true;
    }
  }
  let repaired: string[] = [];
  if (already) {
    // Running already (or starting again after a crash): bring back whatever is down, then report.
    repaired = (await callStartingDaemon<{ repaired: string[] }>(repo, 'POST', '/repair')).repaired;
    answer = {
      status: await callStartingDaemon<Status>(repo, 'GET', '/status'),
      pgs: await callStartingDaemon<ComputeInfo[]>(repo, 'GET', '/pgs'),
    };
  }
  if (!answer) throw new NeonError('internal', 'neon start: no answer from the daemon');
  const { status, notice } = answer;
  const main = answer.pgs.find((pg) => pg.name === 'main');
  const value = {
    already_running: already,
    repaired,
    initialised,
    restored: !!restored,
    restored_from: restored?.from ?? null,
    restored_lsn: restored?.lsn ?? null,
    restored_time: restored?.time ?? null,
    notice: notice ?? null,
    connection_string: main?.connection_string ?? null,
    status,
  };
  print(options, value, () =>
    [
      initialised ? `Initialised a neon repository in ${repo.dir}` : undefined,
      restored
        ? `Restored ${repo.dir} from ${restored.from} up to LSN ${restored.lsn ?? 'unknown'}` +
          `${restored.time ? ` (last commit ${restored.time})` : ''}: every commit offloaded before that is back.\n` +
          `The storage does not keep passwords, so the password of "${main?.name ?? 'main'}" was reset: use the new connection string below.`
        : undefined,
      notice ? `Note: ${notice}` : undefined,
      already ? `neon is already running.${repaired.length ? '' : ' Nothing needed repair.'}` : 'neon is running.',
      ...repaired.map((line) => `Repaired ${line}`),
      main ? `\nConnect with:\n  psql "${main.connection_string}"\n` : '',
      statusText(status),
    ]
      .filter((line) => line !== undefined)
      .join('\n'),
  );
}

const PG_ACTIONS = ['list', 'show', 'start', 'stop', 'create', 'promote', 'destroy'];

function pgText(pg: ComputeInfo): string {
  return keyValues([
    ['name', pg.name],
    ['state', pg.state],
    ['branch', pg.branch],
    ['kind', pg.read_only ? `static, read-only at ${pg.at}` : pg.replica ? 'replica (read-only, follows the primary)' : 'primary'],
    ['pid', pg.pid],
    ['port', pg.port],
    ['connection', pg.connection_string],
    ['reached_lsn', pg.reached_lsn],
    ['data_dir', pg.data_dir],
    ['log_file', pg.log_file],
    ['restarts', pg.restarts],
  ]);
}

/** `neon pg list | show | start | stop | create | destroy`. */
export async function pgCommand(
  action: string,
  options: { name?: string; storage?: string; branch?: string; at?: string; readOnly?: boolean; replica?: boolean; json?: boolean },
  call: Call,
  print: Print,
): Promise<void> {
  checkAction('pg', action, PG_ACTIONS);
  if (action === 'list') {
    const pgs = await call<ComputeInfo[]>('GET', '/pgs');
    print(options, pgs, () =>
      table(pgs as unknown as Record<string, unknown>[], [
        ['name', 'name'],
        ['state', 'state'],
        ['branch', 'branch'],
        ['at', 'at'],
        ['port', 'port'],
        ['pid', 'pid'],
      ]),
    );
    return;
  }
  const { name } = options;
  if (!name || typeof name !== 'string') throw new NeonError('missing_name', `neon pg ${action} needs a compute name: -n NAME`);
  const path = `/pgs/${encodeURIComponent(name)}`;
  if (action === 'destroy') {
    const done = await call<Record<string, unknown>>('DELETE', path);
    print(options, done, () => `compute ${name} destroyed`);
    return;
  }
  let pg: ComputeInfo;
  if (action === 'show') pg = await call<ComputeInfo>('GET', path);
  else if (action === 'create') {
    pg = await call<ComputeInfo>('PUT', '/pgs', {
      name,
      storage_name: options.storage,
      branch: options.branch,
      at: options.at,
      read_only: options.readOnly ?? false,
      is_replica: options.replica ?? false,
    });
  } else {
    pg = await call<ComputeInfo>(
      'POST',
      `${path}/actions`,
      action === 'start' && options.replica ? { action, is_replica: true } : { action },
    );
  }
  print(options, pg, () => pgText(pg));
}

const SNAPSHOT_ACTIONS = ['create', 'list', 'show', 'delete'];
const SNAPSHOT_COLUMNS: Column[] = [
  ['name', 'name'],
  ['branch', 'branch'],
  ['lsn', 'lsn'],
  ['created_at', 'created'],
  ['auto', 'auto'],
];

/** `neon snapshot create [NAME] | list | show NAME | delete NAME`. */
export async function snapshotCommand(
  action: string,
  name: string | undefined,
  call: Call,
  options: { json?: boolean },
  print: Print,
): Promise<void> {
  checkAction('snapshot', action, SNAPSHOT_ACTIONS);
  if (action === 'list') {
    const list = await call<Record<string, unknown>[]>('GET', '/snapshots');
    print(options, list, () => table(list, SNAPSHOT_COLUMNS));
    return;
  }
  if (action === 'create') {
    const made = await call<Record<string, unknown>>('POST', '/snapshots', name === undefined ? {} : { name });
    print(options, made, () => `snapshot ${made.name} of ${made.branch} at ${made.lsn}`);
    return;
  }
  if (!name) throw new NeonError('missing_name', `neon snapshot ${action} needs a snapshot name`);
  const path = `/snapshots/${encodeURIComponent(name)}`;
  const result = action === 'show' ? await call<Record<string, unknown>>('GET', path) : await call<Record<string, unknown>>('DELETE', path);
  print(options, result, () => (action === 'show' ? table([result], SNAPSHOT_COLUMNS) : `snapshot ${name} deleted`));
}

/** `neon log`. */
export async function logCommand(call: Call, options: { json?: boolean }, print: Print): Promise<void> {
  const entries = await call<Record<string, unknown>[]>('GET', '/log');
  print(options, entries, () =>
    table(entries, [
      ['time', 'time'],
      ['kind', 'kind'],
      ['name', 'name'],
      ['branch', 'branch'],
      ['lsn', 'lsn'],
      ['detail', 'detail'],
    ]),
  );
}

/** `neon image create | list`. */
export async function imageCommand(action: string, call: Call, options: { json?: boolean; name?: string }, print: Print): Promise<void> {
  if (action === 'create') {
    const image = await call<Record<string, unknown>>('POST', '/images', options.name ? { compute: options.name } : {});
    print(options, image, () => `base image of ${image.branch} at ${image.end_lsn}: ${Math.round(Number(image.new_bytes) / 1024)} kB new`);
  } else if (action === 'list') {
    const images = await call<Record<string, unknown>[]>('GET', '/images');
    print(options, images, () =>
      table(images, [
        ['branch', 'branch'],
        ['end_lsn', 'lsn'],
        ['created_at', 'created'],
        ['key', 'key'],
      ]),
    );
  } else {
    throw new NeonError('unknown_command', `unknown image action "${action}": use create or list`);
  }
}

const BRANCH_ACTIONS = ['create', 'list', 'delete'];

/** `neon branch create NAME [--parent P] [--at X] | list | delete NAME`. */
export async function branchCommand(
  action: string,
  name: string | undefined,
  options: { json?: boolean; parent?: string; at?: string },
  call: Call,
  print: Print,
): Promise<void> {
  checkAction('branch', action, BRANCH_ACTIONS);
  if (action === 'list') {
    const branches = await call<Wire<Branch>[]>('GET', '/branches');
    print(options, branches, () => branchTree(branches));
    return;
  }
  if (!name) throw new NeonError('missing_name', `neon branch ${action} needs a branch name`);
  if (action === 'create') {
    const branch = await call<Wire<Branch>>('POST', '/branches', { name, parent: options.parent, at: options.at });
    print(options, branch, () => `branch ${branch.name} forked from ${branch.parent} at ${branch.fork_lsn ?? branch.fork_time}`);
  } else {
    const done = await call<Record<string, unknown>>('DELETE', `/branches/${encodeURIComponent(name)}`);
    print(options, done, () => `branch ${name} deleted`);
  }
}
const SAFEKEEPER_ACTIONS = ['list', 'start', 'stop'];

/** `neon safekeeper list | start | stop`. */
export async function safekeeperCommand(
  action: string,
  name: string | undefined,
  call: Call,
  options: { json?: boolean },
  print: Print,
): Promise<void> {
  checkAction('safekeeper', action, SAFEKEEPER_ACTIONS);
  const columns: Column[] = [
    ['name', 'name'],
    ['state', 'state'],
    ['pid', 'pid'],
    ['connected', 'connected'],
    ['flush_lsn', 'flush lsn'],
    ['lag_bytes', 'lag bytes'],
    ['error', 'error'],
  ];
  if (action === 'list') {
    const list = await call<SafekeeperInfo[]>('GET', '/safekeepers');
    print(options, list, () => table(list as unknown as Record<string, unknown>[], columns));
    return;
  }
  if (!name) throw new NeonError('missing_name', `neon safekeeper ${action} needs a safekeeper name: -n NAME`);
  const node = await call<SafekeeperInfo>('POST', `/safekeepers/${encodeURIComponent(name)}/actions`, { action });
  print(options, node, () => table([node as unknown as Record<string, unknown>], columns));
}
