import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { NeonError } from '../core/errors.js';
import type { NeonHooks } from '../core/hooks.js';
import type { LaunchedProcess, Launcher, ProcessExit } from '../core/launcher.js';
import type { Logger } from '../core/log.js';
import { portOrFree } from '../lib/net.js';
import type { PgBinaries } from '../postgres/binaries.js';
import { writeComputeConf } from '../postgres/conf.js';
import { ensureSocketDir } from '../postgres/internal.js';
import { adoptPostmaster, readPostmasterPid, stopLeftovers } from '../postgres/postmaster.js';
import { ensureInternalRole, sql, type Login } from '../postgres/sql.js';
import { asUser, type PgUser } from '../postgres/user.js';
import { isPrimary, type ComputeRecord, type Repository } from './repository.js';

/** Life of a compute as shown by `neon status` and `GET /pgs`. */
export type ComputeState = 'stopped' | 'starting' | 'running' | 'stopping' | 'restarting' | 'failed';

/** What the REST API says about a compute. */
export interface ComputeInfo {
  name: string;
  branch: string;
  state: ComputeState;
  pid: number | null;
  port: number;
  data_dir: string;
  log_file: string;
  connection_string: string;
  /** Automatic restarts after unexpected exits since the compute was last started by request. */
  restarts: number;
  /** While `restarting`: when the next attempt is due. */
  next_restart_at?: string;
  last_exit?: { code: number | null; signal: string | null; at: string };
  read_only: boolean;
  /** A hot standby following its branch's primary. */
  replica: boolean;
  /** The point of history it was made at, for a static compute. */
  at: string | null;
  /** Where its last recovery stopped (after a start at a point of history). */
  reached_lsn: string | null;
}

/** What a compute needs from the daemon. */
export interface ComputeDeps {
  repo: Repository;
  binaries: PgBinaries;
  pgUser?: PgUser;
  /** The private Unix socket folder where the daemon and safekeepers log in (see postgres/internal.ts). */
  socketDir: string;
  launcher: Launcher;
  hooks: NeonHooks;
  log: Logger;
  sharedBuffers?: string;
  settings?: Record<string, string | number | boolean>;
  /** Persist a changed record (its port) in state.json. */
  save(record: ComputeRecord): Promise<void>;
}

/** How long a compute may take to accept connections (crash recovery of a big WAL backlog can be slow). */
const READY_TIMEOUT_MS = 120_000;
const ENDED_BEFORE_TARGET = /recovery ended before configured recovery target was reached/;

/** How long an archive recovery may take to reach its target. */
const RECOVERY_TIMEOUT_MS = 30 * 60_000;
/** Restart backoff after unexpected exits: at once, then 1 s doubling to 30 s; reset by a healthy minute. */
const RESTART_MIN_MS = 1000;
const RESTART_MAX_MS = 30_000;
const HEALTHY_UPTIME_MS = 60_000;

/**
 * One compute: a Postgres server process over a data directory of the repository, supervised by the daemon the
 * way a service manager does: an exit nobody asked for is logged, reported to the `computeExited` observers and
 * answered by a restart, again and again with a growing pause (a crash loop must not spin), the pause reset
 * once the compute has run for a healthy minute. Only `pg stop` ends it.
 */
export class Compute {
  state: ComputeState = 'stopped';
  restarts = 0;
  private process?: LaunchedProcess;
  private stopping = false;
  private lastExit?: ComputeInfo['last_exit'];
  private transition: Promise<void> = Promise.resolve();
  /** Failed attempts in a row (for the backoff), the pending restart, and since when it has been running. */
  private failures = 0;
  private restartTimer?: NodeJS.Timeout;
  private nextRestartAt?: number;
  private runningSince = 0;

  constructor(
    public record: ComputeRecord,
    private readonly deps: ComputeDeps,
  ) {}

  get dataDir(): string {
    return this.deps.repo.dataDirOf(this.record);
  }

  get logFile(): string {
    return this.deps.repo.logFile(`compute-${this.record.name}`);
  }

  /** How the daemon logs in: the internal role over the private socket (see postgres/sql.ts). */
  get login(): Login {
    return { ...this.record, socketDir: this.deps.socketDir };
  }

  /** Run one statement as the daemon (internal role): its own small queries. */
  query(statement: string): Promise<Record<string, string | null>[]> {
    return sql(this.login, statement);
  }

  /** postgresql:// URL with the compute's password, for clients. */
  get connectionString(): string {
    const { user, password, port, database } = this.record;
    return `postgresql://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${port}/${encodeURIComponent(database)}`;
  }

  info(): ComputeInfo {
    return {
      name: this.record.name,
      branch: this.record.branch,
      state: this.state,
      pid: this.process && ['starting', 'running', 'stopping'].includes(this.state) ? this.process.pid : null,
      port: this.record.port,
      data_dir: this.dataDir,
      log_file: this.logFile,
      connection_string: this.connectionString,
      restarts: this.restarts,
      ...(this.state === 'restarting' && this.nextRestartAt ? { next_restart_at: new Date(this.nextRestartAt).toISOString() } : {}),
      ...(this.lastExit ? { last_exit: this.lastExit } : {}),
      read_only: !!this.record.readOnly,
      replica: !!this.record.replica,
      at: this.record.at ?? null,
      reached_lsn: this.reachedLsn ?? null,
    };
  }

  /** Start it (a no-op when it runs). Requests are queued so that start and stop never interleave. */
  start(): Promise<void> {
    return this.queue(async () => {
      if (this.state === 'running') return;
      this.cancelRestart();
      this.restarts = 0;
      this.failures = 0;
      try {
        await this.launch();
      } catch (error) {
        // A time after the last commit of the WAL means "the end": Postgres only stops at a time on a commit after
        // it, and gives up at the end of the WAL. Recover to the end instead.
        const settings = this.record.recovery?.settings;
        if (!settings?.recovery_target_time || !ENDED_BEFORE_TARGET.test((error as Error).message)) throw error;
        const { recovery_target_time: time, ...rest } = settings;
        this.deps.log.info('no commit after %s in the WAL of compute %s: recovering to the end instead', time, this.record.name);
        this.record = { ...this.record, recovery: { ...this.record.recovery!, settings: rest } };
        await this.deps.save(this.record);
        await this.launch();
      }
    });
  }

  /** Change its extra settings (a replica became a primary: it now waits for safekeepers) and reload them. */
  async applySettings(settings: Record<string, string | number | boolean>): Promise<void> {
    this.deps.settings = { ...this.deps.settings, ...settings };
    await writeComputeConf(
      this.dataDir,
      {
        port: this.record.port,
        clusterName: `neon-${this.record.name}`,
        socketDir: this.deps.socketDir,
        sharedBuffers: this.deps.sharedBuffers,
        extra: { ...this.deps.settings, ...this.record.recovery?.settings },
      },
      this.deps.pgUser,
    );
    if (this.state === 'running') await this.query('select pg_reload_conf()');
  }

  /** Stop it: fast shutdown (clients disconnected, a checkpoint written), escalating if it does not go. */
  stop(): Promise<void> {
    return this.queue(async () => {
      this.cancelRestart();
      const child = this.process;
      if (!child || this.state === 'stopped' || this.state === 'failed' || this.state === 'restarting') {
        this.state = this.state === 'failed' ? 'failed' : 'stopped';
        this.stopping = true;
        return;
      }
      this.state = 'stopping';
      this.stopping = true;
      for (const [signal, waitMs] of [
        ['SIGINT', 60_000],
        ['SIGQUIT', 10_000],
        ['SIGKILL', 10_000],
      ] as const) {
        child.kill(signal);
        const done = await Promise.race([child.exited.then(() => true), sleep(waitMs).then(() => false)]);
        if (done) break;
        this.deps.log.warn('compute %s did not stop after %s; escalating', this.record.name, signal);
      }
      await child.exited;
      this.state = 'stopped';
    });
  }

  private queue(work: () => Promise<void>): Promise<void> {
    const next = this.transition.then(work);
    this.transition = next.catch(() => undefined);
    return next;
  }

  private async launch(): Promise<void> {
    const { deps, record } = this;
    const log = deps.log;
    this.state = 'starting';
    this.stopping = false;
    try {
      ensureSocketDir(deps.socketDir, deps.pgUser);
      if (await this.adopt()) return;
      const leftovers = await stopLeftovers(this.dataDir);
      if (leftovers.length) log.warn('stopped %d leftover process(es) of compute %s from an earlier run', leftovers.length, record.name);
      const port = await portOrFree(record.port);
      if (port !== record.port) {
        log.warn('port %d of compute %s is taken; using %d', record.port, record.name, port);
        this.record = { ...record, port };
        await deps.save(this.record);
      }
      const recovery = this.record.recovery;
      // A static compute with no target left (a time after the last commit) follows the WAL to its end as a
      // standby, which stays read-only there; archive recovery would promote it.
      if (recovery?.until === 'paused' && !hasTarget(recovery.settings)) {
        fs.rmSync(path.join(this.dataDir, 'recovery.signal'), { force: true });
        fs.writeFileSync(path.join(this.dataDir, 'standby.signal'), '');
        if (deps.pgUser) fs.chownSync(path.join(this.dataDir, 'standby.signal'), deps.pgUser.uid, deps.pgUser.gid);
      }
      await writeComputeConf(
        this.dataDir,
        {
          port,
          clusterName: `neon-${record.name}`,
          socketDir: deps.socketDir,
          sharedBuffers: deps.sharedBuffers,
          extra: { ...deps.settings, ...recovery?.settings },
        },
        deps.pgUser,
      );
      const child = await deps.launcher.launch({
        name: `compute ${record.name}`,
        command: path.join(deps.binaries.binDir, 'postgres'),
        args: ['-D', this.dataDir],
        cwd: this.dataDir,
        ...asUser(deps.pgUser),
        logFile: this.logFile,
      });
      this.process = child;
      child.exited.then((exit) => this.onExit(child, exit));
      await this.waitReady(child);
      if (recovery) await this.waitRecovery(child, recovery.until);
      await this.running(child, port);
    } catch (error) {
      this.state = 'failed';
      this.process?.kill('SIGKILL');
      throw error;
    }
  }

  // Running and ready: make sure neon can always get in (a primary of an older repository gets the internal role
  // here), then tell the observers (the safekeepers attach to a primary there).
  private async running(child: LaunchedProcess, port: number): Promise<void> {
    const { deps, record } = this;
    if (isPrimary(record)) {
      await ensureInternalRole(this.login)
        .then(
          (done) =>
            done === 'created' && deps.log.info('created the role neon_internal in compute %s (made by an older neon)', record.name),
        )
        .catch((error) => deps.log.error('compute %s: %s', record.name, error.message));
    }
    this.state = 'running';
    this.runningSince = Date.now();
    deps.log.info('compute %s running (pid %d, port %d)', record.name, child.pid, port);
    await deps.hooks.computeStarted
      .promise({ name: record.name, pid: child.pid, port })
      .catch((error) => deps.log.error('%s', error.message));
  }

  // A postmaster of this compute that outlived a killed daemon keeps serving its clients: take it over instead of
  // restarting it (not one mid-recovery: the daemon must see that through itself).
  private async adopt(): Promise<boolean> {
    if (this.record.recovery) return false;
    const found = adoptPostmaster(this.dataDir);
    if (!found) return false;
    const { deps } = this;
    if (found.port !== this.record.port) {
      this.record = { ...this.record, port: found.port };
      await deps.save(this.record);
    }
    this.process = found;
    found.exited.then((exit) => this.onExit(found, exit));
    deps.log.warn('compute %s was still running (pid %d) after the previous daemon ended: adopted', this.record.name, found.pid);
    await this.running(found, found.port);
    // Settings may have changed meanwhile (the number of safekeepers): written, and reloaded now that it runs.
    await this.applySettings({}).catch((error) =>
      deps.log.warn('settings of compute %s not reloaded: %s', this.record.name, error.message),
    );
    return true;
  }

  /** The LSN recovery stopped at, after a start at a point of history. */
  reachedLsn?: string;

  // Archive recovery towards a target: wait until Postgres has promoted there (a primary), or paused there (a
  // static compute). Recovery that ends early (no WAL to reach the target) makes Postgres exit: say why.
  private async waitRecovery(child: LaunchedProcess, until: 'promoted' | 'paused' | 'standby'): Promise<void> {
    let exited: ProcessExit | undefined;
    child.exited.then((exit) => (exited = exit));
    const query = {
      promoted: 'select (not pg_is_in_recovery())::text as done, pg_last_wal_replay_lsn()::text as lsn',
      paused: "select (pg_get_wal_replay_pause_state() = 'paused')::text as done, pg_last_wal_replay_lsn()::text as lsn",
      // A replica is ready once it accepts read-only connections: it follows its primary from then on.
      standby: 'select pg_is_in_recovery()::text as done, pg_last_wal_replay_lsn()::text as lsn',
    }[until];
    // As a standby at the end of the WAL nothing pauses: done once replay has stood still for a while.
    const standby = until === 'paused' && !hasTarget(this.record.recovery?.settings ?? {});
    let still = 0;
    let previous: string | null | undefined;
    const deadline = Date.now() + RECOVERY_TIMEOUT_MS;
    for (;;) {
      if (exited) {
        const reason = lastFatal(this.logFile);
        throw new NeonError(
          'recovery_failed',
          `compute ${this.record.name} stopped during recovery${reason ? `: ${reason}` : ''}; see ${this.logFile}`,
          {
            status: 400,
          },
        );
      }
      const [row] = await this.query(query).catch(() => []);
      if (standby && row) {
        still = row.lsn === previous ? still + 1 : 0;
        previous = row.lsn;
        if (still >= 10) row.done = 'true';
      }
      if (row?.done === 'true') {
        this.reachedLsn = row.lsn ?? undefined;
        if (until === 'promoted') {
          // A primary now: the WAL gathered for its recovery is not needed any more.
          const walDir = this.record.recovery?.walDir;
          if (walDir) fs.rmSync(walDir, { recursive: true, force: true });
          this.record = { ...this.record, recovery: undefined };
          await this.deps.save(this.record);
        }
        return;
      }
      if (Date.now() > deadline)
        throw new NeonError('recovery_failed', `compute ${this.record.name} did not finish recovery in time; see ${this.logFile}`);
      await sleep(50);
    }
  }

  // Postgres writes "ready" into postmaster.pid once it accepts connections (what `pg_ctl -w` waits for).
  private async waitReady(child: LaunchedProcess): Promise<void> {
    let exited: ProcessExit | undefined;
    child.exited.then((exit) => (exited = exit));
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (exited) {
        const reason = lastFatal(this.logFile);
        throw new NeonError(
          'compute_start_failed',
          `compute ${this.record.name} exited while starting (${reason ?? describe(exited)}); see ${this.logFile}`,
          { status: reason ? 400 : 500 },
        );
      }
      const info = readPostmasterPid(this.dataDir);
      if (info?.pid === child.pid && (info.status === 'ready' || info.status === 'standby')) return;
      if (Date.now() > deadline) {
        throw new NeonError(
          'compute_start_failed',
          `compute ${this.record.name} did not become ready in ${READY_TIMEOUT_MS / 1000}s; see ${this.logFile}`,
          { status: 500 },
        );
      }
      await sleep(15);
    }
  }

  private async onExit(child: LaunchedProcess, exit: ProcessExit): Promise<void> {
    if (child !== this.process) return;
    this.lastExit = { ...exit, at: new Date().toISOString() };
    const { log, hooks } = this.deps;
    const expected = this.stopping;
    await hooks.computeExited
      .promise({ name: this.record.name, pid: child.pid, code: exit.code, signal: exit.signal, expected })
      .catch((error) => log.error('%s', error.message));
    // Exits while starting are reported by waitReady; exits we asked for need no answer.
    if (expected || this.state !== 'running') return;
    log.error('compute %s exited unexpectedly (%s)', this.record.name, describe(exit));
    if (Date.now() - this.runningSince >= HEALTHY_UPTIME_MS) this.failures = 0;
    this.scheduleRestart();
  }

  // The next attempt of the supervisor: at once after a healthy run, then with a pause doubling up to 30 s.
  private scheduleRestart(): void {
    const { log } = this.deps;
    const delay = this.failures === 0 ? 0 : Math.min(RESTART_MIN_MS * 2 ** (this.failures - 1), RESTART_MAX_MS);
    this.failures += 1;
    this.state = 'restarting';
    this.nextRestartAt = Date.now() + delay;
    log.warn('restarting compute %s in %d ms (attempt %d)', this.record.name, delay, this.failures);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      void this.queue(async () => {
        if (this.state !== 'restarting') return; // stopped or started by request meanwhile
        this.restarts += 1;
        try {
          await this.launch();
        } catch (error) {
          log.error('restart of compute %s failed: %s', this.record.name, (error as Error).message);
          this.scheduleRestart();
        }
      });
    }, delay);
  }

  private cancelRestart(): void {
    clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    this.nextRestartAt = undefined;
  }
}

/** True when recovery settings name a point to stop at. */
function hasTarget(settings: Record<string, string>): boolean {
  return Object.keys(settings).some((key) => /^recovery_target_(lsn|time|xid|name)$/.test(key) || key === 'recovery_target');
}

/** The last FATAL or PANIC message of a compute's log, which says why it stopped. */
function lastFatal(logFile: string): string | undefined {
  try {
    const lines = fs.readFileSync(logFile, 'utf8').split('\n').slice(-50);
    const fatal = lines.reverse().find((line) => /\b(FATAL|PANIC):/.test(line));
    return fatal?.replace(/^.*?\b(FATAL|PANIC):\s*/, '');
  } catch {
    return undefined;
  }
}

function describe(exit: ProcessExit): string {
  return exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`;
}
