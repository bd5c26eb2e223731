import type { PageserverConfig } from './config.js';
import type { Daemon } from './daemon.js';
import { NeonError, messageOf } from './errors.js';
import { formatLsn, parseLsn } from '../replication/lsn.js';
import type { ImageManifest } from '../pageserver/manifest.js';
import { takeOnlineImage } from '../pageserver/take-image.js';

const CHECK_EVERY_MS = 15_000;

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
    private readonly daemon: Daemon,
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

  /** Take an image of the main compute now (after any image being taken). */
  take(): Promise<ImageManifest> {
    const run = this.queue.then(() => this.takeNow());
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async takeNow(): Promise<ImageManifest> {
    const { daemon } = this;
    const main = daemon.computes.get('main');
    if (!main || main.state !== 'running' || main.record.readOnly) {
      throw new NeonError('not_running', 'the main compute is not running: a base image is taken from it (neon pg start -n main)', {
        status: 409,
      });
    }
    this.taking = true;
    try {
      const stored = await daemon.pageserver.takeImage((mirror) =>
        takeOnlineImage({
          store: daemon.pageserver.store,
          branch: main.record.branch,
          pgVersion: daemon.binaries.version,
          primary: daemon.primaryOf(main.record),
          mirror,
        }),
      );
      this.error = null;
      daemon.sync?.schedule();
      return stored;
    } catch (error) {
      this.error = messageOf(error);
      throw error;
    } finally {
      this.taking = false;
    }
  }

  // The policy: enough WAL since the last image, or enough time with some WAL.
  private async check(): Promise<void> {
    const main = this.daemon.computes.get('main');
    if (!main || main.state !== 'running' || this.taking) return;
    const tip = this.daemon.safekeepers.flushedOf(main.record.branch);
    if (tip === undefined) return;
    const last = this.daemon.pageserver.images(main.record.branch).at(-1);
    const since = last ? tip - last.endLsn : tip;
    const age = last ? Date.now() - new Date(last.createdAt).getTime() : Infinity;
    if (since >= this.afterBytes || (since > 0n && age >= this.intervalMs)) {
      await this.take().catch((error) => this.daemon.log.warn('background base image failed: %s', messageOf(error)));
    }
  }
}
