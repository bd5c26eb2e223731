import fs from 'node:fs';
import path from 'node:path';
import { NeonError } from '../core/errors.js';
import { textRows, WireConnection } from '../replication/connection.js';
import type { NeonHooks } from '../core/hooks.js';
import type { LaunchedProcess, Launcher } from '../core/launcher.js';
import type { Logger } from '../core/log.js';
import type { Repository } from './repository.js';
import type { FromSafekeeper, ToSafekeeper } from '../safekeeper/main.js';
import type { PrimaryInfo, SafekeeperStatus } from '../safekeeper/safekeeper.js';
import { parseLsn } from '../core/wal.js';

/** One WAL stream of a safekeeper: a branch and how far its WAL is durable here. */
export interface StreamInfo {
  branch: string;
  connected: boolean;
  timeline: number | null;
  flush_lsn: string | null;
  primary_lsn: string | null;
  lag_bytes: number | null;
  last_segment: string | null;
  error: string | null;
}

/**
 * What the REST API says about a safekeeper: its process, every stream it keeps, and (at the top level, for the
 * common case) the stream of the main compute's branch.
 */
export interface SafekeeperInfo extends Omit<StreamInfo, 'branch'> {
  name: string;
  state: 'stopped' | 'running' | 'restarting';
  pid: number | null;
  branch: string;
  streams: StreamInfo[];
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
  /** The main compute's branch, whose stream `neon status` shows first. */
  mainBranch: () => string;
}

const RESTART_MIN_MS = 1000;
const RESTART_MAX_MS = 30_000;

const NO_STATUS: SafekeeperStatus = {
  connected: false,
  timeline: null,
  flushLsn: null,
  primaryLsn: null,
  lagBytes: null,
  lastSegment: null,
  error: null,
};

/**
 * One safekeeper process, keeping a WAL stream for every branch that has a primary; restarted with backoff
 * whenever it dies unasked (it holds no state a restart can lose).
 */
export class SafekeeperNode {
  state: SafekeeperInfo['state'] = 'stopped';
  restarts = 0;
  private process?: LaunchedProcess;
  private readonly streams = new Map<string, { primary: PrimaryInfo; status: SafekeeperStatus }>();
  private wanted = false;
  private restartTimer?: NodeJS.Timeout;

  constructor(
    readonly name: string,
    private readonly deps: SafekeeperDeps,
  ) {}

  get dir(): string {
    return path.join(this.deps.repo.dir, 'safekeepers', this.name);
  }

  /** Its physical replication slot on each primary. */
  get slot(): string {
    return `neon_${this.name}`;
  }

  /** The last status of a branch's stream (empty when it keeps none). */
  statusOf(branch: string): SafekeeperStatus {
    return this.streams.get(branch)?.status ?? NO_STATUS;
  }

  /** Branches it keeps a stream of. */
  branches(): string[] {
    return [...this.streams.keys()];
  }

  async start(): Promise<void> {
    this.wanted = true;
    if (this.process) return;
    clearTimeout(this.restartTimer);
    await this.launch();
  }

  /** Keep the WAL of `branch`, streamed from `primary` (or follow that primary to a new address). */
  attach(branch: string, primary: PrimaryInfo): void {
    const known = this.streams.get(branch);
    this.streams.set(branch, { primary, status: known?.status ?? NO_STATUS });
    this.send({ type: 'attach', stream: { branch, slot: this.slot, primary } });
  }

  /** Stop keeping a branch's WAL (its primary is gone, or moved to another branch). What it kept stays. */
  detach(branch: string): void {
    if (!this.streams.delete(branch)) return;
    this.send({ type: 'detach', branch });
  }

  async stop(): Promise<void> {
    this.wanted = false;
    clearTimeout(this.restartTimer);
    const child = this.process;
    if (!child) {
      this.state = 'stopped';
      return;
    }
    // It flushes what it received and ends its streams; SIGKILL only if it does not go.
    this.send({ type: 'stop' });
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await child.exited;
    clearTimeout(timer);
    this.state = 'stopped';
  }

  info(): SafekeeperInfo {
    const running = this.state === 'running' && !!this.process;
    const streams: StreamInfo[] = [...this.streams].map(([branch, { status }]) => ({
      branch,
      connected: running && status.connected,
      timeline: status.timeline,
      flush_lsn: status.flushLsn,
      primary_lsn: status.primaryLsn,
      lag_bytes: status.lagBytes,
      last_segment: status.lastSegment,
      error: running ? status.error : this.state === 'restarting' ? 'exited; restarting' : null,
    }));
    const mainBranch = this.deps.mainBranch();
    const main = streams.find((s) => s.branch === mainBranch) ?? { ...streamOf(NO_STATUS, mainBranch) };
    return {
      name: this.name,
      state: this.state,
      pid: running ? this.process!.pid : null,
      ...main,
      streams,
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
    this.send({ type: 'config', name: this.name, dir: this.dir });
    for (const [branch, { primary }] of this.streams) this.send({ type: 'attach', stream: { branch, slot: this.slot, primary } });
    void child.exited.then((exit) => {
      this.process = undefined;
      for (const stream of this.streams.values()) stream.status = { ...stream.status, connected: false };
      if (!this.wanted) return;
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
    if (message.type === 'status') {
      const stream = this.streams.get(message.branch);
      if (stream) stream.status = message.status;
    } else if (message.type === 'log') deps.log[message.level]('%s: %s', this.name, message.message);
    else if (message.type === 'segment') {
      const { segment } = message;
      void deps.hooks.walSegmentCompleted
        .promise({ branch: segment.branch, timeline: segment.timeline, segment: segment.name, path: segment.path, safekeeper: this.name })
        .catch((error) => deps.log.error('%s', error.message));
    }
  }
}

function streamOf(status: SafekeeperStatus, branch: string): StreamInfo {
  return {
    branch,
    connected: false,
    timeline: status.timeline,
    flush_lsn: status.flushLsn,
    primary_lsn: status.primaryLsn,
    lag_bytes: status.lagBytes,
    last_segment: status.lastSegment,
    error: status.error,
  };
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
 * The safekeepers: N processes, each keeping the WAL of every branch that has a primary, and the
 * `synchronous_standby_names` that makes each primary's commits wait for a majority of them (`ANY 2 (sk1, sk2, sk3)`).
 */
export class Safekeepers {
  readonly nodes: SafekeeperNode[];

  constructor(count: number, deps: SafekeeperDeps) {
    this.nodes = Array.from({ length: count }, (_, i) => new SafekeeperNode(`sk${i + 1}`, deps));
  }

  /** How many must have flushed a commit before it returns: a majority. */
  get quorum(): number {
    return Math.floor(this.nodes.length / 2) + 1;
  }

  /** A primary's synchronous_standby_names, or undefined when there are no safekeepers. */
  standbyNames(): string | undefined {
    if (this.nodes.length === 0) return undefined;
    return `ANY ${this.quorum} (${this.nodes.map((n) => n.name).join(', ')})`;
  }

  get(name: string): SafekeeperNode {
    const node = this.nodes.find((n) => n.name === name);
    if (!node) throw new NeonError('safekeeper_not_found', `no safekeeper named "${name}" (see \`neon safekeeper list\`)`, { status: 404 });
    return node;
  }

  /** Start the processes (streams are attached as primaries come and go). */
  async start(): Promise<void> {
    await Promise.all(this.nodes.map((node) => node.start()));
  }

  /** Keep the WAL of `branch` from its primary (call again when the primary moves to another port). */
  attach(branch: string, primary: PrimaryInfo): void {
    for (const node of this.nodes) node.attach(branch, primary);
  }

  detach(branch: string): void {
    for (const node of this.nodes) node.detach(branch);
  }

  /** Branches whose WAL they keep now. */
  branches(): string[] {
    return this.nodes[0]?.branches() ?? [];
  }

  /** The furthest position any safekeeper holds of a branch, or undefined. */
  flushedOf(branch: string): bigint | undefined {
    const flushed = this.nodes.map((n) => n.statusOf(branch).flushLsn).filter((l): l is string => !!l);
    return flushed.length ? flushed.map(parseLsn).reduce((a, b) => (a > b ? a : b)) : undefined;
  }

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

