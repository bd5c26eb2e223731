import fs from 'node:fs';
import path from 'node:path';
import type { DaemonContext } from './context.js';
import { NeonError } from '../core/errors.js';
import { markPoint, primaryOfBranch, resolveTarget } from './snapshots.js';
import { checkName, type Branch } from '../pageserver/history.js';
import { formatLsn, safekeeperWalDir } from '../core/wal.js';
import { registryOf } from './storage-computes.js';

/** `POST /branches`: a new line of history. */
export interface CreateBranchRequest {
  name?: unknown;
  parent?: unknown;
  at?: unknown;
}

/**
 * Fork a branch: from `parent` (default: the main compute's branch) at a snapshot, LSN or time, or at the parent's
 * present. No data is copied; the new branch's history before the fork point is its parent's. A fork at the present
 * is taken at a point the safekeepers already hold, so that no committed WAL is missed.
 */
export async function createBranch(daemon: DaemonContext, request: CreateBranchRequest): Promise<Branch> {
  const { history } = daemon.pageserver;
  const name = checkName('branch', request.name);
  if (history.hasBranch(name)) throw new NeonError('branch_exists', `a branch named "${name}" already exists`, { status: 409 });
  if (request.parent !== undefined && typeof request.parent !== 'string')
    throw new NeonError('bad_request', '"parent" must be a branch name');
  let parent = (request.parent as string | undefined) ?? daemon.mainBranch();
  history.branch(parent);
  const fork: Pick<Branch, 'forkLsn' | 'forkTime'> = { forkLsn: null };
  if (request.at !== undefined) {
    const target = await resolveTarget(daemon, request.at, parent);
    if (request.parent !== undefined && target.branch !== parent) {
      throw new NeonError('bad_request', `${target.label} is on branch ${target.branch}, not on the parent ${parent}`);
    }
    parent = target.branch;
    if (target.lsn !== undefined) fork.forkLsn = formatLsn(target.lsn);
    else fork.forkTime = target.time!.toISOString();
    // A time before the first image is refused now rather than when a compute is made on the branch.
    await daemon.pageserver.chooseImage(parent, { lsn: target.lsn, time: target.time });
  } else {
    const primary = primaryOfBranch(daemon, parent);
    if (primary?.state === 'running') fork.forkLsn = formatLsn((await markPoint(daemon, parent, `branch ${name}`)).lsn);
    else {
      const tip = history.branch(parent).tipLsn;
      if (!tip) throw new NeonError('no_tip', `branch ${parent} has no running primary to fork from: give --at (a snapshot, LSN or time)`);
      fork.forkLsn = tip;
    }
  }
  const branch = await history.addBranch({ name, parent, ...fork, createdAt: new Date().toISOString() });
  daemon.sync?.schedule();
  return branch;
}

/**
 * `DELETE /branches/:name`: refused while a compute, a child branch or a snapshot still uses it. A branch pulled
 * from a storage (a root of its own) can be deleted too; the snapshot it was pulled for goes with it (the storage
 * still holds it: pull it again), and so do its pulled WAL and image manifests; `neon gc` then frees the chunks
 * only it used.
 */
export async function deleteBranch(daemon: DaemonContext, name: string): Promise<void> {
  const { history } = daemon.pageserver;
  const branch = history.branch(name);
  const registry = registryOf(daemon);
  const pulled = (await registry.pulled())[name];
  if (!branch.parent && !pulled)
    throw new NeonError('branch_root', `${name} is the root branch: every other branch starts from it`, { status: 409 });
  const users = [...daemon.computes.values()].filter((c) => c.record.branch === name).map((c) => c.record.name);
  if (users.length)
    throw new NeonError('branch_in_use', `branch ${name} is used by compute(s) ${users.join(', ')}: destroy them first`, { status: 409 });
  const children = history
    .branches()
    .filter((b) => b.parent === name)
    .map((b) => b.name);
  if (children.length)
    throw new NeonError('branch_in_use', `branch ${name} has child branch(es) ${children.join(', ')}: delete them first`, { status: 409 });
  const snapshots = history
    .snapshots()
    .filter((s) => s.branch === name)
    .map((s) => s.name);
  const own = snapshots.filter((s) => s !== pulled?.snapshot);
  if (own.length)
    throw new NeonError('branch_in_use', `branch ${name} has snapshot(s) ${own.join(', ')}: delete them first`, { status: 409 });
  if (pulled && history.hasSnapshot(pulled.snapshot)) await history.deleteSnapshot(pulled.snapshot);
  await history.deleteBranch(name);
  // Forgotten after the branch: a crash in between leaves a record that gc and a new pull ignore, never a branch
  // whose origin is unknown. Its pulled WAL goes; gc removes a folder that a crash left behind.
  if (pulled) {
    await registry.forgetPulled(name);
    fs.rmSync(path.join(daemon.repo.dir, 'pulled', 'wal', name), { recursive: true, force: true });
  }
  daemon.safekeepers.detach(name);
  // Its own history goes with it: WAL on the safekeepers and in storage, and its base images.
  for (const node of daemon.safekeepers.nodes) fs.rmSync(safekeeperWalDir(node.dir, name), { recursive: true, force: true });
  fs.rmSync(path.join(daemon.pageserver.dir, 'images', name), { recursive: true, force: true });
  if (daemon.storage) {
    for (const prefix of [`wal/${name}/`, `images/${name}/`]) {
      for await (const object of daemon.storage.list(prefix)) await daemon.storage.delete(object.key);
    }
  }
  daemon.sync?.schedule();
}
