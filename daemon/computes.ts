import fs from 'node:fs';
import path from 'node:path';
import { createBranch } from './branches.js';
import { adoptLogin, pullForCompute } from './storage-computes.js';
import type { Compute, ComputeInfo } from './compute.js';
import type { DaemonContext } from './context.js';
import { NeonError } from '../core/errors.js';
import { freePort } from '../lib/net.js';
import type { ComputeRecord } from './repository.js';
import { primaryOfBranch, resolveTarget } from './snapshots.js';
import { checkName } from '../pageserver/history.js';
import type { RecoveryTarget } from '../pageserver/recovery.js';
import { DEFAULT_SEGMENT_SIZE, parseLsn, parseSegmentName } from '../core/wal.js';
import { KeyedMutex } from '../lib/keyed-mutex.js';
import { makeComputeHome } from './modes.js';
import { discardCompute } from './trash.js';
import { isReplica } from './schemas.js';
import { createStorageReplica } from './storage-replica.js';
import { readFollowSpec } from './storage-follower.js';
import { trace } from '../lib/trace.js';
import { fsyncDir } from '../core/fs-atomic.js';

/** `PUT /pgs`: what a new compute is to be (the seed's `{ name, storage_name }`, plus branch, point and kind). */
export interface CreateComputeRequest {
  name?: unknown;
  storage_name?: unknown;
  branch?: unknown;
  at?: unknown;
  read_only?: unknown;
  is_replica?: unknown;
}

function optionalString(request: CreateComputeRequest, key: 'branch' | 'at' | 'storage_name'): string | undefined {
  const value = request[key];
  if (value !== undefined && (typeof value !== 'string' || !value))
    throw new NeonError('bad_request', `"${key}" must be a non-empty string`);
  return value as string | undefined;
}

/**
 * Create a compute and start it:
 * - `read_only` with `at`: a static compute frozen at that point (recovery paused there);
 * - `is_replica`: a hot standby following the branch's primary;
 * - otherwise a primary: of `branch` at its tip, or of a new branch named like the compute, forked from the
 *   branch (default: the main compute's) at `at` or at its present. At most one primary per branch.
 */
export async function createCompute(daemon: DaemonContext, request: CreateComputeRequest): Promise<ComputeInfo> {
  const name = checkName('compute', request.name);
  if (daemon.computes.has(name)) throw new NeonError('pg_exists', `a compute named "${name}" already exists`, { status: 409 });
  const storage = optionalString(request, 'storage_name');
  if (storage !== undefined && storage !== 'default') {
    // Over an attached storage: its snapshot is pulled (only what is missing), and the compute forks from it.
    if (request.branch !== undefined) throw new NeonError('bad_request', '"branch" and "storage_name" exclude each other');
    if (isReplica(request.is_replica)) return createStorageReplica(daemon, name, storage, optionalString(request, 'at'));
    const pulled = await pullForCompute(daemon, storage, optionalString(request, 'at'));
    const created = await createCompute(daemon, { ...request, storage_name: undefined, branch: pulled.branch, at: pulled.snapshot });
    if (!created.read_only && !created.replica) await adoptLogin(daemon, name);
    return created;
  }
  const branchName = optionalString(request, 'branch');
  const at = optionalString(request, 'at');
  if (branchName) daemon.pageserver.history.branch(branchName);
  const home = path.join(daemon.repo.computesDir, name);
  if (request.read_only === true) {
    if (!at) throw new NeonError('bad_request', 'a read-only compute is frozen at a point: give "at" (a snapshot, LSN or time)');
    const target = await resolveTarget(daemon, at, branchName);
    return materialise(
      daemon,
      name,
      target.branch,
      { lsn: target.lsn, time: target.time, timeline: target.timeline, action: 'pause' },
      { readOnly: true, at },
    );
  }
  if (isReplica(request.is_replica)) {
    const branch = branchName ?? daemon.mainBranch();
    const primary = primaryOfBranch(daemon, branch);
    if (!primary || primary.state !== 'running') {
      throw new NeonError('no_primary', `branch ${branch} has no running primary for a replica to follow`, { status: 409 });
    }
    return materialise(daemon, name, branch, { action: 'standby', primary: primary.record }, { replica: true });
  }
  // A primary: on an existing branch at its tip, or on a new branch named like the compute.
  let branch = branchName;
  if (!branch || at) {
    if (daemon.pageserver.history.hasBranch(name)) {
      throw new NeonError('branch_exists', `a branch named "${name}" already exists: use --branch ${name} to put a compute on it`, {
        status: 409,
      });
    }
    branch = (await createBranch(daemon, { name, parent: branchName, at })).name;
  } else {
    const taken = primaryOfBranch(daemon, branch);
    if (taken) {
      throw new NeonError(
        'branch_has_primary',
        `branch ${branch} already has a primary compute (${taken.record.name}): add --replica for a read-only follower, or --read-only --at for a static one`,
        { status: 409 },
      );
    }
  }
  try {
    return await materialise(daemon, name, branch, await tipTarget(daemon, branch), {});
  } catch (error) {
    // A branch made for this compute goes with it when the compute cannot be made.
    if (!branchName || at) await daemon.pageserver.history.deleteBranch(branch).catch(() => undefined);
    throw error;
  } finally {
    fs.mkdirSync(home, { recursive: true });
  }
}

/** Where a primary starts on a branch: its tip when it has WAL of its own, else its fork point. */
async function tipTarget(daemon: DaemonContext, branch: string): Promise<RecoveryTarget> {
  const own = [...(await daemon.wal.names(branch))].some((name) => parseSegmentName(name, DEFAULT_SEGMENT_SIZE));
  if (own) return { action: 'promote' };
  const { forkLsn, forkTime } = daemon.pageserver.history.branch(branch);
  return { lsn: forkLsn ? parseLsn(forkLsn) : undefined, time: forkTime ? new Date(forkTime) : undefined, action: 'promote' };
}

type Kind = Pick<ComputeRecord, 'readOnly' | 'replica' | 'at'>;

/**
 * Settings of a new compute's first start (its recovery). A promotion starts a new timeline: Postgres creates its
 * first segment and, at the end-of-recovery checkpoint, pre-allocates the next, each zero-filled and fsynced by
 * default: 32 MiB written and waited for before the first query, for WAL not yet written. Without the zero fill a
 * new segment is created with one write at its end (safe: WAL pages carry their own headers and CRCs, and
 * Postgres zero-fills only to reserve the space, which a laptop's file system rarely runs out of mid-segment).
 */
export const CREATION_SETTINGS: Record<string, string> = { wal_init_zero: 'off' };

/** Restore the branch's history into the compute's folder, start it there, and make it a compute of the repository. */
async function materialise(
  daemon: DaemonContext,
  name: string,
  branch: string,
  target: RecoveryTarget | { action: 'standby'; primary: ComputeRecord },
  kind: Kind,
): Promise<ComputeInfo> {
  const home = path.join(daemon.repo.computesDir, name);
  const main = daemon.compute('main').record;
  trace('daemon', `pg create ${name}: start`);
  try {
    makeComputeHome(home);
    const recovery = await restoreData(daemon, name, branch, target, path.join(home, 'pgdata'), path.join(home, 'wal'));
    trace('daemon', `pg create ${name}: prepared`);
    const standby = target.action === 'standby';
    // Roles come from the history it starts from, so the login is its parent's, and it stays that way (neon never
    // changes a user's password): a branch, a replica and a promoted replica answer to the same credentials.
    const source = standby ? target.primary : (parentPrimary(daemon, branch) ?? main);
    const record: ComputeRecord = {
      name,
      branch,
      dataDir: path.join('computes', name, 'pgdata'),
      port: await freePort(),
      user: source.user,
      password: source.password,
      database: source.database,
      running: true,
      createdAt: new Date().toISOString(),
      ...kind,
      recovery,
    };
    await daemon.saveCompute(record);
    const compute = daemon.addCompute(record);
    trace('daemon', `pg create ${name}: saved`);
    await compute.start();
    if (recovery.until === 'promoted') await becomePrimary(daemon, compute);
    trace('daemon', `pg create ${name}: done`);
    return compute.info();
  } catch (error) {
    await destroyCompute(daemon, name, { force: true }).catch(() => undefined);
    throw error;
  }
}

/** Restore `branch` at `target` into `dataDir` (its WAL into `walDir`): the recovery of the compute's first start. */
async function restoreData(
  daemon: DaemonContext,
  name: string,
  branch: string,
  target: RecoveryTarget | { action: 'standby'; primary: ComputeRecord },
  dataDir: string,
  walDir: string,
): Promise<NonNullable<ComputeRecord['recovery']>> {
  const standby = target.action === 'standby';
  const prepared = await daemon.pageserver.prepare(branch, standby ? { action: 'promote' } : target, dataDir, walDir, {
    finishedWalOnly: standby,
  });
  const settings = { ...prepared.settings, ...CREATION_SETTINGS };
  if (standby) {
    // A replica streams from the primary, and restores older WAL from the store until it catches up.
    // It logs in as neon's internal role over the private socket: no user's password change can cut it off.
    const primary = daemon.primaryOf(target.primary);
    fs.renameSync(path.join(dataDir, 'recovery.signal'), path.join(dataDir, 'standby.signal'));
    settings.primary_conninfo = `host=${primary.host} port=${primary.port} user=${primary.user} application_name=${name}`;
    delete settings.recovery_target_action;
  }
  const until = standby ? 'standby' : target.action === 'pause' ? 'paused' : 'promoted';
  return { settings, until, ...(until === 'promoted' ? { walDir } : {}) };
}

/**
 * Make a compute's data directory again, where the one it has cannot be trusted: restored, and the machine went
 * down before its files reached the disk (see pageserver/unsynced.ts). Everything a compute writes that counts
 * is in the WAL its safekeepers acknowledged, so it is restored from its branch's image and WAL as it was made: a
 * primary at the end of its branch's WAL, a static compute at its point, a replica behind its primary. Files no
 * WAL carries (`ALTER SYSTEM`'s postgresql.auto.conf, pg_hba.conf edits) come back as the image holds them.
 * Returns the record to start it with.
 */
export async function remakeDataDir(daemon: DaemonContext, record: ComputeRecord): Promise<ComputeRecord> {
  const dataDir = daemon.repo.dataDirOf(record);
  const home = path.dirname(dataDir);
  const how = `neon pg destroy ${record.name} and create it again`;
  if (readFollowSpec(home)) {
    throw new NeonError(
      'data_lost',
      `compute ${record.name}'s data directory did not all reach the disk before the machine went down: ${how}`,
    );
  }
  let target: RecoveryTarget | { action: 'standby'; primary: ComputeRecord };
  if (record.replica) {
    const primary = primaryOfBranch(daemon, record.branch);
    if (!primary)
      throw new NeonError('data_lost', `replica ${record.name} must be made again and branch ${record.branch} has no primary: ${how}`);
    target = { action: 'standby', primary: primary.record };
  } else if (record.readOnly && record.at) {
    const point = await resolveTarget(daemon, record.at, record.branch);
    target = { lsn: point.lsn, time: point.time, timeline: point.timeline, action: 'pause' };
  } else {
    target = await tipTarget(daemon, record.branch);
  }
  const next = `${dataDir}.remade`;
  const lost = `${dataDir}.lost`;
  for (const leftover of [next, lost]) fs.rmSync(leftover, { recursive: true, force: true });
  const recovery = await restoreData(daemon, record.name, record.branch, target, next, path.join(home, 'wal'));
  fs.renameSync(dataDir, lost);
  fs.renameSync(next, dataDir);
  await fsyncDir(home);
  fs.rmSync(lost, { recursive: true, force: true });
  return { ...record, recovery };
}

/**
 * A compute that just became a primary: its branch learns where it forked. Its login stays what it was (the
 * daemon and the safekeepers have their own way in), so clients' connection strings keep working.
 */
async function becomePrimary(daemon: DaemonContext, compute: Compute): Promise<void> {
  const { history } = daemon.pageserver;
  const branch = history.branch(compute.record.branch);
  if (!branch.forkLsn && branch.parent && compute.reachedLsn) await history.updateBranch(branch.name, { forkLsn: compute.reachedLsn });
}

/** The primary of a branch's parent, whose login a new compute on the branch inherits with its roles. */
function parentPrimary(daemon: DaemonContext, branch: string): ComputeRecord | undefined {
  const parent = daemon.pageserver.history.branch(branch).parent;
  return parent ? primaryOfBranch(daemon, parent)?.record : undefined;
}

/**
 * `pg promote`: a replica becomes a primary. While its branch's primary runs, it becomes the primary of a new
 * branch forked where it had replayed to (the old primary keeps the old branch); when that primary is gone, it
 * takes over the same branch.
 */
export async function promoteCompute(daemon: DaemonContext, name: string): Promise<ComputeInfo & { forked: boolean; from: string }> {
  const compute = daemon.compute(name);
  if (!compute.record.replica) {
    throw new NeonError(
      'not_a_replica',
      `compute ${name} is ${compute.record.readOnly ? 'a static compute' : 'a primary'}: only a replica can be promoted`,
    );
  }
  if (compute.state !== 'running')
    throw new NeonError('not_running', `replica ${name} is not running (neon pg start -n ${name} --replica)`, { status: 409 });
  if (readFollowSpec(path.join(daemon.repo.computesDir, name))) {
    // Its WAL is another database system's: this repository's safekeepers would refuse its writes.
    throw new NeonError(
      'storage_replica',
      `replica ${name} follows another repository through its storage and cannot become a primary here; to write, run \`neon clone\` of that storage into a repository of its own`,
      { status: 409 },
    );
  }
  const from = compute.record.branch;
  const primary = primaryOfBranch(daemon, from);
  const fork = primary?.state === 'running';
  const [{ lsn }] = await compute.query('select pg_last_wal_replay_lsn()::text as lsn');
  let branch = from;
  if (fork) {
    branch = daemon.pageserver.history.hasBranch(name) ? `${from}-${name}` : name;
    await daemon.pageserver.history.addBranch({ name: branch, parent: from, forkLsn: lsn, createdAt: new Date().toISOString() });
  } else if (primary) {
    // The old primary must never write on this branch again.
    primary.record = { ...primary.record, retired: name };
    await daemon.saveCompute(primary.record);
  }
  await compute.query('select pg_promote(true, 60)');
  compute.record = { ...compute.record, branch, replica: false, recovery: undefined };
  await daemon.saveCompute(compute.record);
  await compute.applySettings(daemon.primarySettings(compute.record));
  daemon.safekeepers.attach(branch, daemon.primaryOf(compute.record));
  await becomePrimary(daemon, compute);
  daemon.sync?.schedule();
  return { ...compute.info(), forked: fork, from };
}

/** One queue of operations per compute name, per daemon (see {@link withCompute}). */
const locks = new WeakMap<DaemonContext, KeyedMutex>();

/**
 * Run an operation on the compute `name` (create, start, stop, promote, destroy) after those already asked for on
 * it: requests on one compute are served one at a time, in order, while other computes go on. A queue rather than
 * a 409: the CLI is a thin client, and `pg stop` during a `pg start` should simply stop it once it is up, as a
 * service manager would; each operation re-reads the compute, so one that follows a destroy answers 404.
 */
export function withCompute<T>(daemon: DaemonContext, name: string, work: () => Promise<T>): Promise<T> {
  let mutex = locks.get(daemon);
  if (!mutex) locks.set(daemon, (mutex = new KeyedMutex()));
  return mutex.run(name, work);
}

/**
 * `DELETE /pgs/:name`: stop a compute and remove its data directory; its branch and history stay. Call it under
 * {@link withCompute}. Crash-safe (daemon/trash.ts): the folder is renamed into the trash before the record goes,
 * and the next daemon start finishes a destroy that a crash interrupted. Destroying a compute that does not exist
 * (any more) is a 404, so a second destroy tells the caller it was already gone and changes nothing.
 */
export async function destroyCompute(daemon: DaemonContext, name: string, options: { force?: boolean } = {}): Promise<void> {
  if (name === 'main')
    throw new NeonError('pg_main', 'the main compute cannot be destroyed (neon pg stop -n main stops it)', { status: 400 });
  const compute = daemon.computes.get(name);
  if (!compute && !options.force) daemon.compute(name);
  await discardCompute(daemon, name);
  // A primary's branch keeps its history; the safekeepers stop following it.
  if (compute && !compute.record.readOnly && !compute.record.replica && !primaryOfBranch(daemon, compute.record.branch)) {
    daemon.safekeepers.detach(compute.record.branch);
  }
}
