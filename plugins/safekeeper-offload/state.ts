import fs from 'node:fs/promises';
import path from 'node:path';
import { readJson, writeFileAtomic } from '../../core/fs-atomic.js';
import { type Lsn, parseSegmentName, safekeeperWalDir } from '../../core/wal.js';

/** Finished segment files: 24 hex digits, no suffix. History files: `0000000N.history`. */
export const SEGMENT_NAME = /^[0-9A-F]{24}$/;
export const HISTORY_NAME = /^[0-9A-F]{8}\.history$/;
const PARTIAL_NAME = /^([0-9A-F]{24})\.partial$/;

// Names older than the newest KEEP uploaded ones fold into `through`, so the file stays a few KB however long
// the repository lives. Safe because uploads run in name order: a name below `through` that was never uploaded
// could only come from a safekeeper that lags by more than KEEP segments and whose peers never had it.
const KEEP = 256;

/** What was uploaded for one branch. */
export interface BranchRecord {
  /** Every finished segment named up to this one counts as uploaded. */
  through: string | null;
  /** Uploaded finished segments newer than `through`, in name order. */
  segments: string[];
  /** Uploaded timeline history files. */
  history: string[];
  /** The newest partial segment uploaded, and how far its bytes were durable (null: not known). */
  partial: { segment: string; flush_lsn: string | null } | null;
  /** LSN of the newest base image (local segments wholly before it may be removed). */
  base_lsn: string | null;
}

interface StateFile {
  version: 1;
  branches: Record<string, BranchRecord>;
}

/** `<repo>/offload/state.json`: what this repository has already offloaded, so a restart does not redo it. */
export class OffloadState {
  private branches: Record<string, BranchRecord> = {};
  private saving: Promise<void> = Promise.resolve();

  constructor(readonly file: string) {}

  static async load(repoDir: string): Promise<OffloadState> {
    const state = new OffloadState(path.join(repoDir, 'offload', 'state.json'));
    const data = await readJson<StateFile>(state.file).catch(() => undefined); // unreadable: upload again, harmless
    if (data?.version === 1) state.branches = data.branches ?? {};
    return state;
  }

  branch(name: string): BranchRecord {
    return (this.branches[name] ??= { through: null, segments: [], history: [], partial: null, base_lsn: null });
  }

  has(branch: string, kind: 'segment' | 'history', name: string): boolean {
    const record = this.branch(branch);
    if (kind === 'history') return record.history.includes(name);
    return (record.through !== null && name <= record.through) || record.segments.includes(name);
  }

  add(branch: string, kind: 'segment' | 'history', name: string): void {
    const record = this.branch(branch);
    if (this.has(branch, kind, name)) return;
    if (kind === 'history') {
      record.history.push(name);
      return;
    }
    record.segments.push(name);
    record.segments.sort();
    while (record.segments.length > KEEP) record.through = record.segments.shift()!;
  }

  /** The newest uploaded finished segment of `branch`. */
  last(branch: string): string | null {
    const record = this.branch(branch);
    return record.segments.at(-1) ?? record.through;
  }

  /** Write the file atomically; writes are chained so that an older state never lands after a newer one. */
  save(): Promise<void> {
    const data = JSON.stringify({ version: 1, branches: this.branches } satisfies StateFile, null, 1) + '\n';
    const write = async () => {
      await fs.mkdir(path.dirname(this.file), { recursive: true });
      await writeFileAtomic(this.file, data);
    };
    const next = this.saving.then(write, write);
    this.saving = next.catch(() => undefined);
    return next;
  }
}

/** A WAL file on a safekeeper's disk. */
export interface LocalWalFile {
  branch: string;
  name: string;
  path: string;
  kind: 'segment' | 'history';
}

/** Every safekeeper's `wal/<branch>/` folder under `<repo>/safekeepers/`. */
export async function walFolders(repoDir: string, branch?: string): Promise<{ branch: string; dir: string }[]> {
  const folders: { branch: string; dir: string }[] = [];
  const root = path.join(repoDir, 'safekeepers');
  for (const sk of await readdir(root)) {
    for (const name of branch ? [branch] : await readdir(path.join(root, sk, 'wal'))) {
      folders.push({ branch: name, dir: safekeeperWalDir(path.join(root, sk), name) });
    }
  }
  return folders;
}

/** Finished segments and history files in one folder, in name order. */
export async function walFilesIn(folder: { branch: string; dir: string }): Promise<LocalWalFile[]> {
  const files: LocalWalFile[] = [];
  for (const name of (await readdir(folder.dir)).sort()) {
    const kind = SEGMENT_NAME.test(name) ? 'segment' : HISTORY_NAME.test(name) ? 'history' : undefined;
    if (kind) files.push({ branch: folder.branch, name, path: path.join(folder.dir, name), kind });
  }
  return files;
}

/** The newest `<segment>.partial` file of `branch` on any safekeeper. */
export async function newestPartialFile(repoDir: string, branch: string): Promise<{ segment: string; path: string } | undefined> {
  let best: { segment: string; path: string } | undefined;
  for (const folder of await walFolders(repoDir, branch)) {
    for (const name of await readdir(folder.dir)) {
      const segment = PARTIAL_NAME.exec(name)?.[1];
      if (segment && (!best || segment > best.segment)) best = { segment, path: path.join(folder.dir, name) };
    }
  }
  return best;
}

/**
 * Delete uploaded local segments that end at or before `base` (the newest base image), in every safekeeper's
 * folder. Each folder keeps its newest finished segment, because a safekeeper resumes after its newest file.
 */
export async function removeOffloaded(repoDir: string, branch: string, base: Lsn, uploaded: (name: string) => boolean): Promise<void> {
  for (const folder of await walFolders(repoDir, branch)) {
    const segments = (await walFilesIn(folder)).filter((file) => file.kind === 'segment');
    for (const file of segments.slice(0, -1)) {
      if (!uploaded(file.name)) continue;
      // A finished segment's size is the cluster's segment size, which its name is numbered in.
      const size = (await fs.stat(file.path).catch(() => undefined))?.size;
      const parsed = size ? parseSegmentName(file.name, size) : undefined;
      if (parsed && (parsed.segno + 1n) * BigInt(size!) <= base) await fs.rm(file.path, { force: true });
    }
  }
}

async function readdir(dir: string): Promise<string[]> {
  try {
    return await fs.readdir(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    throw error;
  }
}
