import { messageOf } from '../core/errors.js';
import type { DaemonContext } from './context.js';
import { isPrimary } from './repository.js';
import { parseLsn } from '../core/wal.js';

/** Something `neon status` must show as not healthy. */
export interface Problem {
  /** `compute main`, `safekeeper sk1`. */
  component: string;
  message: string;
  /** Since when (ISO time), when known. */
  since: string | null;
}

/** How often running primaries are asked about their synchronous stream. */
const CHECK_INTERVAL_MS = 2000;
/** A stream that has not served commits for this long is a problem (a safekeeper restart takes a moment). */
const STALL_MS = 5000;

interface StreamCheck {
  waiting: number;
  streaming: number;
  /** The position a quorum of safekeepers has flushed, at the last check. */
  flushed: bigint;
  /** Since when commits have been waiting with no progress (or too few safekeepers streamed); 0: healthy. */
  since: number;
}

/**
 * Watches what supervision alone cannot see: a primary whose commits wait for safekeepers that do not stream
 * (synchronous_standby_names asks for a quorum of neon's safekeepers, pg_stat_replication shows fewer streaming,
 * or sessions wait in SyncRep). Lists those and every component that is down as problems, and repairs what
 * `neon start` on a running repository should bring back.
 */
export class Health {
  private timer?: NodeJS.Timeout;
  private checking = false;
  private readonly stalls = new Map<string, StreamCheck>();

  constructor(private readonly daemon: DaemonContext) {}

  start(): void {
    this.timer ??= setInterval(() => void this.check(), CHECK_INTERVAL_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** What is wrong now; empty when everything is healthy. */
  problems(): Problem[] {
    const problems: Problem[] = [];
    for (const compute of this.daemon.computes.values()) {
      const info = compute.info();
      const component = `compute ${info.name}`;
      if (info.state === 'restarting') {
        problems.push({
          component,
          message: `down after ${describeExit(info.last_exit)}; restarting (automatic restarts: ${info.restarts})`,
          since: info.last_exit?.at ?? null,
        });
      } else if (info.state === 'failed') {
        problems.push({ component, message: `failed to start; see ${info.log_file}, then neon start`, since: info.last_exit?.at ?? null });
      }
    }
    for (const node of this.daemon.safekeepers.nodes) {
      if (node.state !== 'running') problems.push({ component: `safekeeper ${node.name}`, message: node.state, since: null });
    }
    const quorum = this.daemon.safekeepers.quorum;
    for (const [name, stall] of this.stalls) {
      if (!stall.since || Date.now() - stall.since < STALL_MS || !this.daemon.computes.has(name)) continue;
      const seconds = Math.round((Date.now() - stall.since) / 1000);
      const streams = `${stall.streaming} of ${this.daemon.safekeepers.nodes.length} safekeeper(s) streaming, ${quorum} needed`;
      problems.push({
        component: `compute ${name}`,
        message: stall.waiting
          ? `${stall.waiting} commit(s) waiting for the safekeepers for ${seconds}s (${streams})`
          : `synchronous stream stalled for ${seconds}s: ${streams}; commits will wait`,
        since: new Date(stall.since).toISOString(),
      });
    }
    return problems;
  }

  /**
   * Bring back what should run and does not: computes that are failed or waiting for their next restart (not
   * those stopped by request), and safekeepers that are down. Says what it did.
   */
  async repair(): Promise<string[]> {
    const done: string[] = [];
    const computes = [...this.daemon.computes.values()].filter(
      (c) => c.record.running && !c.record.retired && ['failed', 'restarting', 'stopped'].includes(c.state),
    );
    await Promise.all(
      computes.map(async (compute) => {
        const was = compute.state;
        try {
          await compute.start();
          done.push(`compute ${compute.record.name}: started (was ${was})`);
        } catch (error) {
          done.push(`compute ${compute.record.name}: still ${compute.state}: ${messageOf(error)}`);
        }
      }),
    );
    for (const node of this.daemon.safekeepers.nodes) {
      if (node.state === 'running') continue;
      const was = node.state;
      await node.start();
      done.push(`safekeeper ${node.name}: started (was ${was})`);
    }
    return done;
  }

  // One round: each running primary that waits for safekeepers is asked how its stream is doing.
  private async check(): Promise<void> {
    if (this.checking) return;
    this.checking = true;
    try {
      const names = this.daemon.safekeepers.nodes.map((n) => `'${n.name}'`);
      for (const compute of this.daemon.computes.values()) {
        const name = compute.record.name;
        if (!names.length || compute.state !== 'running' || !isPrimary(compute.record) || compute.record.retired) {
          this.stalls.delete(name);
          continue;
        }
        const [row] = await compute
          .query(
            `select (select count(*) from pg_stat_activity where wait_event = 'SyncRep')::text as waiting, ` +
              `(select string_agg(flush_lsn::text, ',') from pg_stat_replication ` +
              `where state = 'streaming' and application_name in (${names.join(', ')})) as flushed`,
          )
          .catch(() => [undefined]);
        if (row) this.stalls.set(name, this.judge(this.stalls.get(name), Number(row.waiting), row.flushed));
      }
    } finally {
      this.checking = false;
    }
  }

  // Commits waiting is normal under load; waiting while the quorum's flush position stands still is a stall.
  private judge(last: StreamCheck | undefined, waiting: number, flushedList: string | null): StreamCheck {
    const quorum = this.daemon.safekeepers.quorum;
    const lsns = (flushedList ?? '').split(',').filter(Boolean).map(parseLsn);
    lsns.sort((a, b) => (a > b ? -1 : a < b ? 1 : 0));
    const flushed = lsns[quorum - 1] ?? 0n;
    const stalled = lsns.length < quorum || (waiting > 0 && last !== undefined && flushed <= last.flushed);
    return { waiting, streaming: lsns.length, flushed, since: stalled ? last?.since || Date.now() : 0 };
  }
}

function describeExit(exit: { code: number | null; signal: string | null } | undefined): string {
  if (!exit) return 'an exit';
  return exit.signal ? `signal ${exit.signal}` : exit.code === null ? 'its process ended' : `exit code ${exit.code}`;
}
