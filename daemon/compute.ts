import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { LaunchedProcess, ProcessExit } from '../core/launcher.js';
import { portOrFree } from '../lib/net.js';
import { writeComputeConf } from '../postgres/conf.js';
import { ensureSocketDir } from '../postgres/internal.js';
import { adoptPostmaster, stopLeftovers } from '../postgres/postmaster.js';
import { ensureInternalRole, sql, type Login } from '../postgres/sql.js';
import { asUser } from '../postgres/user.js';
import { trace } from '../lib/trace.js';
import { finishSync, syncState } from '../pageserver/unsynced.js';
import * as wait from './compute-wait.js';
import type { ComputeDeps, ComputeInfo, ComputeState } from './compute-types.js';
import { isPrimary, type ComputeRecord } from './repository.js';

export type { ComputeDeps, ComputeInfo, ComputeState } from './compute-types.js';

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
        if (!settings?.recovery_target_time || !wait.ENDED_BEFORE_TARGET.test((error as Error).message)) throw error;
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
    await this.writeConf();
    if (this.state === 'running') await this.query('select pg_reload_conf()');
  }

  // neon.conf and neon's pg_hba.conf lines: its port, socket, memory, the extra settings and any recovery's.
  private writeConf(): Promise<void> {
    const { deps, record } = this;
    const conf = { port: record.port, clusterName: `neon-${record.name}`, socketDir: deps.socketDir, sharedBuffers: deps.sharedBuffers };
    return writeComputeConf(this.dataDir, { ...conf, extra: { ...deps.settings, ...record.recovery?.settings } }, deps.pgUser);
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
      if (syncState(this.dataDir) === 'lost') {
        // Restored, and the machine went down before its files reached the disk (see pageserver/unsynced.ts).
        log.warn(
          'compute %s: its data directory was restored before the machine last went down, and had not all reached the disk: making it again from the image and the WAL',
          record.name,
        );
        this.record = await deps.remake(this.record);
        await deps.save(this.record);
      }
      if (await this.adopt()) return;
      trace('daemon', `compute ${record.name}: launch`);
      const leftovers = await stopLeftovers(this.dataDir);
      if (leftovers.length) log.warn('stopped %d leftover process(es) of compute %s from an earlier run', leftovers.length, record.name);
      const port = await portOrFree(record.port);
      if (port !== record.port) await this.movePort(port, 'is taken');
      const recovery = this.record.recovery;
      if (recovery) wait.signalFor(this.dataDir, recovery, deps.pgUser);
      // The port was free when looked at, but another repository's compute starting at the same moment may bind it
      // first: then Postgres starts again on a port the kernel picks.
      const child = await wait.onFreePort(
        () => this.spawnReady(),
        (taken) => this.movePort(taken, 'was taken as it started'),
      );
      trace('daemon', `compute ${record.name}: ready`);
      if (recovery) await this.recover(child, recovery.until);
      trace('daemon', `compute ${record.name}: recovered`);
      await this.running(child, this.record.port);
    } catch (error) {
      this.state = 'failed';
      this.process?.kill('SIGKILL');
      throw error;
    }
  }

  // Postgres, until it accepts connections.
  private async spawnReady(): Promise<LaunchedProcess> {
    const { deps } = this;
    await this.writeConf();
    const child = await deps.launcher.launch({
      name: `compute ${this.record.name}`,
      command: path.join(deps.binaries.binDir, 'postgres'),
      args: ['-D', this.dataDir],
      cwd: this.dataDir,
      ...asUser(deps.pgUser),
      logFile: this.logFile,
    });
    this.process = child;
    child.exited.then((exit) => this.onExit(child, exit));
    await wait.waitReady(this.waited, child);
    return child;
  }

  private async movePort(port: number, why: string): Promise<void> {
    this.deps.log.warn('port %d of compute %s %s; using %d', this.record.port, this.record.name, why, port);
    this.record = { ...this.record, port };
    await this.deps.save(this.record);
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
    this.flushRestored();
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

  private flushing = false;

  // A data directory restored for it started before its files reached the disk: they are flushed now, while it
  // runs (see pageserver/unsynced.ts). A failure leaves it marked: the next start tries again.
  private flushRestored(): void {
    const { dataDir, deps } = this;
    if (this.flushing || syncState(dataDir) !== 'pending') return;
    this.flushing = true;
    void finishSync(dataDir)
      .then(() => deps.log.info('compute %s: its restored files are on disk', this.record.name))
      .catch((error: NodeJS.ErrnoException) => {
        // Moved or removed meanwhile (a checkout kept it aside, a destroy): whoever starts it next flushes it.
        if (error.code !== 'ENOENT') deps.log.warn('compute %s: its restored files were not flushed: %s', this.record.name, error.message);
      })
      .finally(() => (this.flushing = false));
  }

  /** The LSN recovery stopped at, after a start at a point of history. */
  reachedLsn?: string;

  /** What the waits of compute-wait.ts need of it. */
  private get waited() {
    return { name: this.record.name, dataDir: this.dataDir, logFile: this.logFile };
  }

  // Wait for the recovery to end; a primary then no longer needs the WAL gathered for it, nor its recovery record.
  private async recover(child: LaunchedProcess, until: 'promoted' | 'paused' | 'standby'): Promise<void> {
    const settings = this.record.recovery?.settings ?? {};
    this.reachedLsn = await wait.waitRecovery({ ...this.waited, settings, query: (q) => this.query(q) }, child, until);
    if (until !== 'promoted') return;
    const walDir = this.record.recovery?.walDir;
    if (walDir) fs.rmSync(walDir, { recursive: true, force: true });
    this.record = { ...this.record, recovery: undefined };
    await this.deps.save(this.record);
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
    log.error('compute %s exited unexpectedly (%s)', this.record.name, wait.describe(exit));
    if (Date.now() - this.runningSince >= wait.HEALTHY_UPTIME_MS) this.failures = 0;
    this.scheduleRestart();
  }

  // The next attempt of the supervisor: at once after a healthy run, then with a pause doubling up to 30 s.
  private scheduleRestart(): void {
    const { log } = this.deps;
    const delay = wait.restartDelay(this.failures);
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
