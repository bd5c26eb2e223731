import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { builtinPlugins } from './builtins.js';
import { loadConfig } from '../core/config.js';
import { NeonError } from '../core/errors.js';
import { createHooks } from '../core/hooks.js';
import { isDaemonOf } from './lock.js';
import type { Logger } from '../core/log.js';
import { applyPlugins } from '../core/plugin.js';
import { findBinaries, reachableBinaries } from '../postgres/binaries.js';
import { initdb } from '../postgres/initdb.js';
import { checkReachable, pgUserFor } from '../postgres/user.js';
import { resolveStorage } from '../core/resolve.js';
import { REPO_ENTRIES, Repository, type ComputeRecord, type RepoMeta } from './repository.js';
import { Pageserver } from '../pageserver/pageserver.js';
import { takeOfflineImage } from '../pageserver/take-image.js';
import type { PgBinaries } from '../postgres/binaries.js';
import type { PgUser } from '../postgres/user.js';
import { parseStorageUrl, type Storage, type StorageRequest } from '../core/storage.js';
import { pullRepository, pushRepository, readStoredRepository } from './storage-sync.js';
import { planClaim, takeClaim, type Claim } from './claim.js';
import { recoverWithNewPassword, removeStagedWal, type Recovered } from './restore.js';
import { WalStore } from '../wal/store.js';
import { adoptImport, stageInitImport, type SnapshotSource } from './import.js';
import { writeFileAtomic } from '../core/fs-atomic.js';

/** Options of `neon init` (also used by the first `neon start`). */
export interface InitOptions {
  repoDir: string;
  /** Folder whose neon.config.* applies (the current folder). */
  projectDir: string;
  /** `--storage_dest` as parsed where it was typed; else `storage_dest` of the config applies. */
  storageDest?: StorageRequest;
  pgVersion?: number;
  /** Recreate an existing repository (its data is deleted). */
  force?: boolean;
  /** Take the storage_dest over from the repository that holds it (`neon start --take-over`). */
  takeOver?: boolean;
  /** `--snapshot_path` / `--snapshot_format`: start from an imported backup instead of initdb (not saved). */
  snapshot?: SnapshotSource;
  log: Logger;
}

/** Port of the main compute unless configured (taken → a free one at start). */
export const DEFAULT_PG_PORT = 55432;

/** What `neon init` / the first `neon start` brought back from a storage_dest that already held a repository. */
export interface Restored extends Recovered {
  /** The storage_dest it came from. */
  from: string;
  /** The branch the main compute is on. */
  branch: string;
}


/**
 * A new cluster: initdb, then the first base image, of the fresh cluster while it is stopped: every later point of
 * main's history is reached from it (or from a newer one) by replaying WAL.
 */
async function createFresh(
  pageserver: Pageserver,
  binaries: PgBinaries,
  dataDir: string,
  main: ComputeRecord,
  pgUser: PgUser | undefined,
  now: boolean,
): Promise<void> {
  await initdb({ binaries, dataDir, superuser: main.user, password: main.password, pgUser });
  await pageserver.createMain();
  // With a storage_dest the first image is pushed now, so it is taken from the fresh cluster while it is stopped.
  // Otherwise the daemon takes it from the running compute, in the background, without delaying the first start.
  if (now)
    await pageserver.takeImage((mirror) =>
      takeOfflineImage({ store: pageserver.store, branch: 'main', pgVersion: binaries.version, dataDir, mirror }),
    );
}

/**
 * The cluster comes back from storage alone: the history, the newest image of the branch the main compute was on,
 * and all the WAL offloaded after it, replayed to its end here (so that the main password can be reset: the
 * storage does not hold it). The main compute then starts as an ordinary primary.
 */
async function restoreFromStorage(
  pageserver: Pageserver,
  storage: Storage,
  main: ComputeRecord,
  dataDir: string,
  postgres: { binaries: PgBinaries; pgUser?: PgUser },
): Promise<Restored> {
  const { branch } = await pullRepository(pageserver, storage);
  const prepared = await pageserver.prepare(branch, { action: 'promote' }, dataDir, path.join(path.dirname(dataDir), 'restore-wal'));
  const { user, database, password } = main;
  const recovered = await recoverWithNewPassword({ ...postgres, dataDir, settings: prepared.settings, user, database, password });
  await removeStagedWal(prepared.walDir);
  return { from: storage.url, branch, ...recovered };
}

/**
 * Create a repository: the API token, the main compute's data directory (initdb), the state, and last the
 * config snapshot that marks the repository complete. Then the plugins' `init` hooks run.
 */
export async function initRepository(options: InitOptions): Promise<{ repo: Repository; meta: RepoMeta; restored?: Restored }> {
  const repo = new Repository(options.repoDir);
  const found = await repo.inspect();
  if (found === 'broken' && !options.force) await repo.readMeta(); // throws: says what is missing and how to repair
  if (found === 'complete' || found === 'broken') {
    if (!options.force) {
      throw new NeonError(
        'already_initialized',
        `a neon repository already exists at ${repo.dir}: use \`neon start\`, or \`neon init --force\` to delete it and start over`,
        { status: 409 },
      );
    }
    const daemon = await repo.readDaemonInfo();
    const pid = Number((await fs.readFile(repo.pidFile, 'utf8').catch(() => '')).trim()) || daemon?.pid;
    if (pid && isDaemonOf(pid, repo.dir)) {
      throw new NeonError('already_running', `neon is running for ${repo.dir}: run \`neon stop\` before \`neon init --force\``, {
        status: 409,
      });
    }
  }

  // Everything that can fail on bad input is checked before anything is written.
  const { config, plugins } = await loadConfig(options.projectDir, { command: 'init' }, builtinPlugins());
  const hooks = createHooks();
  applyPlugins(hooks, plugins);
  const storageDest = options.storageDest ?? (config.storage_dest ? parseStorageUrl(config.storage_dest, options.projectDir) : undefined);
  const storage = storageDest ? await resolveStorage(hooks, storageDest) : undefined;
  // A storage that already holds a repository is where this one comes back from (seed 003, scenario 2).
  const stored = storage ? await readStoredRepository(storage) : undefined;
  if (stored && options.pgVersion !== undefined && options.pgVersion !== stored.pgVersion) {
    throw new NeonError(
      'bad_pg_version',
      `storage ${storage!.url} holds a PostgreSQL ${stored.pgVersion} database, not ${options.pgVersion}`,
    );
  }
  // Refused here, before anything is written, when another live repository writes to this storage.
  const plan = storage ? await planClaim(storage, { repoDir: repo.dir, takeOver: options.takeOver }) : undefined;
  // An imported backup is unpacked and checked beside the repository, before anything in it is written.
  const staged = options.snapshot
    ? await stageInitImport(hooks, options.snapshot, { repoDir: repo.dir, cwd: options.projectDir, log: options.log, pgVersion: options.pgVersion, storageHoldsRepository: stored && storage?.url, bin: config.postgres?.bin })
    : undefined;
  const binaries = await findBinaries({
    version: staged?.result.pgVersion ?? stored?.pgVersion ?? options.pgVersion ?? config.postgres?.version,
    bin: config.postgres?.bin,
  });
  const pgUser = pgUserFor(config.postgres?.user);

  await Promise.all(REPO_ENTRIES.map((entry) => fs.rm(path.join(repo.dir, entry), { recursive: true, force: true })));
  await fs.mkdir(repo.dir, { recursive: true });
  await writeFileAtomic(repo.initMarker, `${process.pid}\n`);
  await fs.mkdir(repo.logsDir, { recursive: true, mode: 0o755 });
  await fs.mkdir(repo.computesDir, { recursive: true, mode: 0o755 });
  const runnable = await reachableBinaries(binaries, pgUser);
  checkReachable(pgUser, [path.join(runnable.binDir, 'postgres'), repo.computesDir]);
  await repo.createToken();

  const main: ComputeRecord = {
    name: 'main',
    branch: 'main',
    dataDir: path.join('computes', 'main', 'pgdata'),
    port: config.postgres?.port ?? DEFAULT_PG_PORT,
    user: stored?.login.user ?? 'postgres',
    // Never read from storage (it holds no password): a restored database gets a new one.
    password: randomBytes(18).toString('base64url'),
    database: stored?.login.database ?? 'postgres',
    running: true,
    createdAt: new Date().toISOString(),
  };
  let claim: Claim | undefined;
  let pageserver: Pageserver | undefined;
  let restored: Restored | undefined;
  try {
    claim = plan && (await takeClaim(plan, options.log));
    // Reads and writes go through the claim's generation from here on.
    const view = claim?.storage;
    pageserver = await Pageserver.open({ repoDir: repo.dir, log: options.log, owner: pgUser, wal: view && new WalStore(() => [], view) });
    if (stored) {
      restored = await restoreFromStorage(pageserver, view!, main, repo.dataDirOf(main), { binaries: runnable, pgUser });
      main.branch = restored.branch;
      // The new generation's history and head go up at once: they shadow whatever the old holder writes late.
      await pushRepository(pageserver, view!, { systemId: stored.systemId, pgVersion: stored.pgVersion, login: main, branch: main.branch });
    } else {
      if (staged) await adoptImport(staged, { pageserver, binaries: runnable, pgUser, dataDir: repo.dataDirOf(main), main, log: options.log });
      else await createFresh(pageserver, runnable, repo.dataDirOf(main), main, pgUser, !!storage);
      if (view) {
        const { systemId } = await pageserver.readImage(pageserver.images('main')[0].key);
        await pushRepository(pageserver, view, { systemId, pgVersion: binaries.version, login: main, branch: 'main' });
      }
    }
  } catch (error) {
    await fs.rm(path.join(repo.computesDir, 'main'), { recursive: true, force: true });
    throw error;
  } finally {
    await pageserver?.close();
    await claim?.stop();
  }
  await repo.writeState({ computes: { main } });
  const meta: RepoMeta = {
    formatVersion: 1,
    createdAt: new Date().toISOString(),
    projectDir: path.resolve(options.projectDir),
    ...(storage ? { storageDest: storage.url } : {}),
    postgres: binaries,
    plugins: plugins.map((p) => p.name),
  };
  await repo.writeMeta(meta);
  await fs.rm(repo.initMarker, { force: true });
  await hooks.init.promise({ repo, log: options.log, storageDest: meta.storageDest, pgVersion: binaries.version });
  return { repo, meta, restored };
}
