import type { DaemonContext } from './context.js';
import { StorageRegistry, type PulledBranch } from './storages.js';
import { pullSnapshot } from './transfer.js';

/** The registry of attached storages of the daemon's repository. */
export function registryOf(daemon: DaemonContext): StorageRegistry {
  return new StorageRegistry(daemon.repo.dir, daemon.hooks, daemon.storage);
}

/**
 * `pg create -s STORAGE [--at SNAPSHOT]`: pull that storage's newest (or named) snapshot, fetching only what the
 * repository lacks; the compute is then made on a new branch forked there.
 */
export async function pullForCompute(
  daemon: DaemonContext,
  storageName: string,
  at?: string,
): Promise<{ branch: string; snapshot: string; url: string; remoteBranch: string }> {
  const registry = registryOf(daemon);
  await registry.get(storageName);
  const { storage, name } = await registry.open(storageName);
  const into = { pageserver: daemon.pageserver, repoDir: daemon.repo.dir, registry, pgVersion: daemon.binaries.version };
  const noProgress = { step: () => undefined, add: () => undefined };
  const pulled = await pullSnapshot(into, storage, name, at, noProgress, { rename: true });
  daemon.log.info('pulled snapshot %s from %s for a compute: %d bytes', pulled.snapshot, storage.url, pulled.bytes);
  return { branch: pulled.branch, snapshot: pulled.snapshot, url: storage.url, remoteBranch: pulled.record.snapshot.branch };
}

/** Where a branch's line of history starts when that is a pulled snapshot: the pulled branch and its origin. */
export async function pulledOrigin(daemon: DaemonContext, branch: string): Promise<(PulledBranch & { branch: string }) | undefined> {
  const { history } = daemon.pageserver;
  if (!history.hasBranch(branch)) return undefined;
  const root = history.chain(branch)[0].branch;
  const pulled = (await registryOf(daemon).pulled())[root];
  return pulled && { ...pulled, branch: root };
}

/** The computes whose branch's line of history starts at a snapshot pulled from storage `name`. */
export async function computesUsing(daemon: DaemonContext, name: string): Promise<string[]> {
  const pulled = await registryOf(daemon).pulled();
  const from = new Set(
    Object.entries(pulled)
      .filter(([, p]) => p.storage === name)
      .map(([branch]) => branch),
  );
  if (!from.size) return [];
  const { history } = daemon.pageserver;
  return [...daemon.computes.values()]
    .filter((c) => history.hasBranch(c.record.branch) && history.chain(c.record.branch).some((span) => from.has(span.branch)))
    .map((c) => c.record.name);
}

const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;

/**
 * A primary made from a pulled snapshot holds the pusher's roles, whose password this repository never learns (a
 * storage holds none): its login gets this repository's password, set over neon's internal way in.
 */
export async function adoptLogin(daemon: DaemonContext, name: string): Promise<void> {
  const { record } = daemon.compute(name);
  const password = record.password.replace(/'/g, "''");
  // Not waiting for the safekeepers: the compute's stream may not be attached yet.
  await daemon
    .compute(name)
    .query(`begin; set local synchronous_commit = local; alter role ${quoteIdent(record.user)} password '${password}'; commit`);
}
