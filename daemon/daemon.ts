import fs from 'node:fs/promises';
import { builtinPlugins } from './builtins.js';
import { loadConfig, type NeonConfig } from '../core/config.js';
import { Compute, type ComputeInfo } from './compute.js';
import { NeonError, isExpected, messageOf } from '../core/errors.js';
import { writeFileAtomic } from '../core/fs-atomic.js';
import { createHooks, type NeonHooks } from '../core/hooks.js';
import { acquireDaemonLock } from './lock.js';
import { createLogger, type Logger } from '../core/log.js';
import { applyPlugins, type NeonPlugin } from '../core/plugin.js';
import { checkBinaries, reachableBinaries, type PgBinaries } from '../postgres/binaries.js';
import { pgUserFor, type PgUser } from '../postgres/user.js';
import { ensureSocketDir, INTERNAL_ROLE, socketDirOf } from '../postgres/internal.js';
import { Health } from './health.js';
import { resolveLauncher, resolveStorage } from '../core/resolve.js';
import { Safekeepers } from './safekeepers.js';
import type { Storage } from '../core/storage.js';
import { WalStore } from '../wal/store.js';
import { ImageService } from './images.js';
import { StorageSync } from './storage-sync.js';
import { claimStorage } from './claim.js';
import type { Launcher } from '../core/launcher.js';
import { Pageserver } from '../pageserver/pageserver.js';
import type { PrimaryInfo } from '../safekeeper/safekeeper.js';
import type { RestServer } from '../core/rest.js';
import type { DaemonContext } from './context.js';
import { isPrimary, Repository, type ComputeRecord, type RepoMeta } from './repository.js';
import { makePrivate } from './modes.js';
import { finishDestroys } from './trash.js';
import { pulledWalHolder } from './storages.js';
import { storageComputeStarted } from './storage-replica.js';
import { trace } from '../lib/trace.js';
import { settled } from '../lib/settled.js';

/** The REST port used when none is configured (the seed's `http://localhost:3000`). */
export const DEFAULT_DAEMON_PORT = 3000;

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
  async start(routes: (rest: RestServer) => RestServer | Promise<RestServer>): Promise<string | undefined> {
    const { repo, meta, log } = this;
    this.releaseLock = await acquireDaemonLock(repo.pidFile, repo.dir);
    await fs.rm(repo.daemonFile, { force: true });
    trace('daemon', 'lock taken');
    const loaded = await loadConfig(meta.projectDir, { command: 'start' }, builtinPlugins());
    this.config = loaded.config;
    this.configFile = loaded.file;
    this.plugins = loaded.plugins;
    this.hooks = createHooks();
    applyPlugins(this.hooks, this.plugins);
    log.info('config %s; plugins: %s', loaded.file ?? '(defaults)', this.plugins.map((p) => p.name).join(', '));

    trace('daemon', 'config loaded');
    this.pgUser = pgUserFor(this.config.postgres?.user);
    this.binaries = await reachableBinaries(await checkBinaries(meta.postgres), this.pgUser);
    // After the binaries: a copy of them made for the Postgres user must stay readable by it.
    makePrivate(repo, this.pgUser, log);
    this.socketDir = socketDirOf(repo.dir);
    ensureSocketDir(this.socketDir, this.pgUser);
    this.computeLauncher = notifying(await resolveLauncher(this.hooks, 'compute'), () => this.onLaunch());
    trace('daemon', 'binaries checked, launcher resolved');
    const token = await repo.readToken();
    // One writer per storage_dest: refused here when another repository holds it (see claim.ts).
    this.storage = meta.storageDest
      ? (await claimStorage(await resolveStorage(this.hooks, meta.storageDest), { repoDir: repo.dir, log: log.child('claim'), hooks: this.hooks }))
          .storage
      : undefined;
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
    this.wal = new WalStore(
      // Safekeepers' WAL, and the WAL pulled with snapshots from other storages (daemon/transfer.ts).
      () => [...this.safekeepers.nodes, pulledWalHolder(repo.dir)],
      this.storage,
      // The main compute's branch first: offload reports its progress.
      () => [this.mainBranch(), ...this.safekeepers.branches().filter((b) => b !== this.mainBranch())],
    );
    trace('daemon', 'storage claimed, state read');
    this.pageserver = await Pageserver.open({
      repoDir: repo.dir,
      log: log.child('pageserver'),
      owner: this.pgUser,
      wal: this.wal,
      hooks: this.hooks,
    });
    if (this.storage) {
      const first = this.pageserver.images('main')[0];
      const systemId = first ? (await this.pageserver.readImage(first.key)).systemId : 'unknown';
      const login = state.computes.main;
      this.sync = new StorageSync(
        this.pageserver,
        this.storage,
        () => ({
          systemId,
          pgVersion: this.binaries.version,
          login: { user: login.user, password: login.password, database: login.database },
          branch: this.mainBranch(),
        }),
        log.child('sync'),
      );
      this.sync.schedule();
    }

    trace('daemon', 'pageserver open');
    await finishDestroys(repo, state, log);
    for (const record of Object.values(state.computes)) this.addCompute(record);
    // The safekeepers follow every primary wherever it runs (its port may change between starts).
    this.hooks.computeStarted.tap('neon:safekeepers', ({ name }) => {
      const record = this.compute(name).record;
      trace('daemon', `compute ${name} running`);
      if (isPrimary(record)) this.safekeepers.attach(record.branch, this.primaryOf(record));
    });
    // Computes over pulled snapshots: this repository's login, and a storage replica's WAL follower.
    this.hooks.computeStarted.tapPromise('neon:storage-computes', ({ name }) => storageComputeStarted(this, name));
    // Side by side, none waiting for another: Postgres, the safekeepers' processes (a primary's commits wait for
    // them through synchronous_standby_names, not its start) and the REST API (whose modules load meanwhile).
    // Postgres is spawned first: compiling the REST modules on this thread would hold its launch up.
    const running = [...this.computes.values()].filter((c) => c.record.running);
    const spawned = this.launches(running.length);
    const computes = Promise.all(running.map((c) => c.start())).then(() => trace('daemon', 'computes running'));
    await Promise.race([spawned, computes.catch(() => undefined)]);
    this.onLaunch = () => undefined;
    const [notice] = await settled([
      this.serve(routes, token),
      computes,
      this.safekeepers.start().then(() => trace('daemon', 'safekeepers spawned')),
    ] as const);
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
    this.images = new ImageService(this, this.config.pageserver);
    if (this.pageserver.images('main').length === 0 && this.computes.get('main')?.state === 'running') {
      this.pageserver.setFirstImage(this.images.take('main'));
    }
    this.images.start();
    this.health.start();
    return notice;
  }

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

  // The REST API on 127.0.0.1, and daemon.json saying where it is; resolves with the notice of listen().
  private async serve(routes: (rest: RestServer) => RestServer | Promise<RestServer>, token: string): Promise<string | undefined> {
    const { RestServer } = await import('../core/rest.js');
    this.rest = await routes(new RestServer(token, this.log.child('rest')));
    const notice = await this.listen();
    await writeFileAtomic(
      this.repo.daemonFile,
      JSON.stringify({ pid: process.pid, port: this.port, startedAt: this.startedAt.toISOString() }) + '\n',
    );
    this.log.info('REST API on http://127.0.0.1:%d', this.port);
    trace('daemon', 'REST listening, daemon.json written');
    return notice;
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
    });
    this.computes.set(record.name, compute);
    return compute;
  }

  // The configured port (neon.config.ts daemon.port, or NEON_PORT) must be free; the default may move.
  private async listen(): Promise<string | undefined> {
    const configured = process.env.NEON_PORT ? Number(process.env.NEON_PORT) : this.config.daemon?.port;
    if (configured !== undefined && (!Number.isInteger(configured) || configured < 0 || configured > 65535)) {
      throw new NeonError('bad_port', `daemon port ${configured} is not a port number (0-65535)`);
    }
    try {
      this.port = await this.rest!.listen(configured ?? DEFAULT_DAEMON_PORT);
      return undefined;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
      if (configured !== undefined) {
        const where = process.env.NEON_PORT ? 'NEON_PORT' : 'daemon.port in neon.config.ts';
        throw new NeonError(
          'port_taken',
          `port ${configured} (set by ${where}) is already in use on 127.0.0.1: free it or choose another port`,
        );
      }
      this.port = await this.rest!.listen(0);
      return `port ${DEFAULT_DAEMON_PORT} is in use, so the REST API listens on port ${this.port}`;
    }
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
