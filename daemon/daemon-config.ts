import { loadConfig, type NeonConfig } from '../core/config.js';
import { createHooks, type NeonHooks } from '../core/hooks.js';
import type { Launcher } from '../core/launcher.js';
import type { Logger } from '../core/log.js';
import { applyPlugins, type NeonPlugin } from '../core/plugin.js';
import { resolveLauncher } from '../core/resolve.js';
import { trace } from '../lib/trace.js';
import { checkBinaries, reachableBinaries, type PgBinaries } from '../postgres/binaries.js';
import { ensureSocketDir, socketDirOf } from '../postgres/internal.js';
import { pgUserFor, type PgUser } from '../postgres/user.js';
import { builtinPlugins } from './builtins.js';
import { makePrivate } from './modes.js';
import type { RepoMeta, Repository } from './repository.js';

/** What the daemon sets itself up with before it starts anything. */
export interface Configured {
  config: NeonConfig;
  configFile?: string;
  plugins: NeonPlugin[];
  hooks: NeonHooks;
  pgUser?: PgUser;
  binaries: PgBinaries;
  socketDir: string;
  computeLauncher: Launcher;
}

/**
 * The config file and its plugins, the Postgres binaries and user, the computes' socket folder and launcher
 * (`onLaunch` is called once each launch has spawned its process or failed to).
 */
export async function configure(repo: Repository, meta: RepoMeta, log: Logger, onLaunch: () => void): Promise<Configured> {
  const loaded = await loadConfig(meta.projectDir, { command: 'start' }, builtinPlugins());
  const hooks = createHooks();
  applyPlugins(hooks, loaded.plugins);
  log.info('config %s; plugins: %s', loaded.file ?? '(defaults)', loaded.plugins.map((p) => p.name).join(', '));
  trace('daemon', 'config loaded');
  const pgUser = pgUserFor(loaded.config.postgres?.user);
  const binaries = await reachableBinaries(await checkBinaries(meta.postgres), pgUser);
  // After the binaries: a copy of them made for the Postgres user must stay readable by it.
  makePrivate(repo, pgUser, log);
  const socketDir = socketDirOf(repo.dir);
  ensureSocketDir(socketDir, pgUser);
  const computeLauncher = notifying(await resolveLauncher(hooks, 'compute'), onLaunch);
  trace('daemon', 'binaries checked, launcher resolved');
  return { config: loaded.config, configFile: loaded.file, plugins: loaded.plugins, hooks, pgUser, binaries, socketDir, computeLauncher };
}

/** `launcher`, calling `after` once each launch has spawned its process or failed to. */
function notifying(launcher: Launcher, after: () => void): Launcher {
  return {
    launch: (spec) =>
      launcher.launch(spec).finally(() => {
        trace('daemon', `${spec.name}: process spawned`);
        after();
      }),
  };
}
