import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { builtinPlugins } from './builtins.js';
import { loadConfig } from '../core/config.js';
import { NeonError } from '../core/errors.js';
import { createHooks } from '../core/hooks.js';
import type { Logger } from '../core/log.js';
import { applyPlugins } from '../core/plugin.js';
import { resolveStorage } from '../core/resolve.js';
import { parseLsn } from '../core/wal.js';
import { Pageserver } from '../pageserver/pageserver.js';
import { findBinaries, reachableBinaries } from '../postgres/binaries.js';
import { checkReachable, pgUserFor } from '../postgres/user.js';
import { WalStore } from '../wal/store.js';
import { DEFAULT_PG_PORT } from './init.js';
import type { OperationHandle } from './operations.js';
import { Repository, type ComputeRecord, type RepoMeta } from './repository.js';
import { recoverWithNewPassword, removeStagedWal } from './restore.js';
import { readStoredRepository } from './storage-sync.js';
import { parseRemoteUrl, pulledWalHolder, StorageRegistry, typeOfUrl } from './storages.js';
import { findRemoteSnapshot } from './remote.js';
import { pullSnapshot, type TransferResult } from './transfer.js';

/** Options of {@link cloneRepository}. */
export interface CloneOptions {
  repoDir: string;
  projectDir: string;
  /** The storage someone pushed to: a path, file:///…, s3://bucket/prefix. */
  url: string;
  /** The snapshot to start from (default: the newest). */
  snapshot?: string;
  log: Logger;
  progress: OperationHandle;
}

// What a clone creates: on failure these go, and nothing else in the folder.
const ENTRIES = ['state.json', 'token', 'logs', 'computes', 'pageserver', 'pulled', 'storages.json'];

/**
 * A new repository from someone else's storage: the main compute starts at its newest (or named) snapshot, on a
 * branch `main` of its own. The storage is attached as `origin` (to pull newer snapshots from), not claimed as
 * storage_dest: nothing is ever written there. The storage holds no password, so the main user gets a new one.
 */
export async function cloneRepository(options: CloneOptions): Promise<{ repo: Repository; meta: RepoMeta; transfer: TransferResult }> {
  const repo = new Repository(options.repoDir);
  if (await repo.exists()) {
    throw new NeonError('already_initialized', `a neon repository already exists at ${repo.dir}: clone into another folder`, {
      status: 409,
    });
  }
  // Everything that can fail on bad input is checked before anything is written.
  const { config, plugins } = await loadConfig(options.projectDir, { command: 'init' }, builtinPlugins());
  const hooks = createHooks();
  applyPlugins(hooks, plugins);
  const storage = await resolveStorage(hooks, parseRemoteUrl(options.url, options.projectDir));
  const stored = await readStoredRepository(storage);
  if (!stored) throw new NeonError('no_repository', `${storage.url} holds no neon repository: nothing was pushed there`, { status: 404 });
  const record = await findRemoteSnapshot(storage, options.snapshot);
  const binaries = await findBinaries({ version: record.pgVersion, bin: config.postgres?.bin });
  const pgUser = pgUserFor(config.postgres?.user);

  await fs.mkdir(repo.logsDir, { recursive: true, mode: 0o755 });
  await fs.mkdir(repo.computesDir, { recursive: true, mode: 0o755 });
  try {
    const runnable = await reachableBinaries(binaries, pgUser);
    checkReachable(pgUser, [path.join(runnable.binDir, 'postgres'), repo.computesDir]);
    await repo.createToken();
    const registry = new StorageRegistry(repo.dir, hooks);
    const pageserver = await Pageserver.open({
      repoDir: repo.dir,
      log: options.log,
      owner: pgUser,
      wal: new WalStore(() => [pulledWalHolder(repo.dir)]),
    });
    const main: ComputeRecord = {
      name: 'main',
      branch: 'main',
      dataDir: path.join('computes', 'main', 'pgdata'),
      port: config.postgres?.port ?? DEFAULT_PG_PORT,
      user: stored.login.user,
      password: randomBytes(18).toString('base64url'),
      database: stored.login.database,
      running: true,
      createdAt: new Date().toISOString(),
    };
    let transfer: TransferResult;
    try {
      transfer = await pullSnapshot(
        { pageserver, repoDir: repo.dir, registry, pgVersion: binaries.version },
        storage,
        null,
        record.snapshot.name,
        options.progress,
        {
          branch: 'main',
        },
      );
      options.progress.step('recovery');
      const { snapshot } = record;
      const target = { lsn: parseLsn(snapshot.lsn), timeline: snapshot.timeline, action: 'promote' as const };
      const walDir = path.join(repo.computesDir, 'main', 'restore-wal');
      const prepared = await pageserver.prepare('main', target, repo.dataDirOf(main), walDir);
      const { user, database, password } = main;
      await recoverWithNewPassword({
        binaries: runnable,
        dataDir: repo.dataDirOf(main),
        pgUser,
        // No hot standby in a single-user replay (its startup process would take the backend's sinval slot), and
        // no waiting for the pusher's safekeepers, which the image's configuration names.
        settings: { ...prepared.settings, hot_standby: 'off', synchronous_standby_names: '' },
        user,
        database,
        password,
      });
      await removeStagedWal(walDir);
    } finally {
      await pageserver.close();
    }
    const type = typeOfUrl(storage.url);
    if (type === 'native' || type === 's3') {
      await registry.attach({ name: 'origin', type, url: storage.url, attachedAt: new Date().toISOString() });
    }
    await repo.writeState({ computes: { main } });
    const meta: RepoMeta = {
      formatVersion: 1,
      createdAt: new Date().toISOString(),
      projectDir: path.resolve(options.projectDir),
      postgres: binaries,
      plugins: plugins.map((p) => p.name),
    };
    await repo.writeMeta(meta);
    await hooks.init.promise({ repo, log: options.log, storageDest: undefined, pgVersion: binaries.version });
    return { repo, meta, transfer };
  } catch (error) {
    await Promise.all(ENTRIES.map((entry) => fs.rm(path.join(repo.dir, entry), { recursive: true, force: true })));
    throw error;
  }
}
