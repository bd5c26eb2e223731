import { setTimeout as sleep } from 'node:timers/promises';
import { NeonError } from '../core/errors.js';
import type { Wire } from '../core/rest.js';
import type { OperationHandle, OperationInfo, Progress } from '../daemon/operations.js';

/** How progress is shown: a bar on a terminal, a line per step otherwise, nothing with --json. */
export type ProgressMode = 'bar' | 'lines' | 'none';

/** The mode for this process: --json prints only the result; stderr decides between a bar and lines. */
export function progressMode(json: boolean | undefined, stream: NodeJS.WriteStream = process.stderr): ProgressMode {
  if (json) return 'none';
  return stream.isTTY ? 'bar' : 'lines';
}

/** Bytes as people read them: 1.5 MB, 320 kB. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) ((value /= 1024), unit++);
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function formatSeconds(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  if (seconds < 60) return `${Math.ceil(seconds)}s`;
  return `${Math.floor(seconds / 60)}m${String(Math.ceil(seconds % 60)).padStart(2, '0')}s`;
}

const QUIET_STEPS = new Set(['starting', 'checking']);

/** Draws the progress of one piece of work on stderr (see {@link ProgressMode}). */
export class ProgressView {
  private readonly started = Date.now();
  private lastStep = '';
  private drawn = false;

  constructor(
    private readonly label: string,
    private readonly mode: ProgressMode,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {}

  /** Show where the work is now. */
  update(progress: Pick<Progress, 'bytes' | 'totalBytes' | 'step' | 'objects'>): void {
    if (this.mode === 'lines') {
      // The first checks are quick and often end in an error: the error alone is clearer than a line before it.
      if (progress.step !== this.lastStep && !QUIET_STEPS.has(progress.step))
        this.stream.write(`${this.label}: ${progress.step} (${formatBytes(progress.bytes)} so far)\n`);
    } else if (this.mode === 'bar') {
      this.stream.write(`\r${this.bar(progress)}\x1b[K`);
      this.drawn = true;
    }
    this.lastStep = progress.step;
  }

  /** The work ended: end the bar's line. */
  finish(): void {
    if (this.drawn) this.stream.write('\n');
    this.drawn = false;
  }

  private bar({ bytes, totalBytes, step }: Pick<Progress, 'bytes' | 'totalBytes' | 'step'>): string {
    const seconds = Math.max((Date.now() - this.started) / 1000, 0.001);
    const rate = bytes / seconds;
    const width = 24;
    if (!totalBytes) return `${this.label} ${step}: ${formatBytes(bytes)} at ${formatBytes(rate)}/s`;
    const share = Math.min(bytes / totalBytes, 1);
    const filled = Math.round(share * width);
    const eta = rate > 0 ? (totalBytes - bytes) / rate : Infinity;
    return (
      `${this.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${Math.floor(share * 100)}% ` +
      `${formatBytes(bytes)}/${formatBytes(totalBytes)} ${formatBytes(rate)}/s ETA ${formatSeconds(eta)} (${step})`
    );
  }
}

/** An operation handle that draws progress as it is reported (for work done in the CLI's own process: clone). */
export function localProgress(view: ProgressView): OperationHandle {
  const progress: Progress = { bytes: 0, totalBytes: null, objects: 0, step: 'starting' };
  return {
    step(step, totalBytes) {
      progress.step = step;
      if (totalBytes !== undefined) progress.totalBytes = totalBytes;
      view.update(progress);
    },
    add(bytes, objects = 0) {
      progress.bytes += bytes;
      progress.objects += objects;
      view.update(progress);
    },
  };
}

/**
 * Poll an operation (`GET /operations/:id`) until it ends, drawing its progress; resolves with the finished
 * operation, or rejects with its error as the daemon reported it.
 */
export async function followOperation(
  first: Wire<OperationInfo>,
  poll: (id: string) => Promise<Wire<OperationInfo>>,
  view: ProgressView,
  intervalMs = 250,
): Promise<Wire<OperationInfo>> {
  let op = first;
  try {
    while (op.state === 'running') {
      view.update({ bytes: op.progress.bytes, totalBytes: op.progress.total_bytes, step: op.progress.step, objects: op.progress.objects });
      await sleep(intervalMs);
      op = await poll(op.id);
    }
  } finally {
    view.finish();
  }
  if (op.state === 'failed') throw new NeonError(op.error?.code ?? 'failed', op.error?.message ?? `operation ${op.id} failed`);
  return op;
}
