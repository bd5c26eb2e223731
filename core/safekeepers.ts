import fs from 'node:fs';
import path from 'node:path';
import { NeonError } from './errors.js';
import { textRows, WireConnection } from '../replication/connection.js';
import type { NeonHooks } from './hooks.js';
import type { LaunchedProcess, Launcher } from './launcher.js';
import type { Logger } from './log.js';
import type { Repository } from './repository.js';
import type { FromSafekeeper, ToSafekeeper } from '../safekeeper/main.js';
import type { PrimaryInfo, SafekeeperStatus } from '../safekeeper/safekeeper.js';

/** What the REST API says about a safekeeper. */
export interface SafekeeperInfo {
  name: string;
  state: 'stopped' | 'running' | 'restarting';
  pid: number | null;
  connected: boolean;
  timeline: number | null;
  flush_lsn: string | null;
  primary_lsn: string | null;
  lag_bytes: number | null;
  last_segment: string | null;
  error: string | null;
  restarts: number;
  rss_bytes: number | null;
  cpu_seconds: number | null;
  dir: string;
}

/** What safekeepers need from the daemon. */
export interface SafekeeperDeps {
  repo: Repository;
  launcher: Launcher;
  /** The neon CLI script: safekeepers are `node <cli> __safekeeper` processes. */
  cli: string;
  hooks: NeonHooks;
  log: Logger;
  /** The branch whose WAL they keep: the main compute's. */
  branch: string;
}

const RESTART_MIN_MS = 1000;
const RESTART_MAX_MS = 30_000;

/** One safekeeper process, restarted with backoff whenever it dies unasked. */
export class SafekeeperNode {
  state: SafekeeperInfo['state'] = 'stopped';
  restarts = 0;
  private process?: LaunchedProcess;
  private status: SafekeeperStatus = {
    connected: false,
    timeline: null,
    flushLsn: null,
    primaryLsn: null,
    lagBytes: null,
    lastSegment: null,
    error: null,
  };
  private primary?: PrimaryInfo;
  private wanted = false;
  private restartTimer?: NodeJS.Timeout;

  constructor(
    readonly name: string,
    private readonly deps: SafekeeperDeps,
  ) {}

  get dir(): string {
    return path.join(this.deps.repo.dir, 'safekeepers', this.name);
  }

  /** Its physical replication slot on the primary. */
  get slot(): string {
    return `neon_${this.name}`;
  }

  /** The last status it reported. */
  get lastStatus(): SafekeeperStatus {
    return this.status;
  }

  async start(primary: PrimaryInfo): Promise<void> {
    this.primary = primary;
    this.wanted = true;
    if (this.process) return;
    clearTimeout(this.restartTimer);
    await this.launch();
  }

  /** Tell it where the primary is now (its port can change between runs). */
  setPrimary(primary: PrimaryInfo): void {
    this.primary = primary;
    this.send({ type: 'primary', primary });
  }

  async stop(): Promise<void> {
    this.wanted = false;
    clearTimeout(this.restartTimer);
    const child = this.process;
    if (!child) {
      this.state = 'stopped';
      return;
    }
    // It flushes what it received and ends its stream; SIGKILL only if it does not go.
    this.send({ type: 'stop' });
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await child.exited;
    clearTimeout(timer);
    this.state = 'stopped';
  }

  info(): SafekeeperInfo {
    const { status } = this;
    const running = this.state === 'running' && this.process;
    return {
      name: this.name,
      state: this.state,
      pid: running ? this.process!.pid : null,
      connected: running ? status.connected : false,
      timeline: status.timeline,
      flush_lsn: status.flushLsn,
      primary_lsn: status.primaryLsn,
      lag_bytes: status.lagBytes,
      last_segment: status.lastSegment,
      error: running ? status.error : this.state === 'restarting' ? 'exited; restarting' : null,
      restarts: this.restarts,
      ...(running ? usage(this.process!.pid) : { rss_bytes: null, cpu_seconds: null }),
      dir: this.dir,
    };
  }

  private send(message: ToSafekeeper): void {
    this.process?.send?.(message);
  }

  private async launch(): Promise<void> {
    const { deps } = this;
    fs.mkdirSync(this.dir, { recursive: true });
    const child = await deps.launcher.launch({
      name: `safekeeper ${this.name}`,
      command: process.execPath,
      args: [deps.cli, '__safekeeper', '--repo', deps.repo.dir, '--name', this.name],
      cwd: this.dir,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
      logFile: deps.repo.logFile(`safekeeper-${this.name}`),
      ipc: true,
    });
    this.process = child;
    this.state = 'running';
    const started = Date.now();
    child.onMessage?.((message) => this.onMessage(message as FromSafekeeper));
    this.send({ type: 'config', config: { name: this.name, branch: deps.branch, dir: this.dir, slot: this.slot, primary: this.primary! } });
    void child.exited.then((exit) => {
      this.process = undefined;
      this.status = { ...this.status, connected: false };
      if (!this.wanted) return;
      // A safekeeper holds no state a restart can lose: bring it back, more slowly if it keeps dying.
      if (Date.now() - started > 60_000) this.restarts = 0;
      const delay = Math.min(RESTART_MIN_MS * 2 ** this.restarts, RESTART_MAX_MS);
      this.restarts += 1;
      this.state = 'restarting';
      deps.log.warn('safekeeper %s exited (%s); restarting in %d ms', this.name, exit.signal ?? `code ${exit.code}`, delay);
      this.restartTimer = setTimeout(
        () => void this.launch().catch((e) => deps.log.error('restart of %s failed: %s', this.name, e.message)),
        delay,
      );
    });
  }

  private onMessage(message: FromSafekeeper): void {
    const { deps } = this;
    if (message.type === 'status') this.status = message.status;
    else if (message.type === 'log') deps.log[message.level]('%s', message.message);
    else if (message.type === 'segment') {
      const { segment } = message;
      void deps.hooks.walSegmentCompleted
        .promise({ branch: segment.branch, timeline: segment.timeline, segment: segment.name, path: segment.path, safekeeper: this.name })
        .catch((error) => deps.log.error('%s', error.message));
    }
  }
}

// RSS and CPU time from /proc, for `neon status` (and the WAL benchmark).
function usage(pid: number): { rss_bytes: number | null; cpu_seconds: number | null } {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1]) * 1024;
    const stat = fs
      .readFileSync(`/proc/${pid}/stat`, 'utf8')
      .replace(/^.*\) /, '')
      .split(' ');
    return { rss_bytes: rss || null, cpu_seconds: (Number(stat[11]) + Number(stat[12])) / 100 };
  } catch {
    return { rss_bytes: null, cpu_seconds: null };
  }
}

/**
 * The safekeepers of the primary: N processes, and the `synchronous_standby_names` that makes a commit wait for
 * a majority of them (`ANY 2 (sk1, sk2, sk3)`).
 */
export class Safekeepers {
  readonly nodes: SafekeeperNode[];

  constructor(
    count: number,
    private readonly deps: SafekeeperDeps,
  ) {
    this.nodes = Array.from({ length: count }, (_, i) => new SafekeeperNode(`sk${i + 1}`, deps));
  }

  /** How many must have flushed a commit before it returns: a majority. */
  get quorum(): number {
    return Math.floor(this.nodes.length / 2) + 1;
  }

  /** The primary's synchronous_standby_names, or undefined when there are no safekeepers. */
  standbyNames(): string | undefined {
    if (this.nodes.length === 0) return undefined;
    return `ANY ${this.quorum} (${this.nodes.map((n) => n.name).join(', ')})`;
  }

  get(name: string): SafekeeperNode {
    const node = this.nodes.find((n) => n.name === name);
    if (!node) throw new NeonError('safekeeper_not_found', `no safekeeper named "${name}" (see \`neon safekeeper list\`)`, { status: 404 });
    return node;
  }

  async start(primary: PrimaryInfo): Promise<void> {
    await Promise.all(this.nodes.map((node) => node.start(primary)));
  }

  setPrimary(primary: PrimaryInfo): void {
    for (const node of this.nodes) node.setPrimary(primary);
  }

  /** The branch whose WAL they keep. */
  get branch(): string {
    return this.deps.branch;
  }

  /** The branch whose WAL they keep (after a checkout moved the main compute); takes effect at their next start. */
  setBranch(branch: string): void {
    this.deps.branch = branch;
  }

  /**
   * Drop the slots of safekeepers that are no longer configured (3 → 1): a slot nobody reads keeps WAL on the
   * primary forever.
   */
  async dropStaleSlots(primary: PrimaryInfo): Promise<string[]> {
    const connection = await WireConnection.connect({ ...primary, database: 'postgres' });
    try {
      const keep = this.nodes.map((node) => `'${node.slot}'`).join(', ') || "''";
      const result = await connection.query(
        `select slot_name, pg_drop_replication_slot(slot_name) from pg_replication_slots ` +
          `where slot_name like 'neon\\_sk%' and not active and slot_name not in (${keep})`,
      );
      return textRows(result).map((row) => row.slot_name!);
    } finally {
      connection.close();
    }
  }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((node) => node.stop()));
  }

  info(): SafekeeperInfo[] {
    return this.nodes.map((node) => node.info());
  }
}
