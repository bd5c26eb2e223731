import { randomBytes } from 'node:crypto';
import { NeonError, isExpected, messageOf } from '../core/errors.js';
import type { Logger } from '../core/log.js';

/** How far an operation has come: bytes moved (of `totalBytes` when known), objects moved, and the step it is in. */
export interface Progress {
  bytes: number;
  /** Bytes the whole operation moves, when known up front (null: unknown, no ETA). */
  totalBytes: number | null;
  objects: number;
  step: string;
}

/** What `GET /operations/:id` answers. */
export interface OperationInfo {
  id: string;
  kind: string;
  /** What it works on, e.g. the snapshot and the storage. */
  target: string;
  state: 'running' | 'succeeded' | 'failed';
  progress: Progress;
  startedAt: string;
  finishedAt: string | null;
  /** The failure as the REST API reports errors. */
  error: { code: string; message: string } | null;
  /** What the work returned once it succeeded. */
  result: unknown;
}

/** What a long piece of work gets to report its progress. */
export interface OperationHandle {
  /** Set the step (a new step keeps the counters). */
  step(step: string, totalBytes?: number | null): void;
  /** Count bytes and objects moved. */
  add(bytes: number, objects?: number): void;
}

// Finished operations are kept for a while so that a client polling slowly still sees how they ended.
const KEEP_FINISHED = 200;

/**
 * Long work (push, pull) run in the background as operations a client polls: the REST call that starts one
 * answers at once with its id. Kept in memory: an operation does not outlive the daemon, and the work it did is
 * resumable (running the command again continues where it stopped), so nothing needs to survive a restart.
 */
export class Operations {
  private readonly all = new Map<string, OperationInfo>();

  constructor(private readonly log: Logger) {}

  /** Start `work` as an operation; returns its record at once. */
  start(kind: string, target: string, work: (handle: OperationHandle) => Promise<unknown>): OperationInfo {
    const info: OperationInfo = {
      id: `op-${randomBytes(6).toString('hex')}`,
      kind,
      target,
      state: 'running',
      progress: { bytes: 0, totalBytes: null, objects: 0, step: 'starting' },
      startedAt: new Date().toISOString(),
      finishedAt: null,
      error: null,
      result: null,
    };
    this.all.set(info.id, info);
    const handle: OperationHandle = {
      step: (step, totalBytes) => {
        info.progress.step = step;
        if (totalBytes !== undefined) info.progress.totalBytes = totalBytes;
      },
      add: (bytes, objects = 0) => {
        info.progress.bytes += bytes;
        info.progress.objects += objects;
      },
    };
    this.log.info('%s %s (%s) started', kind, target, info.id);
    void work(handle).then(
      (result) => {
        Object.assign(info, { state: 'succeeded', result: result ?? null, finishedAt: new Date().toISOString() });
        info.progress.step = 'done';
        this.log.info('%s %s (%s) done: %d bytes, %d objects', kind, target, info.id, info.progress.bytes, info.progress.objects);
        this.prune();
      },
      (error) => {
        const code = error instanceof NeonError ? error.code : 'internal';
        Object.assign(info, { state: 'failed', error: { code, message: messageOf(error) }, finishedAt: new Date().toISOString() });
        if (isExpected(error)) this.log.warn('%s %s (%s) failed: %s', kind, target, info.id, messageOf(error));
        else this.log.error('%s %s (%s) failed: %s', kind, target, info.id, (error as Error)?.stack ?? messageOf(error));
        this.prune();
      },
    );
    return info;
  }

  /** The operation `id`, or a 404. */
  get(id: string): OperationInfo {
    const found = this.all.get(id);
    if (!found) throw new NeonError('operation_not_found', `no operation ${id} (operations do not outlive the daemon)`, { status: 404 });
    return found;
  }

  /** Every operation, newest first. */
  list(): OperationInfo[] {
    return [...this.all.values()].reverse();
  }

  private prune(): void {
    const finished = [...this.all.values()].filter((op) => op.state !== 'running');
    for (const op of finished.slice(0, Math.max(0, finished.length - KEEP_FINISHED))) this.all.delete(op.id);
  }
}
