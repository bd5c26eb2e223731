/** One unit of upload work, identified by `key` so that the same work is never queued twice. */
export interface UploadJob {
  /** Identity for deduplication, e.g. `segment:main:000000010000000000000003`. */
  key: string;
  /** Jobs run in ascending `rank` order (then by key): older segments go before newer ones. */
  rank: number;
  run(): Promise<void>;
}

/** Options of {@link UploadQueue}. */
export interface UploadQueueOptions {
  /** First retry delay after a failure. */
  retryMinMs: number;
  /** Ceiling of the doubling retry delay. */
  retryMaxMs: number;
  /** A job failed; it is retried after `delayMs`. */
  onError(job: UploadJob, error: unknown, delayMs: number): void;
  /** A job succeeded. */
  onSuccess(job: UploadJob): void;
}

/**
 * A serial work queue with deduplication and retry forever with exponential backoff. Serial on purpose: a
 * storage that keeps up with one segment at a time keeps up with WAL, and uploads in name order keep the
 * record of what was uploaded simple; a failing head job blocks the rest, which is what we want when the
 * storage itself is down (everything would fail anyway).
 */
export class UploadQueue {
  private readonly jobs = new Map<string, UploadJob>();
  private draining?: Promise<void>;
  private running = false;
  private wake?: () => void;
  private sleepTimer?: NodeJS.Timeout;

  constructor(private readonly options: UploadQueueOptions) {}

  /** Queue `job` unless one with its key is queued or running; returns whether it was added. */
  add(job: UploadJob): boolean {
    if (this.jobs.has(job.key)) return false;
    this.jobs.set(job.key, job);
    this.kick();
    return true;
  }

  has(key: string): boolean {
    return this.jobs.has(key);
  }

  /** Jobs waiting or running, optionally only those whose key passes `filter`. */
  count(filter: (key: string) => boolean = () => true): number {
    let n = 0;
    for (const key of this.jobs.keys()) if (filter(key)) n++;
    return n;
  }

  /** Forget every queued job (they were recorded nowhere, so nothing else needs undoing). */
  clear(): void {
    this.jobs.clear();
  }

  /** Start working (jobs added before are kept). */
  start(): void {
    this.running = true;
    this.kick();
  }

  /**
   * Stop taking jobs; wait at most `graceMs` for the one in flight. Returns false when it did not finish in
   * time: it is abandoned (its promise may still settle later, harmlessly).
   */
  async stop(graceMs: number): Promise<boolean> {
    this.running = false;
    clearTimeout(this.sleepTimer);
    this.wake?.();
    if (!this.draining) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), graceMs)));
    const done = await Promise.race([this.draining.then(() => true), timeout]);
    clearTimeout(timer);
    return done;
  }

  private kick(): void {
    if (!this.running || this.draining) return;
    this.draining = this.drain().finally(() => {
      this.draining = undefined;
      // A job added while the loop was ending found it still "draining": pick it up now.
      if (this.jobs.size) this.kick();
    });
  }

  private next(): UploadJob | undefined {
    let best: UploadJob | undefined;
    for (const job of this.jobs.values()) {
      if (!best || job.rank < best.rank || (job.rank === best.rank && job.key < best.key)) best = job;
    }
    return best;
  }

  private async drain(): Promise<void> {
    let delay = this.options.retryMinMs;
    for (let job = this.next(); job && this.running; job = this.next()) {
      try {
        await job.run();
        this.jobs.delete(job.key);
        delay = this.options.retryMinMs;
        this.options.onSuccess(job);
      } catch (error) {
        this.options.onError(job, error, delay);
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          this.sleepTimer = setTimeout(resolve, delay);
        });
        this.wake = undefined;
        delay = Math.min(delay * 2, this.options.retryMaxMs);
      }
    }
  }
}
