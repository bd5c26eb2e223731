import { NeonError, PluginError } from '../../core/errors.js';
import type { WalSegmentEvent } from '../../core/hooks.js';
import { checkPluginOptions, type NeonPlugin } from '../../core/plugin.js';
import { Offloader } from './offloader.js';
import { OffloadState } from './state.js';

export type { OffloadStatus } from './offloader.js';

const NAME = 'safekeeper-offload';

/** Options of {@link safekeeperOffload}. */
export interface SafekeeperOffloadOptions {
  /**
   * How often (ms) to look at the newest unfinished segment and, when its flush position moved, upload it as
   * `wal/<branch>/<segment>.partial.gz` (default 1000). This bounds how many commits are lost when the whole
   * machine is lost; a smaller value costs more uploads while WAL flows (none while it does not).
   */
  partialIntervalMs?: number;
  /**
   * Ceiling of the retry delay (ms) after a failed upload (default 10000). Retries start at 200 ms, double up
   * to this, and go on forever: a failing storage delays offload, it never stops commits.
   */
  retryMaxMs?: number;
  /**
   * Delete local segment files (on every safekeeper) once they are uploaded and wholly older than the newest
   * base image of their branch (default false). Without a base image nothing is removed.
   */
  removeLocal?: boolean;
}

/**
 * Offloads the WAL that safekeepers write to the repository's storage_dest: each finished segment once,
 * gzip-compressed, as `wal/<branch>/<segment>.gz` (the gzip trailer's CRC makes every read verify it), timeline
 * history files likewise, and the growing newest segment as a `.partial.gz` that is replaced while WAL flows.
 *
 * Uploads run in the background (the `walSegmentCompleted` hook only queues), are retried with backoff, and are
 * recorded in `<repo>/offload/state.json` so that a restart uploads only what is missing: on start, every
 * finished local segment that is not recorded is queued, which covers segments finished while the daemon was
 * down. `GET /status` gets an `offload` section. Without a storage_dest the plugin does nothing.
 */
export default function safekeeperOffload(options?: SafekeeperOffloadOptions): NeonPlugin {
  const given = checkPluginOptions(NAME, options, ['partialIntervalMs', 'retryMaxMs', 'removeLocal']);
  const settings = {
    partialIntervalMs: milliseconds('partialIntervalMs', given.partialIntervalMs ?? 1000),
    retryMaxMs: milliseconds('retryMaxMs', given.retryMaxMs ?? 10_000),
    removeLocal: given.removeLocal ?? false,
  };
  if (typeof settings.removeLocal !== 'boolean') throw optionError(`removeLocal must be true or false`);

  let offloader: Offloader | undefined;
  let started = false;
  // Safekeepers start before the start hook runs, so a segment can complete first; keep it for then.
  const early: WalSegmentEvent[] = [];

  return {
    name: NAME,
    async start(ctx) {
      started = true;
      if (!ctx.storage) {
        early.length = 0;
        ctx.log.info('%s: no storage_dest for this repository, so WAL stays on the safekeepers only', NAME);
        return;
      }
      const state = await OffloadState.load(ctx.repo.dir);
      const log = ctx.log.child(NAME);
      offloader = new Offloader({ storage: ctx.storage, wal: ctx.wal, repoDir: ctx.repo.dir, log }, state, settings);
      const current = offloader;
      ctx.status.set('offload', () => current.status());
      await offloader.start(early.splice(0));
    },
    // Must return at once: it runs on the path that relays safekeeper messages. The upload is queued.
    walSegmentCompleted(event) {
      if (offloader) offloader.segmentCompleted(event);
      else if (!started) early.push(event);
    },
    baseImageStored(event) {
      offloader?.baseImageStored(event);
    },
    async stop() {
      await offloader?.stop();
    },
  };
}

function milliseconds(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 1) {
    throw optionError(`${name} must be a number of milliseconds of at least 1 (got ${JSON.stringify(value)})`);
  }
  return value;
}

function optionError(message: string): PluginError {
  return PluginError.wrap(NAME, undefined, new NeonError('bad_plugin_option', message));
}
