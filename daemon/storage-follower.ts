import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { messageOf } from '../core/errors.js';
import { readObject, type Storage } from '../core/storage.js';
import {
  DEFAULT_SEGMENT_SIZE,
  historyFileName,
  parseSegmentName,
  partialObjectKey,
  segmentName,
  unpackWal,
  walObjectKey,
} from '../core/wal.js';
import { readClaims } from './claim.js';
import { currentView } from './fenced-storage.js';

/*
 * A standby over another repository's storage follows that repository's primary through what it offloads, the
 * way a WAL-G standby does with `wal-fetch`: every poll, the follower looks for the next finished segment of the
 * remote branch and, until it exists, for that segment's unfinished copy (which safekeeper-offload replaces
 * every second or so). What it finds goes into the standby's restore folder, where restore_command (`cp`) takes
 * it; Postgres retries restore_command every wal_retrieve_retry_interval. Nothing needs a network path to the
 * other machine's Postgres, only read access to the storage. Finished segments are also kept with the pulled
 * branch's WAL (`<repo>/pulled/wal/<branch>/`), so the history the standby replayed stays in this repository.
 */

/** `computes/<name>/follow.json`: what a storage replica follows. */
export interface FollowSpec {
  /** Attached storage name (null for a URL), and its URL. */
  storage: string | null;
  url: string;
  /** The branch in the remote storage whose WAL is followed. */
  remoteBranch: string;
  /** The local (pulled) branch the standby is on. */
  localBranch: string;
  /** The next segment to fetch (grows as segments are finished). */
  next: string;
}

/** How often the storage is looked at. */
export const FOLLOW_POLL_MS = 1000;

/** The file a compute keeps its follow spec in. */
export function followFile(home: string): string {
  return path.join(home, 'follow.json');
}

/** Read a compute's follow spec, if it is a storage replica. */
export function readFollowSpec(home: string): FollowSpec | undefined {
  try {
    return JSON.parse(fs.readFileSync(followFile(home), 'utf8')) as FollowSpec;
  } catch {
    return undefined;
  }
}

/** Where the follower writes. */
export interface FollowTarget {
  /** The standby's restore folder (its restore_command copies from there). */
  walDir: string;
  /** `<repo>/pulled/wal/<local branch>`: finished segments kept with the pulled branch. */
  keepDir: string;
  /** The Postgres user's group, which must read what restore_command copies. */
  owner?: { gid: number };
}

// Written next to the target and renamed over it, so restore_command never copies a half-written file; readable
// by the Postgres user's group (restore_command runs as that user).
function place(file: string, bytes: Buffer, owner?: { gid: number }): void {
  const temp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(temp, bytes);
  if (owner) fs.chownSync(temp, -1, owner.gid);
  fs.chmodSync(temp, 0o640); // whatever the umask
  fs.renameSync(temp, file);
}

/** A segment's bytes at full size: an unfinished copy may be cut short, and restore_command needs 16 MB. */
function fullSize(bytes: Buffer): Buffer {
  if (bytes.length >= DEFAULT_SEGMENT_SIZE) return bytes;
  const padded = Buffer.alloc(DEFAULT_SEGMENT_SIZE);
  bytes.copy(padded);
  return padded;
}

/**
 * One look at the storage: fetch every finished segment from `spec.next` on (advancing it), then the unfinished
 * copy of the next one when it changed since `seen`. Returns the new spec and the unfinished copy's marker.
 */
export async function followOnce(
  raw: Storage,
  spec: FollowSpec,
  target: FollowTarget,
  seen?: string,
): Promise<{ spec: FollowSpec; seen?: string; fetched: number }> {
  const storage = await currentView(raw, await readClaims(raw));
  let { next } = spec;
  let fetched = 0;
  for (;;) {
    const key = walObjectKey(spec.remoteBranch, next);
    if (await storage.head(key)) {
      const bytes = await unpackWal(key, await readObject(storage, key));
      place(path.join(target.walDir, next), bytes, target.owner);
      const kept = path.join(target.keepDir, next);
      if (!fs.existsSync(kept)) place(kept, bytes);
      fs.rmSync(`${kept}.partial`, { force: true });
      const segment = parseSegmentName(next, DEFAULT_SEGMENT_SIZE)!;
      next = segmentName(segment.timeline, segment.segno + 1n, DEFAULT_SEGMENT_SIZE);
      fetched++;
      seen = undefined;
      continue;
    }
    // The remote primary changed timeline (a promote there): its history file comes first, then segments on it.
    const segment = parseSegmentName(next, DEFAULT_SEGMENT_SIZE)!;
    const history = historyFileName(segment.timeline + 1);
    const historyKey = walObjectKey(spec.remoteBranch, history);
    if (await storage.head(historyKey)) {
      const bytes = await unpackWal(historyKey, await readObject(storage, historyKey));
      place(path.join(target.walDir, history), bytes, target.owner);
      place(path.join(target.keepDir, history), bytes);
      next = segmentName(segment.timeline + 1, segment.segno, DEFAULT_SEGMENT_SIZE);
      continue;
    }
    break;
  }
  const partialKey = partialObjectKey(spec.remoteBranch, next);
  const partial = await storage.head(partialKey);
  const marker = partial && `${partial.size}:${partial.mtime?.getTime() ?? ''}`;
  if (partial && marker !== seen) {
    const bytes = await unpackWal(partialKey, await readObject(storage, partialKey));
    place(path.join(target.walDir, next), fullSize(bytes), target.owner);
    seen = marker;
    fetched++;
  }
  return { spec: { ...spec, next }, seen, fetched };
}

/**
 * Follow until `keepGoing` says stop: poll the storage every {@link FOLLOW_POLL_MS}, saving the spec whenever a
 * segment was finished. Errors (the storage unreachable for a while) are logged once per kind and retried.
 */
export async function follow(
  storage: Storage,
  spec: FollowSpec,
  target: FollowTarget,
  hooks: { keepGoing(): boolean; save(spec: FollowSpec): Promise<void>; warn(message: string): void },
): Promise<void> {
  let seen: string | undefined;
  let lastError: string | undefined;
  while (hooks.keepGoing()) {
    try {
      const step = await followOnce(storage, spec, target, seen);
      if (step.spec.next !== spec.next) await hooks.save(step.spec);
      spec = step.spec;
      seen = step.seen;
      lastError = undefined;
    } catch (error) {
      const message = messageOf(error);
      if (message !== lastError) hooks.warn(`following ${spec.url} (branch ${spec.remoteBranch}): ${message}`);
      lastError = message;
    }
    await sleep(FOLLOW_POLL_MS);
  }
}
