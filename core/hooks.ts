import { AsyncParallelHook, AsyncSeriesBailHook, AsyncSeriesHook, HookMap } from 'tapable';
import type { BackupFormat, FormatRequest } from './format.js';
import type { Launcher, LauncherRequest } from './launcher.js';
import type { Logger } from './log.js';
import type { Storage, StorageRequest } from './storage.js';

/** The repository as plugins see it: its folder (plugins keep their own state in files under it). */
export interface RepositoryInfo {
  readonly dir: string;
}

/**
 * WAL by file name as plugins see it (the daemon's WAL store implements it): which branches stream now and the
 * newest unfinished segment of each.
 */
export interface WalSource {
  /** The branches the safekeepers stream now, the main compute's first. */
  activeBranches(): string[];
  /** The newest unfinished segment of a branch, from the safekeeper that has the most of it. */
  partial(branch: string): PartialSegment | undefined;
}

/** The newest unfinished segment of a branch, on the safekeeper that has the most of it. */
export interface PartialSegment {
  branch: string;
  segment: string;
  /** Its file on that safekeeper's disk. */
  path: string;
  /** How far its bytes are durable (the rest of the file is zeros). */
  flushLsn: string;
  safekeeper: string;
}

/** Passed to every lifecycle hook: where the repository is and how to log. */
export interface HookContext {
  repo: RepositoryInfo;
  log: Logger;
}

/** `neon init`: the repository and the main compute's data directory exist. */
export interface InitContext extends HookContext {
  /** The storage destination recorded for this repository, if any (normalised URL). */
  storageDest?: string;
  pgVersion: number;
}

/** The daemon has started its components and is about to answer requests. */
export interface StartContext extends HookContext {
  storageDest?: string;
  /** The storage at storage_dest, opened through its plugin; undefined when none is configured. */
  storage?: Storage;
  /** WAL by name, and the newest unfinished segment of each branch. */
  wal: WalSource;
  /** Sections a plugin adds to `GET /status` (e.g. `offload`), keyed by section name. */
  status: Map<string, () => unknown>;
}

/** The daemon is stopping (`neon stop`, SIGTERM or SIGINT); hooks run before the computes are stopped. */
export interface StopContext extends HookContext {
  reason: 'request' | 'signal';
}

/** A snapshot (a named point in history) has been recorded. */
export interface SnapshotContext extends HookContext {
  name: string;
  branch: string;
  lsn: string;
}

/** `neon export` / `neon init --snapshot_path`: a snapshot leaves for, or arrives from, another format. */
export interface TransferContext extends HookContext {
  snapshotPath: string;
  snapshotFormat: string;
}

/** A safekeeper finished a WAL segment (its file is complete and fsynced). */
export interface WalSegmentEvent {
  branch: string;
  timeline: number;
  /** The segment's file name. */
  segment: string;
  /** Its file on the safekeeper's disk. */
  path: string;
  /** The safekeeper that completed it (each one does, for its own copy). */
  safekeeper: string;
}

/** A base image was stored (its manifest is written). */
export interface BaseImageEvent {
  branch: string;
  lsn: string;
  manifestKey: string;
}

/** A compute process is up and accepting connections. */
export interface ComputeEvent {
  name: string;
  pid: number;
  port: number;
}

/** A compute process ended; `expected` is false when nobody asked it to stop. */
export interface ComputeExitEvent {
  name: string;
  pid: number;
  code: number | null;
  signal: string | null;
  expected: boolean;
}

/**
 * Create the hook table. One object, frozen, every hook typed: plugins tap these through the core (see
 * `plugin.ts`), never by adding hooks of their own.
 */
export function createHooks() {
  return Object.freeze({
    /** A repository was just created by `neon init` (series: plugins run one after another). */
    init: new AsyncSeriesHook<[InitContext]>(['context']),
    /** The daemon has started its components. */
    start: new AsyncSeriesHook<[StartContext]>(['context']),
    /** The daemon is about to stop its components. */
    stop: new AsyncSeriesHook<[StopContext]>(['context']),
    /** A snapshot was recorded. */
    snapshot: new AsyncSeriesHook<[SnapshotContext]>(['context']),
    /** A snapshot is being exported to `snapshotPath` in `snapshotFormat`. */
    exportSnapshot: new AsyncSeriesHook<[TransferContext]>(['context']),
    /** A snapshot is being imported from `snapshotPath` in `snapshotFormat`. */
    importSnapshot: new AsyncSeriesHook<[TransferContext]>(['context']),

    /** Observer: a WAL segment is complete. Must not block: queue the work. */
    walSegmentCompleted: new AsyncParallelHook<[WalSegmentEvent]>(['event']),
    /** Observer: a base image was stored. */
    baseImageStored: new AsyncParallelHook<[BaseImageEvent]>(['event']),
    /** Observer: a compute started. */
    computeStarted: new AsyncParallelHook<[ComputeEvent]>(['event']),
    /** Observer: a compute exited. */
    computeExited: new AsyncParallelHook<[ComputeExitEvent]>(['event']),

    /** Which plugin opens a storage for this URL scheme? (bail: the first answer wins) */
    resolveStorage: new HookMap(() => new AsyncSeriesBailHook<[StorageRequest], Storage | undefined>(['request'])),
    /** Which plugin packs and unpacks this snapshot format? */
    resolveFormat: new HookMap(() => new AsyncSeriesBailHook<[FormatRequest], BackupFormat | undefined>(['request'])),
    /** Which plugin launches processes of this component kind? */
    resolveLauncher: new HookMap(() => new AsyncSeriesBailHook<[LauncherRequest], Launcher | undefined>(['request'])),
  });
}

/** The hook table of one neon process. */
export type NeonHooks = ReturnType<typeof createHooks>;

/** Names of the hooks a plugin can tap with a plain method. */
export const LIFECYCLE_HOOKS = [
  'init',
  'start',
  'stop',
  'snapshot',
  'exportSnapshot',
  'importSnapshot',
  'walSegmentCompleted',
  'baseImageStored',
  'computeStarted',
  'computeExited',
] as const;

export type LifecycleHookName = (typeof LIFECYCLE_HOOKS)[number];
