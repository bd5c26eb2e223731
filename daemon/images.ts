import fs from 'node:fs';
import type { PageserverConfig } from '../core/config.js';
import type { DaemonContext } from './context.js';
import { NeonError, messageOf } from '../core/errors.js';
import { isPrimary } from './repository.js';
import { formatLsn } from '../core/wal.js';
import type { ImageManifest } from '../pageserver/manifest.js';
import { commitAfterCheckpoint, takeDirectImage, takeOnlineImage } from '../pageserver/take-image.js';
import { textRows, WireConnection } from '../replication/connection.js';
import { parseLsn, segmentOf, segmentStart } from '../core/wal.js';
import type { Compute } from './compute.js';
import { trace } from '../lib/trace.js';

const CHECK_EVERY_MS = 15_000;
/** Incrementals in a row before a full image again: bounds what a stale free space map or a missed page could cost. */
const MAX_CHAIN = 8;

/** What `GET /status` says about base images. */
export interface ImageStatus {
  last_image: { branch: string; end_lsn: string; created_at: string } | null;
  taking: boolean;
  error: string | null;
}

/**
 * Base images of the main compute's branch: taken in the background once enough WAL or time has passed since the
 * last one (so that reaching any point replays little WAL), and on demand. One at a time.
 */
export class ImageService {
  private timer?: NodeJS.Timeout;
  private queue: Promise<unknown> = Promise.resolve();
  private taking = false;
  private error: string | null = null;
  private readonly afterBytes: bigint;
  private readonly intervalMs: number;

  constructor(
    private readonly daemon: DaemonContext,
    config: PageserverConfig = {},
  ) {
    this.afterBytes = BigInt(Math.round((config.imageAfterMb ?? 64) * 1024 * 1024));
    this.intervalMs = (config.imageIntervalMinutes ?? 10) * 60_000;
  }

  start(): void {
    this.timer = setInterval(() => void this.check(), CHECK_EVERY_MS);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.queue.catch(() => undefined);
  }

  status(): ImageStatus {
    const main = this.daemon.computes.get('main');
    const last = main ? this.daemon.pageserver.images(main.record.branch).at(-1) : undefined;
    return {
      last_image: last ? { branch: last.branch, end_lsn: formatLsn(last.endLsn), created_at: last.createdAt } : null,
      taking: this.taking,
      error: this.error,
    };
  }

  /** Take an image of a primary compute's branch now (default: the main compute), after any image being taken. */
  take(computeName = 'main'): Promise<ImageManifest> {
    const run = this.queue.then(() => this.takeNow(computeName));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async takeNow(computeName: string): Promise<ImageManifest> {
    const { daemon } = this;
    const compute = daemon.compute(computeName);
    if (compute.state !== 'running' || !isPrimary(compute.record)) {
      throw new NeonError(
        'not_running',
        `compute ${computeName} is not a running primary: a base image is taken from one (neon pg start -n ${computeName})`,
        {
          status: 409,
        },
      );
    }
    this.taking = true;
    trace('image', `taking an image of ${compute.record.branch}`);
    try {
      const stored =
        (await this.takeIncremental(compute)) ??
        (await daemon.pageserver.takeImage((mirror) => {
          const source = {
            store: daemon.pageserver.store,
            branch: compute.record.branch,
            pgVersion: daemon.binaries.version,
            primary: daemon.primaryOf(compute.record),
            mirror,
          };
          // Its files are read where they are when this process may read them (pg_backup_start/stop); else BASE_BACKUP.
          return readable(compute.dataDir) ? takeDirectImage({ ...source, dataDir: compute.dataDir }) : takeOnlineImage(source);
        }));
      this.error = null;
      trace('image', `image ${stored.kind} stored`);
      daemon.sync?.schedule();
      return stored;
    } catch (error) {
      this.error = messageOf(error);
      throw error;
    } finally {
      this.taking = false;
    }
  }

  /**
   * An incremental image after the branch's last one, when it can be taken: undefined (with the reason logged)
   * when only a full image will do. The primary makes a checkpoint first: the incremental is consistent there.
   */
  private async takeIncremental(compute: Compute): Promise<ImageManifest | undefined> {
    const { daemon } = this;
    const { branch } = compute.record;
    const last = daemon.pageserver.images(branch).at(-1);
    if (!last) return undefined;
    try {
      const previous = await daemon.pageserver.readImage(last.key);
      trace('image', 'incremental: previous manifest read');
      if ((previous.chain ?? 0) >= MAX_CHAIN) {
        daemon.log.info('incremental image of %s not taken (%d incrementals in a row): taking a full one', branch, MAX_CHAIN);
        return undefined;
      }
      const t0 = Date.now();
      const connection = await WireConnection.connect({ ...daemon.primaryOf(compute.record), database: 'postgres' });
      let point: Record<string, string | null>;
      let visibleFrom: bigint;
      try {
        // More WAL than half the database: most pages changed, and a full image reads them faster than a replay.
        // Known before the checkpoint, which a full image would make again.
        const [now] = textRows(
          await connection.query(
            `select pg_current_wal_insert_lsn() as lsn, (select setting from pg_settings where name = 'wal_segment_size') as segment_size`,
          ),
        );
        const walBytes = parseLsn(now.lsn!) - walStartAfter(previous, parseLsn(now.lsn!), Number(now.segment_size));
        if (walBytes > BigInt(previous.rawBytes) / 2n) {
          daemon.log.info(
            'incremental image of %s not taken (%s bytes of WAL since the last image, database %d bytes): taking a full one',
            branch,
            String(walBytes),
            previous.rawBytes,
          );
          return undefined;
        }
        trace('image', 'incremental: checkpoint on the primary');
        await connection.query('checkpoint');
        [point] = textRows(await connection.query('select checkpoint_lsn, pg_current_wal_insert_lsn() as up_to from pg_control_checkpoint()'));
        // Its commit waits for the safekeepers: then they hold the WAL up to up_to, checkpoint record included.
        visibleFrom = await commitAfterCheckpoint(connection, true);
      } finally {
        connection.close();
      }
      daemon.log.info('incremental image of %s: checkpoint in %d ms', branch, Date.now() - t0);
      const stored = await daemon.pageserver.takeIncremental({
        previous,
        checkpoint: parseLsn(point.checkpoint_lsn!),
        upTo: parseLsn(point.up_to!),
        visibleFrom,
        binDir: daemon.binaries.binDir,
      });
      trace('image', 'incremental: stored and committed');
      return stored;
    } catch (error) {
      daemon.log.info('incremental image of %s not taken (%s): taking a full one', branch, messageOf(error));
      return undefined;
    }
  }

  // The policy, for every running primary: enough WAL since its branch's last image, or enough time with some WAL.
  private async check(): Promise<void> {
    if (this.taking) return;
    for (const compute of this.daemon.computes.values()) {
      if (compute.state !== 'running' || !isPrimary(compute.record)) continue;
      const { branch } = compute.record;
      const tip = this.daemon.safekeepers.flushedOf(branch);
      if (tip === undefined) continue;
      const { since, age } = this.sinceLastImage(branch, tip);
      if (since >= this.afterBytes || (since > 0n && age >= this.intervalMs)) {
        await this.take(compute.record.name).catch((error) =>
          this.daemon.log.warn('background base image of %s failed: %s', branch, messageOf(error)),
        );
      }
    }
  }

  /**
   * WAL and time since the branch's last image. A new branch has none of its own, but its parent's image before the
   * fork point serves it: count from its fork point and its creation, not from LSN 0 and the beginning of time
   * (which took a full image of every new branch within 15 s, a 1 GB copy for each compute made).
   */
  private sinceLastImage(branch: string, tip: bigint): { since: bigint; age: number } {
    const last = this.daemon.pageserver.images(branch).at(-1);
    if (last) return { since: tip - last.endLsn, age: Date.now() - new Date(last.createdAt).getTime() };
    const { forkLsn, createdAt } = this.daemon.pageserver.history.branch(branch);
    if (!forkLsn) return { since: tip, age: Infinity };
    return { since: tip - parseLsn(forkLsn), age: Date.now() - new Date(createdAt).getTime() };
  }
}

/**
 * Where the WAL written since `image` starts, for measuring how much there is. An online image is taken with
 * BASE_BACKUP, which ends the WAL segment it stops in (a segment switch): the rest of that segment is skipped, not
 * written, so counting it would make a small database look mostly rewritten after one small update.
 */
function walStartAfter(image: ImageManifest, upTo: bigint, segmentSize: number): bigint {
  const end = parseLsn(image.endLsn);
  if (image.kind !== 'online' || !(segmentSize > 0)) return end;
  const next = segmentStart(segmentOf(end, segmentSize) + 1n, segmentSize);
  return upTo >= next ? next : end;
}

function readable(dir: string): boolean {
  try {
    fs.accessSync(dir, fs.constants.R_OK | fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
