import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { loadConfig } from './config.js';
import { NeonError } from './errors.js';
import { createHooks } from './hooks.js';
import { isDaemonOf } from './lock.js';
import type { Logger } from './log.js';
import { applyPlugins } from './plugin.js';
import { findBinaries, reachableBinaries } from './postgres/binaries.js';
import { initdb } from './postgres/initdb.js';
import { checkReachable, pgUserFor } from './postgres/user.js';
import { resolveStorage } from './resolve.js';
import { Repository, type ComputeRecord, type RepoMeta } from './repository.js';

/** Options of `neon init` (also used by the first `neon start`). */
export interface InitOptions {
  repoDir: string;
  /** Folder whose neon.config.* applies (the current folder). */
  projectDir: string;
  storageDest?: string;
  pgVersion?: number;
  /** Recreate an existing repository (its data is deleted). */
  force?: boolean;
  log: Logger;
}

/** Port of the main compute unless configured (taken → a free one at start). */
export const DEFAULT_PG_PORT = 55432;

// Entries init creates; --force and the clean-up of a half-made repository remove these and nothing else, so
// that pointing NEON_REPO_DIR at a folder with other files in it never deletes them.
const REPO_ENTRIES = ['config.json', 'state.json', 'token', 'daemon.json', 'daemon.pid', 'logs', 'computes', 'safekeepers', 'offload'];

/**
 * Create a repository: the API token, the main compute's data directory (initdb), the state, and last the
 * config snapshot that marks the repository complete. Then the plugins' `init` hooks run.
 */
export async function initRepository(options: InitOptions): Promise<{ repo: Repository; meta: RepoMeta }> {
  const repo = new Repository(options.repoDir);
  if (await repo.exists()) {
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
  const { config, plugins } = await loadConfig(options.projectDir, { command: 'init' });
  const hooks = createHooks();
  applyPlugins(hooks, plugins);
  const storageDestRaw = options.storageDest ?? config.storage_dest;
  const storage = storageDestRaw ? await resolveStorage(hooks, storageDestRaw, options.projectDir) : undefined;
  const binaries = await findBinaries({ version: options.pgVersion ?? config.postgres?.version, bin: config.postgres?.bin });
  const pgUser = pgUserFor(config.postgres?.user);

  await Promise.all(REPO_ENTRIES.map((entry) => fs.rm(path.join(repo.dir, entry), { recursive: true, force: true })));
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
    user: 'postgres',
    password: randomBytes(18).toString('base64url'),
    database: 'postgres',
    running: true,
    createdAt: new Date().toISOString(),
  };
  try {
    await initdb({ binaries: runnable, dataDir: repo.dataDirOf(main), superuser: main.user, password: main.password, pgUser });
  } catch (error) {
    await fs.rm(path.join(repo.computesDir, 'main'), { recursive: true, force: true });
    throw error;
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
  await hooks.init.promise({ repo, log: options.log, storageDest: meta.storageDest, pgVersion: binaries.version });
  return { repo, meta };
}
