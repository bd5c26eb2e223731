import type { Logger } from '../core/log.js';
import type { Storage } from '../core/storage.js';
import type { NeonHooks } from '../core/hooks.js';
import { Pageserver } from '../pageserver/pageserver.js';
import type { PgBinaries } from '../postgres/binaries.js';
import type { PgUser } from '../postgres/user.js';
import { WalStore } from '../wal/store.js';
import type { ComputeRecord, Repository } from './repository.js';
import type { Safekeepers } from './safekeepers.js';
import { pulledWalHolder } from './storages.js';
import { StorageSync } from './storage-sync.js';

/** What the daemon's history components need of it. */
export interface HistoryDeps {
  repo: Repository;
  log: Logger;
  hooks: NeonHooks;
  owner?: PgUser;
  storage?: Storage;
  safekeepers: Safekeepers;
  binaries: PgBinaries;
  /** The main compute's record as the daemon started (its login is pushed with the history). */
  login: Pick<ComputeRecord, 'user' | 'password' | 'database'>;
  mainBranch: () => string;
}

/** The WAL store, the pageserver and, with a storage_dest, the sync that pushes history there. */
export interface History {
  wal: WalStore;
  pageserver: Pageserver;
  sync?: StorageSync;
}

/**
 * Open the repository's history. Its own module, imported by the daemon once Postgres is spawned: the pageserver,
 * chunk store and WAL code are most of the daemon's code, and a compute's start needs none of it.
 */
export async function openHistory(deps: HistoryDeps): Promise<History> {
  const { repo, log, hooks, storage, safekeepers } = deps;
  const wal = new WalStore(
    // Safekeepers' WAL, and the WAL pulled with snapshots from other storages (daemon/transfer.ts).
    () => [...safekeepers.nodes, pulledWalHolder(repo.dir)],
    storage,
    // The main compute's branch first: offload reports its progress.
    () => [deps.mainBranch(), ...safekeepers.branches().filter((b) => b !== deps.mainBranch())],
  );
  const pageserver = await Pageserver.open({ repoDir: repo.dir, log: log.child('pageserver'), owner: deps.owner, wal, hooks });
  if (!storage) return { wal, pageserver };
  const first = pageserver.images('main')[0];
  const systemId = first ? (await pageserver.readImage(first.key)).systemId : 'unknown';
  const sync = new StorageSync(
    pageserver,
    storage,
    () => ({
      systemId,
      pgVersion: deps.binaries.version,
      login: { user: deps.login.user, password: deps.login.password, database: deps.login.database },
      branch: deps.mainBranch(),
    }),
    log.child('sync'),
  );
  sync.schedule();
  return { wal, pageserver, sync };
}
