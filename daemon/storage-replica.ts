import fs from 'node:fs';
import path from 'node:path';
import type dgram from 'node:dgram';
import { messageOf } from '../core/errors.js';
import { writeFileAtomic } from '../core/fs-atomic.js';
import { readObject } from '../core/storage.js';
import { DEFAULT_SEGMENT_SIZE, parseLsn, segmentName, segmentOf } from '../core/wal.js';
import { freePort } from '../lib/net.js';
import type { Compute, ComputeInfo } from './compute.js';
import type { DaemonContext } from './context.js';
import { currentView } from './fenced-storage.js';
import { readClaims } from './claim.js';
import { makeComputeHome } from './modes.js';
import { newRadiusSecret, readRadiusLogin, samePassword, saveRadiusLogin, serveRadius, writeLoginHba } from './radius-login.js';
import { isPrimary, type ComputeRecord } from './repository.js';
import { pulledOrigin, pullForCompute, registryOf } from './storage-computes.js';
import { follow, followFile, followOnce, readFollowSpec, type FollowSpec, type FollowTarget } from './storage-follower.js';
import { discardCompute } from './trash.js';

/*
 * `pg create -n r -s S --replica`, or `pg create -n r -s S` then `pg start -n r --replica`: a hot standby of the
 * repository whose history storage S holds, following its main compute's branch through the WAL that repository
 * offloads to S (see storage-follower.ts). It starts from S's newest snapshot (pulled, only what is missing), and
 * lags the other primary by its offload interval (safekeeper-offload's partialIntervalMs, 1 s by default) plus
 * one poll here and one restore_command retry there: a few seconds. Its login is this repository's (see
 * radius-login.ts).
 */

const homeOf = (daemon: DaemonContext, name: string) => path.join(daemon.repo.computesDir, name);

/** The branch the storage's writer has its main compute on (`head.json`), or the snapshot's branch. */
async function followedBranch(daemon: DaemonContext, target: string, fallback: string): Promise<string> {
  const { storage } = await registryOf(daemon).open(target);
  const view = await currentView(storage, await readClaims(storage));
  if (!(await view.head('head.json'))) return fallback;
  return (JSON.parse((await readObject(view, 'head.json')).toString('utf8')) as { branch: string }).branch;
}

/** `pg create -n NAME -s STORAGE --replica [--at SNAPSHOT]`: pull, then make the standby. */
export async function createStorageReplica(daemon: DaemonContext, name: string, storageName: string, at?: string): Promise<ComputeInfo> {
  const pulled = await pullForCompute(daemon, storageName, at);
  return materialiseReplica(daemon, name, pulled.branch, await followedBranch(daemon, storageName, pulled.remoteBranch));
}

/**
 * `pg start -n NAME --replica` on a compute made over a storage (`pg create -n NAME -s S`): it becomes a standby
 * following S. Its data directory is made again from the pulled snapshot; the branch it was a primary of keeps
 * its history (nothing written there is lost: `neon pg create --branch B` puts a compute on it again). Returns
 * undefined when the compute's history does not start at a pulled snapshot.
 */
export async function startAsStorageReplica(daemon: DaemonContext, name: string): Promise<ComputeInfo | undefined> {
  const compute = daemon.compute(name);
  const origin = await pulledOrigin(daemon, compute.record.branch);
  if (!origin) return undefined;
  const followed = await followedBranch(daemon, origin.storage ?? origin.url, 'main');
  const { record } = compute;
  await discardCompute(daemon, name);
  if (isPrimary(record)) daemon.safekeepers.detach(record.branch);
  daemon.log.info('compute %s becomes a standby following %s (branch %s keeps its history)', name, origin.url, record.branch);
  return materialiseReplica(daemon, name, origin.branch, followed, record);
}

/** Restore the pulled branch into the compute's folder as a standby, catch up once, and start it. */
async function materialiseReplica(
  daemon: DaemonContext,
  name: string,
  branch: string,
  remoteBranch: string,
  login: Pick<ComputeRecord, 'user' | 'password' | 'database'> = daemon.compute('main').record,
): Promise<ComputeInfo> {
  const home = homeOf(daemon, name);
  const origin = (await pulledOrigin(daemon, branch))!;
  try {
    makeComputeHome(home);
    const walDir = path.join(home, 'wal');
    const pgdata = path.join(home, 'pgdata');
    const prepared = await daemon.pageserver.prepare(branch, { action: 'promote' }, pgdata, walDir);
    fs.renameSync(path.join(pgdata, 'recovery.signal'), path.join(pgdata, 'standby.signal'));
    // No target and no promotion: it replays whatever restore_command brings, asking again every second.
    const { recovery_target_action: _action, recovery_target_inclusive: _inclusive, ...rest } = prepared.settings;
    const settings = { ...rest, wal_retrieve_retry_interval: '1s' };
    const snapshot = daemon.pageserver.history.snapshot(origin.snapshot);
    const spec: FollowSpec = {
      storage: origin.storage,
      url: origin.url,
      remoteBranch,
      localBranch: branch,
      next: segmentName(snapshot.timeline, segmentOf(parseLsn(origin.lsn), DEFAULT_SEGMENT_SIZE), DEFAULT_SEGMENT_SIZE),
    };
    // What was offloaded since the snapshot, before the first start: it comes up close to the other primary.
    const { storage } = await registryOf(daemon).open(origin.storage ?? origin.url);
    const caught = await followOnce(storage, spec, followTarget(daemon, name, spec));
    await writeFileAtomic(followFile(home), JSON.stringify(caught.spec, null, 2) + '\n');
    const record: ComputeRecord = {
      name,
      branch,
      dataDir: path.join('computes', name, 'pgdata'),
      port: await freePort(),
      user: login.user,
      password: login.password,
      database: login.database,
      running: true,
      createdAt: new Date().toISOString(),
      replica: true,
      recovery: { settings, until: 'standby' },
    };
    await daemon.saveCompute(record);
    const compute = daemon.addCompute(record);
    await ensureLogin(daemon, name); // before the first start: its first client gets in
    await compute.start();
    return compute.info();
  } catch (error) {
    await discardCompute(daemon, name).catch(() => undefined);
    throw error;
  }
}

function followTarget(daemon: DaemonContext, name: string, spec: FollowSpec): FollowTarget {
  const home = homeOf(daemon, name);
  const keepDir = path.join(daemon.repo.dir, 'pulled', 'wal', spec.localBranch);
  fs.mkdirSync(keepDir, { recursive: true });
  return { walDir: path.join(home, 'wal'), keepDir, owner: fs.statSync(path.join(home, 'pgdata')) };
}

// Per compute object (not name): a compute destroyed and made again under its name gets a login and a follower
// of its own, and the old one's end.
const followers = new WeakSet<Compute>();
const logins = new WeakMap<Compute, dgram.Socket>();

/**
 * Every compute that is not a primary and replays a pulled snapshot's roles answers to this repository's
 * password: a RADIUS server for it (bound again after a daemon restart, on its old port when free), named in its
 * pg_hba.conf, which is reloaded when it changed.
 */
async function ensureLogin(daemon: DaemonContext, name: string): Promise<void> {
  const compute = daemon.computes.get(name);
  if (!compute || isPrimary(compute.record) || !(await pulledOrigin(daemon, compute.record.branch))) return;
  if (logins.has(compute)) return;
  const home = homeOf(daemon, name);
  const saved = readRadiusLogin(home) ?? { port: 0, secret: newRadiusSecret() };
  const socket = await serveRadius(saved.port, saved.secret, (user, password) => {
    if (daemon.computes.get(name) !== compute) {
      socket.close(); // destroyed: nobody logs in with this secret any more
      return false;
    }
    return user === compute.record.user && samePassword(password, compute.record.password);
  });
  logins.set(compute, socket);
  const login = { port: socket.address().port, secret: saved.secret };
  if (login.port !== saved.port) await saveRadiusLogin(home, login);
  const changed = await writeLoginHba(compute.dataDir, compute.record.user, login);
  if (changed && compute.state === 'running') await compute.query('select pg_reload_conf()');
}

/** Follow the storage while the replica runs (one follower per compute; it ends when the compute stops). */
function ensureFollower(daemon: DaemonContext, name: string): void {
  const compute = daemon.computes.get(name);
  const spec = compute?.record.replica ? readFollowSpec(homeOf(daemon, name)) : undefined;
  if (!compute || !spec || followers.has(compute)) return;
  followers.add(compute);
  const log = daemon.log;
  const keepGoing = () => {
    const now = daemon.computes.get(name);
    return now === compute && !!now?.record.replica && ['starting', 'running', 'restarting'].includes(now.state);
  };
  void registryOf(daemon)
    .open(spec.storage ?? spec.url)
    .then(({ storage }) =>
      follow(storage, spec, followTarget(daemon, name, spec), {
        keepGoing,
        save: (next) => writeFileAtomic(followFile(homeOf(daemon, name)), JSON.stringify(next, null, 2) + '\n'),
        warn: (message) => log.warn('replica %s: %s', name, message),
      }),
    )
    .catch((error) => log.error('replica %s cannot follow %s: %s', name, spec.url, messageOf(error)))
    .finally(() => followers.delete(compute));
}

/** The daemon's `computeStarted` observer for computes over pulled snapshots: their login, and their follower. */
export async function storageComputeStarted(daemon: DaemonContext, name: string): Promise<void> {
  try {
    await ensureLogin(daemon, name);
    ensureFollower(daemon, name);
  } catch (error) {
    daemon.log.error('compute %s: %s', name, messageOf(error));
  }
}
