import type { NeonHooks } from '../core/hooks.js';
import type { Logger } from '../core/log.js';
import type { Storage } from '../core/storage.js';
import type { Pageserver } from '../pageserver/pageserver.js';
import type { PgBinaries } from '../postgres/binaries.js';
import type { PrimaryInfo } from '../safekeeper/safekeeper.js';
import type { WalStore } from '../wal/store.js';
import type { Compute } from './compute.js';
import type { ComputeRecord, Repository } from './repository.js';
import type { Safekeepers } from './safekeepers.js';
import type { StorageSync } from './storage-sync.js';

/**
 * What the daemon's feature modules (branches, snapshots, checkout, computes, images, upkeep) may use of it:
 * the components and a few operations on computes. Not the REST server, the lock or the shutdown; the modules
 * take this instead of the `Daemon` class so that the daemon can import them without a cycle.
 */
export interface DaemonContext {
  readonly repo: Repository;
  readonly log: Logger;
  readonly hooks: NeonHooks;
  readonly binaries: PgBinaries;
  readonly pageserver: Pageserver;
  readonly safekeepers: Safekeepers;
  readonly wal: WalStore;
  /** The storage at storage_dest, when there is one. */
  readonly storage?: Storage;
  /** Pushes images, packs and history to storage_dest, when there is one. */
  readonly sync?: StorageSync;
  /** Every compute of the repository by name. */
  readonly computes: Map<string, Compute>;
  /** The compute called `name`, or a 404. */
  compute(name: string): Compute;
  /** Supervise a compute that was just created. */
  addCompute(record: ComputeRecord): Compute;
  /** Record a changed compute in state.json. */
  saveCompute(record: { name: string } & Partial<ComputeRecord>): Promise<void>;
  /** The branch of the main compute: the default for snapshots and new branches. */
  mainBranch(): string;
  /** Settings that make a branch's primary wait for its safekeepers. */
  primarySettings(record: ComputeRecord): Record<string, string>;
  /** How a safekeeper (or the daemon) reaches a compute. */
  primaryOf(record: ComputeRecord): PrimaryInfo;
}
