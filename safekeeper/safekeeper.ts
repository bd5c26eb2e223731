import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PgError, textRows, WireConnection } from '../replication/connection.js';
import { formatLsn, historyFileName, type Lsn, parseLsn, safekeeperWalDir, segmentOf, segmentStart } from '../core/wal.js';
import {
  ensurePhysicalSlot,
  identifySystem,
  parseStreamMessage,
  standbyStatus,
  timelineHistory,
  walSegmentSize,
} from '../replication/stream.js';
import { WalWriter, type CompletedSegment } from './wal-writer.js';

/**
 * The primary a safekeeper streams from: neon's internal role over the compute's Unix socket (host is the socket
 * folder), which needs no password; `password` only for a primary without that role.
 */
export interface PrimaryInfo {
  host: string;
  port: number;
  user: string;
  password?: string;
}

/** What a safekeeper is told by the daemon. */
export interface SafekeeperConfig {
  /** Its name, also its application_name in synchronous_standby_names (`sk1`). */
  name: string;
  /** Branch whose WAL it keeps (`main`). */
  branch: string;
  /** This safekeeper's folder; segments go to `wal/<branch>/` in it. */
  dir: string;
  /** Physical replication slot on the primary (`neon_sk1`). */
  slot: string;
  primary: PrimaryInfo;
}

/** What a safekeeper reports. */
export interface SafekeeperStatus {
  connected: boolean;
  timeline: number | null;
  /** Position durable on this safekeeper's disk, as reported to the primary. */
  flushLsn: string | null;
  /** The primary's flush position, as last heard. */
  primaryLsn: string | null;
  lagBytes: number | null;
  lastSegment: string | null;
  error: string | null;
}

/** How often a status update goes to the primary when nothing else prompts one (well inside wal_sender_timeout). */
const STATUS_INTERVAL_MS = 1000;
/** At most this often a status goes to the daemon on account of a flush. */
const STATUS_EVENT_MIN_MS = 100;
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 5000;
/** Bytes read from the socket at a time, into one reused buffer: a busy primary's backlog in a read or two. */
const READ_BUFFER = 256 * 1024;

/**
 * A safekeeper: receives WAL from the primary over the streaming replication protocol, writes it durably, and
 * answers with its flush position so that a synchronous commit returns only once the WAL is on its disk. It
 * survives restarts on both sides: it reconnects with backoff and resumes at the start of its newest unfinished
 * segment, and follows timeline switches (promotion) by fetching the new timeline's history.
 */
export class Safekeeper {
  private config: SafekeeperConfig;
  private writer?: WalWriter;
  private connection?: WireConnection;
  private stopping = false;
  private flushScheduled = false;
  private primaryLsn: Lsn = 0n;
  private lastSegment: string | null = null;
  private error: string | null = null;
  private timeline: number | null = null;
  private wake?: () => void;
  private reportedAt = 0;
  private backoff = BACKOFF_MIN_MS;
  /** Bound once: the read path allocates no closure per message or batch. */
  private readonly onData = (payload: Buffer) => this.receive(payload);
  private readonly onBatchEnd = () => this.endOfBatch();
  private readonly flushNow = () => this.flush();

  constructor(
    config: SafekeeperConfig,
    private readonly events: {
      status(status: SafekeeperStatus): void;
      segment(segment: CompletedSegment & { branch: string }): void;
      log(level: 'info' | 'warn' | 'error', message: string): void;
    },
  ) {
    this.config = config;
  }

  /** Folder of the branch's segments. */
  get walDir(): string {
    return safekeeperWalDir(this.config.dir, this.config.branch);
  }

  /** The current status. */
  status(): SafekeeperStatus {
    const flushed = this.writer?.flushed;
    return {
      connected: !!this.connection && !this.connection.isClosed,
      timeline: this.timeline,
      flushLsn: flushed ? formatLsn(flushed) : null,
      primaryLsn: this.primaryLsn ? formatLsn(this.primaryLsn) : null,
      lagBytes: flushed && this.primaryLsn ? Math.max(0, Number(this.primaryLsn - flushed)) : null,
      lastSegment: this.lastSegment,
      error: this.error,
    };
  }

  /**
   * Point it at another primary address (the compute moved to another port); the next connection uses it. The
   * same address again means the primary has just (re)started: a stream waiting out its backoff connects now,
   * since commits wait for it.
   */
  setPrimary(primary: PrimaryInfo): void {
    if (JSON.stringify(primary) === JSON.stringify(this.config.primary)) {
      if (!this.connection || this.connection.isClosed) {
        this.backoff = BACKOFF_MIN_MS;
        this.wake?.();
      }
      return;
    }
    this.config = { ...this.config, primary };
    this.connection?.close();
  }

  /** Stream until {@link stop}: one session after another, with backoff between failures. */
  async run(): Promise<void> {
    const timer = setInterval(() => this.tick(), STATUS_INTERVAL_MS);
    try {
      while (!this.stopping) {
        const started = Date.now();
        try {
          await this.session();
        } catch (error) {
          if (this.stopping) break;
          this.error = describe(error);
          this.events.log('warn', `${this.config.name}: ${this.error}; retrying in ${this.backoff} ms`);
        } finally {
          this.connection?.close();
          this.connection = undefined;
          this.events.status(this.status());
        }
        if (this.stopping) break;
        if (Date.now() - started > 10_000) this.backoff = BACKOFF_MIN_MS; // a session that streamed a while was healthy
        const pause = this.backoff;
        this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          setTimeout(resolve, pause);
        });
      }
    } finally {
      clearInterval(timer);
      this.writer?.close();
    }
  }

  /** Stop streaming: flush what was received, end the stream politely, and let {@link run} return. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.flush();
    this.connection?.endCopy();
    await sleep(20);
    this.connection?.close();
    this.wake?.();
  }

  private async session(): Promise<void> {
    const { primary, name, slot } = this.config;
    const walDir = this.walDir;
    const connection = await WireConnection.connect({ ...primary, replication: 'true', applicationName: name, readBuffer: READ_BUFFER });
    this.connection = connection;
    const system = await identifySystem(connection);
    const segmentSize = await walSegmentSize(connection);
    this.checkSystem(system.systemId, segmentSize);
    if (await ensurePhysicalSlot(connection, slot)) this.events.log('info', `${name}: created replication slot ${slot}`);

    // Always start at a segment boundary: either where our newest unfinished segment starts (its bytes are
    // rewritten identically), or at the primary's current segment on first contact.
    const resume = WalWriter.resumePoint(walDir, segmentSize);
    let timeline = resume?.timeline ?? system.timeline;
    let lsn = resume?.lsn ?? segmentStart(segmentOf(system.xlogpos, segmentSize), segmentSize);
    this.writer ??= new WalWriter(walDir, segmentSize, (segment) => {
      this.lastSegment = segment.name;
      this.events.segment({ ...segment, branch: this.config.branch });
    });
    this.error = null;

    for (;;) {
      if (timeline > 1) await this.saveHistory(connection, timeline);
      this.timeline = timeline;
      this.writer.open(timeline, lsn);
      this.events.log('info', `${name}: streaming from ${formatLsn(lsn)} on timeline ${timeline}`);
      this.events.status(this.status());
      const command = `START_REPLICATION SLOT ${slot} PHYSICAL ${formatLsn(lsn)} TIMELINE ${timeline}`;
      const end = await connection.copyBoth(command, this.onData, this.onBatchEnd);
      this.flush();
      if (this.stopping) return;
      const [next] = textRows(end);
      if (!next?.next_tli) throw new Error('the primary ended replication');
      // A timeline switch (the primary was promoted): continue on the next timeline from the segment holding
      // the switch point; the server sends that segment's earlier bytes from the old timeline.
      this.writer.close();
      timeline = Number(next.next_tli);
      lsn = segmentStart(segmentOf(parseLsn(next.next_tli_startpos!), segmentSize), segmentSize);
      this.events.log('info', `${name}: timeline switch to ${timeline} at ${next.next_tli_startpos}`);
    }
  }

  private receive(payload: Buffer): void {
    const message = parseStreamMessage(payload);
    if (!message) return;
    if (message.walEnd > this.primaryLsn) this.primaryLsn = message.walEnd;
    if (message.kind === 'wal') this.writer!.write(message.start, message.data);
    else if (message.replyRequested) this.sendStatus();
  }

  // The messages of one read are queued in the writer as views of the read buffer: write them out (one pwritev)
  // before it is reused. The fdatasync waits until every read that is ready has been handled (setImmediate runs
  // after the poll phase): one fdatasync and one reply cover them all, and what arrives while it runs waits in
  // the socket for the next one (group commit).
  private endOfBatch(): void {
    const writer = this.writer!;
    writer.writeOut();
    if (!this.flushScheduled && writer.written > writer.flushed) {
      this.flushScheduled = true;
      setImmediate(this.flushNow);
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    if (!this.writer) return;
    const before = this.writer.flushed;
    this.writer.flush();
    if (this.writer.flushed === before) return;
    this.sendStatus();
    // The daemon serves the newest unfinished segment by this position: keep it fresh while WAL flows.
    if (Date.now() - this.reportedAt >= STATUS_EVENT_MIN_MS) this.report();
  }

  private report(): void {
    this.reportedAt = Date.now();
    this.events.status(this.status());
  }

  // apply = flush: a safekeeper never replays WAL, so remote_apply is treated like remote_flush rather than
  // left to wait forever.
  private sendStatus(): void {
    if (!this.writer || !this.connection) return;
    const { written, flushed } = this.writer;
    this.connection.sendCopyData(standbyStatus(written, flushed, flushed));
  }

  private tick(): void {
    this.sendStatus();
    this.report();
  }

  private async saveHistory(connection: WireConnection, timeline: number): Promise<void> {
    const file = path.join(this.walDir, historyFileName(timeline));
    if (fs.existsSync(file)) return;
    const { content } = await timelineHistory(connection, timeline);
    fs.mkdirSync(this.walDir, { recursive: true });
    fs.writeFileSync(`${file}.tmp`, content);
    const fd = fs.openSync(`${file}.tmp`, 'r');
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(`${file}.tmp`, file);
  }

  /**
   * WAL of another cluster must never be mixed into a branch (a repository created again over old safekeeper
   * folders). The check is per branch: a branch forked from a snapshot pulled from another repository's storage
   * is another cluster's history, and its primary's WAL goes to its own folder. `system.json` keeps the first
   * system and the segment size (which other readers take from it) and, per branch, the system its WAL is of. A
   * branch recorded before this map existed holds WAL of the first system.
   */
  private checkSystem(systemId: string, segmentSize: number): void {
    const file = path.join(this.config.dir, 'system.json');
    const known = fs.existsSync(file)
      ? (JSON.parse(fs.readFileSync(file, 'utf8')) as { systemId: string; segmentSize: number; branches?: Record<string, string> })
      : undefined;
    const { branch } = this.config;
    if (known && known.segmentSize !== segmentSize) throw new Error(`wal_segment_size changed from ${known.segmentSize} to ${segmentSize}`);
    const holds = known?.branches?.[branch] ?? (known && WalWriter.resumePoint(this.walDir, segmentSize) ? known.systemId : undefined);
    if (holds !== undefined && holds !== systemId) {
      throw new Error(`the primary is system ${systemId}, but this safekeeper holds WAL of system ${holds} for branch ${branch}; refusing to mix them`);
    }
    if (known?.branches?.[branch] === systemId) return;
    const next = { systemId: known?.systemId ?? systemId, segmentSize, branches: { ...known?.branches, [branch]: systemId } };
    fs.mkdirSync(this.config.dir, { recursive: true });
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(next) + '\n');
    const fd = fs.openSync(`${file}.tmp`, 'r');
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(`${file}.tmp`, file);
  }
}

function describe(error: unknown): string {
  if (error instanceof PgError) {
    if (error.code === '28P01' || error.code === '28000')
      return `the primary refused the safekeeper's login (${error.message}): restart the compute (neon pg stop/start) so that neon restores its internal role`;
    if (error.code === '58P01') return `${error.message}: the primary no longer has WAL this safekeeper needs (was its slot dropped?)`;
    return `${error.message} (SQLSTATE ${error.code})`;
  }
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ECONNREFUSED') return 'the primary is not reachable (connection refused)';
  // Its Unix socket is gone while it is down.
  if (code === 'ENOENT') return 'the primary is not reachable (no socket: it is not running)';
  return (error as Error).message;
}
