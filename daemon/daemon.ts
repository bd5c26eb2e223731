import fs from 'node:fs/promises';
import { Compute, type ComputeInfo } from './compute.js';
import { NeonError, messageOf } from '../core/errors.js';
import { acquireDaemonLock } from './lock.js';
import type { Logger } from '../core/log.js';
import { INTERNAL_ROLE } from '../postgres/internal.js';
import { Health } from './health.js';
import { resolveLauncher, resolveStorage } from '../core/resolve.js';
import type { NeonConfig } from '../core/config.js';
import type { NeonHooks } from '../core/hooks.js';
import type { NeonPlugin } from '../core/plugin.js';
import type { PgBinaries } from '../postgres/binaries.js';
import type { PgUser } from '../postgres/user.js';
import { configure } from './daemon-config.js';
import { Safekeepers } from './safekeepers.js';
import type { Storage } from '../core/storage.js';
import type { WalStore } from '../wal/store.js';
import type { ImageService } from './images.js';
import type { StorageSync } from './storage-sync.js';
import type { Launcher } from '../core/launcher.js';
import type { Pageserver } from '../pageserver/pageserver.js';
import type { PrimaryInfo } from '../safekeeper/safekeeper.js';
import type { RestServer } from '../core/rest.js';
import type { DaemonContext } from './context.js';
import { isPrimary, Repository, type ComputeRecord, type RepoMeta, type RepoState } from './repository.js';
import { finishDestroys } from './trash.js';
import { serveRest, type RoutesOf } from './daemon-rest.js';
import { trace } from '../lib/trace.js';
import { settled } from '../lib/settled.js';

export { DEFAULT_DAEMON_PORT } from './daemon-rest.js';

// Only what comes before Postgres is spawned is imported above; the history (pageserver, chunk store, WAL),
// storage sync, base images and REST routes are most of the daemon's code and load while Postgres boots.

/**
 * The neon daemon: owns the components of one repository (the computes for now), supervises them and answers
 * the REST API on 127.0.0.1. Stopping it (`neon stop`, SIGTERM, SIGINT) stops everything it started.
 */
export class Daemon implements DaemonContext {
  readonly computes = new Map<string, Compute>();
  readonly startedAt = new Date();
  port = 0;
  hooks!: NeonHooks;
  plugins: NeonPlugin[] = [];
  binaries!: PgBinaries;
  config: NeonConfig = {};
  configFile?: string;
  pgUser?: PgUser;
  safekeepers!: Safekeepers;
  pageserver!: Pageserver;
  images?: ImageService;
  /** Pushes images, packs and history to storage_dest, when there is one. */
  sync?: StorageSync;
  private computeLauncher!: Launcher;
  wal!: WalStore;
  storage?: Storage;
  /** Status sections contributed by plugins (see StartContext.status). */
  readonly pluginStatus = new Map<string, () => unknown>();
  private rest?: RestServer;
  private releaseLock?: () => Promise<void>;
  private shuttingDown?: Promise<void>;
  /** Called once everything is stopped (the daemon process exits there). */
  onStopped: () => void = () => undefined;
  /** Called when a shutdown begins (the watchdog must not restart a daemon that was asked to stop). */
  onStopping: () => void = () => undefined;
  /** The private folder of the computes' Unix sockets, where neon's internal role logs in. */
  socketDir = '';
  /** Problems for `neon status` and the repairs of `neon start` on a running repository. */
  readonly health = new Health(this);

  constructor(
    readonly repo: Repository,
    readonly meta: RepoMeta,
    readonly log: Logger,
    /** The neon CLI script, which child processes such as safekeepers run. */
    readonly cli: string,
  ) {}

  /** Start everything; resolves with a notice for the user (a port that had to change), if any. */
  async start(routes: RoutesOf): Promise<string | undefined> {
    const { repo, meta, log } = this;
    this.releaseLock = await acquireDaemonLock(repo.pidFile, repo.dir);
    await fs.rm(repo.daemonFile, { force: true });
    trace('daemon', 'lock taken');
    Object.assign(this, await configure(repo, meta, log, () => this.onLaunch()));
    const token = await repo.readToken();
    // One writer per storage_dest: refused here when another repository holds it (see claim.ts).
    if (meta.storageDest) {
      const { claimStorage } = await import('./claim.js');
      const storage = await resolveStorage(this.hooks, meta.storageDest);
      this.storage = (await claimStorage(storage, { repoDir: repo.dir, log: log.child('claim'), hooks: this.hooks })).storage;
    }
    const state = await repo.readState();
    const safekeeperCount = this.config.safekeepers ?? 1;
    this.safekeepers = new Safekeepers(safekeeperCount, {
      repo,
      launcher: safekeeperCount ? await resolveLauncher(this.hooks, 'safekeeper') : this.computeLauncher,
      cli: this.cli,
      hooks: this.hooks,
      log: log.child('safekeepers'),
      mainBranch: () => this.mainBranch(),
    });
    trace('daemon', 'storage claimed, state read');
    await finishDestroys(repo, state, log);
    for (const record of Object.values(state.computes)) this.addCompute(record);
    // The history opens once Postgres is spawned (below), or once a compute is up without a spawn (adopted after
    // a daemon crash): what a started compute needs of it waits for it.
    let openHistory!: () => void;
    const history = new Promise<void>((resolve) => (openHistory = resolve)).then(() => this.openHistory(state));
    this.history = () => (openHistory(), history);
    this.tapComputeStarted(this.history);
    // Side by side, none waiting for another: Postgres, the safekeepers' processes (a primary's commits wait for
    // them through synchronous_standby_names, not its start), the history and the REST API (whose modules load
    // meanwhile). Postgres is spawned first: compiling those modules on this thread would hold its launch up.
    const running = [...this.computes.values()].filter((c) => c.record.running);
    const spawned = this.launches(running.length);
    const computes = Promise.all(running.map((c) => c.start())).then(() => trace('daemon', 'computes running'));
    await Promise.race([spawned, computes.catch(() => undefined)]);
    this.onLaunch = () => undefined;
    openHistory();
    const [served] = await settled([
      history.then(() => serveRest(routes, token, this)),
      computes,
      this.safekeepers.start().then(() => trace('daemon', 'safekeepers spawned')),
    ] as const);
    this.rest = served.rest;
    this.port = served.port;
    await this.afterStart();
    return served.notice;
  }

  // The WAL store, the pageserver and the storage sync (daemon-history.ts, loaded here).
  private async openHistory(state: RepoState): Promise<void> {
    const { openHistory } = await import('./daemon-history.js');
    const { wal, pageserver, sync } = await openHistory({
      repo: this.repo,
      log: this.log,
      hooks: this.hooks,
      owner: this.pgUser,
      storage: this.storage,
      safekeepers: this.safekeepers,
      binaries: this.binaries,
      login: state.computes.main,
      mainBranch: () => this.mainBranch(),
    });
    Object.assign(this, { wal, pageserver, sync });
    trace('daemon', 'pageserver open');
  }

  private tapComputeStarted(history: () => Promise<void>): void {
    // The safekeepers follow every primary wherever it runs (its port may change between starts).
    this.hooks.computeStarted.tap('neon:safekeepers', ({ name }) => {
      const record = this.compute(name).record;
      trace('daemon', `compute ${name} running`);
      if (isPrimary(record)) this.safekeepers.attach(record.branch, this.primaryOf(record));
    });
    // Computes over pulled snapshots: this repository's login, and a storage replica's WAL follower.
    this.hooks.computeStarted.tapPromise('neon:storage-computes', async ({ name }) => {
      await history();
      const { storageComputeStarted } = await import('./storage-replica.js');
      await storageComputeStarted(this, name);
    });
  }

  // Once the computes, safekeepers and REST API are up: streams, plugins' start hooks, base images, health.
  private async afterStart(): Promise<void> {
    const { repo, meta, log } = this;
    // Stopped primaries too: their streams report that the primary is down, and resume when it is back.
    for (const compute of this.computes.values()) {
      if (!isPrimary(compute.record)) continue;
      this.safekeepers.attach(compute.record.branch, this.primaryOf(compute.record));
      if (compute.state === 'running') {
        void this.safekeepers.dropStaleSlots(this.primaryOf(compute.record)).catch((e) => log.warn('%s', messageOf(e)));
      }
    }
    await this.hooks.start.promise({
      repo,
      log,
      storageDest: meta.storageDest,
      storage: this.storage,
      wal: this.wal,
      status: this.pluginStatus,
    });
    trace('daemon', 'start hooks done');
    const { ImageService } = await import('./images.js');
    this.images = new ImageService(this, this.config.pageserver);
    if (this.pageserver.images('main').length === 0 && this.computes.get('main')?.state === 'running') {
      this.pageserver.setFirstImage(this.images.take('main'));
    }
    this.images.start();
    this.health.start();
  }

  /** Opens the history (pageserver, WAL) now if it is not yet, and resolves once it is open. */
  private history: () => Promise<void> = async () => undefined;

  /** Called after each compute launch (see launches()). */
  private onLaunch: () => void = () => undefined;

  // Resolves once `count` computes have been spawned (or failed to be).
  private launches(count: number): Promise<void> {
    return new Promise((resolve) => {
      let left = count;
      this.onLaunch = () => void (--left <= 0 && resolve());
      if (left <= 0) resolve();
    });
  }

  /** Supervise a compute of the repository (read from state.json, or just created). */
  addCompute(record: ComputeRecord): Compute {
    // Modest memory for every compute but main unless configured, so that ten of them fit on a laptop.
    const sharedBuffers = this.config.postgres?.sharedBuffers ?? (record.name === 'main' ? undefined : '32MB');
    const compute = new Compute(record, {
      repo: this.repo,
      binaries: this.binaries,
      pgUser: this.pgUser,
      socketDir: this.socketDir,
      launcher: this.computeLauncher,
      hooks: this.hooks,
      log: this.log.child(`compute ${record.name}`),
      sharedBuffers,
      settings: { ...this.config.postgres?.settings, ...this.primarySettings(record) },
      save: (changed) => this.saveCompute(changed),
      remake: async (lost) => {
        await this.history();
        return (await import('./computes.js')).remakeDataDir(this, lost);
      },
    });
    this.computes.set(record.name, compute);
    return compute;
  }

  /** The branch of the main compute: the default branch for snapshots and new branches. */
  mainBranch(): string {
    return this.computes.get('main')?.record.branch ?? 'main';
  }

  /** Settings that make a branch's primary wait for its safekeepers. */
  primarySettings(record: ComputeRecord): Record<string, string> {
    const names = isPrimary(record) ? this.safekeepers.standbyNames() : undefined;
    return names ? { synchronous_standby_names: names } : {};
  }

  /** How a safekeeper (or a base image, or a replica) reaches a compute: the internal role over its Unix socket. */
  primaryOf(record: ComputeRecord): PrimaryInfo {
    return { host: this.socketDir, port: record.port, user: INTERNAL_ROLE };
  }

  /** Record a changed compute (its port, whether it should run) in state.json. */
  async saveCompute(record: { name: string } & Partial<Compute['record']>): Promise<void> {
    const state = await this.repo.readState();
    // A change to a compute that was destroyed meanwhile must not bring back a partial record.
    if (!Object.hasOwn(state.computes, record.name) && !('dataDir' in record)) return;
    state.computes[record.name] = { ...state.computes[record.name], ...record };
    await this.repo.writeState(state);
  }

  private serial: Promise<unknown> = Promise.resolve();

  /** Run changes of history and computes one at a time (a checkout and a snapshot must not interleave). */
  serially<T>(work: () => Promise<T>): Promise<T> {
    const run = this.serial.then(work);
    this.serial = run.catch(() => undefined);
    return run;
  }

  /** What `GET /pgs` answers. */
  pgs(): ComputeInfo[] {
    return [...this.computes.values()].map((c) => c.info());
  }

  /** The compute called `name`, or a 404. */
  compute(name: string): Compute {
    const found = this.computes.get(name);
    if (!found) throw new NeonError('pg_not_found', `no compute named "${name}" (see \`neon pg list\`)`, { status: 404 });
    return found;
  }

  /** Stop everything and exit. Safe to call more than once. */
  shutdown(reason: 'request' | 'signal'): Promise<void> {
    this.shuttingDown ??= (async () => {
      const { log, repo } = this;
      log.info('stopping (%s)', reason);
      this.onStopping();
      this.health.stop();
      await this.images?.stop();
      await this.sync?.flush().catch((e) => log.warn('%s', messageOf(e)));
      if (this.hooks) await this.hooks.stop.promise({ repo, log, reason }).catch((e) => log.error('%s', messageOf(e)));
      await Promise.all([...this.computes.values()].map((c) => c.stop().catch((e) => log.error('%s', messageOf(e)))));
      // After the computes: a stopping primary sends its last WAL (the shutdown checkpoint) to the safekeepers.
      await this.safekeepers?.stop().catch((e) => log.error('%s', messageOf(e)));
      await this.rest?.close();
      await this.pageserver?.close().catch((e) => log.error('%s', messageOf(e)));
      // Only the daemon that holds the lock owns daemon.json: one that lost the lock to a running daemon (two
      // `neon start`s, or a watchdog's restart) must not take that daemon's address away.
      if (this.releaseLock) await fs.rm(repo.daemonFile, { force: true });
      await this.releaseLock?.();
      log.info('stopped');
      this.onStopped();
    })();
    return this.shuttingDown;
  }
}
