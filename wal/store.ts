import fs from 'node:fs';
import path from 'node:path';
import { readObject, type Storage } from '../core/storage.js';
import { type PartialSegment, type WalSource } from '../core/hooks.js';
import { isWalFileName, parseLsn, PARTIAL_SUFFIX as PARTIAL, partialObjectKey, safekeeperWalDir, segmentName, segmentOf, unpackWal, walFileOfKey, walObjectKey, walObjectPrefix } from '../core/wal.js';


/** Offset just past the last non-zero byte: how much of a pre-zeroed partial segment holds WAL. */
function filledLength(file: string): number {
  const data = fs.readFileSync(file);
  let end = data.length;
  while (end > 0 && data[end - 1] === 0) end--;
  return end;
}

/** A safekeeper as the WAL store sees it: its folder, and how far it has flushed each branch. */
export interface WalHolder {
  readonly name: string;
  readonly dir: string;
  statusOf(branch: string): { flushLsn?: string | null; timeline?: number | null };
}

/**
 * WAL by file name, wherever it is: on a safekeeper's disk (finished segments, history files and the newest
 * unfinished segment), else in storage_dest (offloaded, verified on read). Recovery is served from here.
 */
export class WalStore implements WalSource {
  constructor(
    private readonly safekeepers: () => WalHolder[],
    private readonly storage?: Storage,
    /** The branches the safekeepers stream now. */
    readonly activeBranches: () => string[] = () => ['main'],
  ) {}

  private dirOf(node: WalHolder, branch: string): string {
    return safekeeperWalDir(node.dir, branch);
  }

  private segmentSize(node: WalHolder): number | undefined {
    try {
      return (JSON.parse(fs.readFileSync(path.join(node.dir, 'system.json'), 'utf8')) as { segmentSize: number }).segmentSize;
    } catch {
      return undefined;
    }
  }

  /** The newest unfinished segment of the branch a safekeeper streams now, from the one that flushed the most. */
  partial(branch: string): PartialSegment | undefined {
    let best: (PartialSegment & { lsn: bigint }) | undefined;
    for (const node of this.safekeepers()) {
      const { flushLsn, timeline } = node.statusOf(branch);
      const size = this.segmentSize(node);
      if (!flushLsn || !timeline || !size) continue;
      const lsn = parseLsn(flushLsn);
      const segment = segmentName(timeline, segmentOf(lsn, size), size);
      const file = path.join(this.dirOf(node, branch), segment + PARTIAL);
      if (fs.existsSync(file) && (!best || lsn > best.lsn)) {
        best = { branch, segment, path: file, flushLsn, safekeeper: node.name, lsn };
      }
    }
    if (!best) return undefined;
    const { lsn: _lsn, ...partial } = best;
    return partial;
  }

  /** Names of the WAL files of `branch` held anywhere: segments (finished or not) and history files. */
  async names(branch: string): Promise<Set<string>> {
    const names = new Set<string>();
    for (const node of this.safekeepers()) {
      const dir = this.dirOf(node, branch);
      for (const file of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
        const name = file.endsWith(PARTIAL) ? file.slice(0, -PARTIAL.length) : file;
        if (isWalFileName(name)) names.add(name);
      }
    }
    if (this.storage) {
      for await (const object of this.storage.list(walObjectPrefix(branch))) {
        const file = walFileOfKey(branch, object.key);
        if (file) names.add(file.name);
      }
    }
    return names;
  }

  /** Where the best local copy of a file is: a finished one, else the fullest unfinished one. */
  private localFile(branch: string, name: string): string | undefined {
    const partials: string[] = [];
    for (const node of this.safekeepers()) {
      const finished = path.join(this.dirOf(node, branch), name);
      if (fs.existsSync(finished)) return finished;
      if (fs.existsSync(finished + PARTIAL)) partials.push(finished + PARTIAL);
    }
    // Only when safekeepers disagree is it worth reading their 16 MB files to see which holds the most.
    if (partials.length < 2) return partials[0];
    return partials.map((file) => ({ file, filled: filledLength(file) })).reduce((a, b) => (b.filled > a.filled ? b : a)).file;
  }

  /** True when a finished copy of a segment exists (on a safekeeper or in storage), not only an unfinished one. */
  async isFinished(branch: string, name: string): Promise<boolean> {
    const local = this.localFile(branch, name);
    if (local) return !local.endsWith(PARTIAL);
    return !!this.storage && !!(await this.storage.head(walObjectKey(branch, name)));
  }

  /** The bytes of a WAL file (`000000010000000000000003`, `00000002.history`), or undefined when nobody has it. */
  async read(branch: string, name: string): Promise<Buffer | undefined> {
    const local = this.localFile(branch, name);
    if (local) return fs.readFileSync(local);
    if (!this.storage) return undefined;
    for (const key of [walObjectKey(branch, name), partialObjectKey(branch, name)]) {
      if (await this.storage.head(key)) return unpackWal(key, await readObject(this.storage, key));
    }
    return undefined;
  }

  /** Put a copy of a WAL file at `target` (hard-linked when it is a finished local segment); false if absent. */
  async copyTo(branch: string, name: string, target: string): Promise<boolean> {
    const local = this.localFile(branch, name);
    if (local && !local.endsWith(PARTIAL)) {
      try {
        fs.linkSync(local, target);
        return true;
      } catch {
        // another filesystem: copy below
      }
    }
    const bytes = await this.read(branch, name);
    if (!bytes) return false;
    fs.writeFileSync(target, bytes);
    return true;
  }
}
