import fs from 'node:fs';
import path from 'node:path';
import { parseLsn, segmentName, segmentOf } from '../replication/lsn.js';
import type { SafekeeperNode } from './safekeepers.js';
import { readObject, type Storage } from './storage.js';
import { partialObjectKey, unpackWal, walObjectKey } from './wal-layout.js';

/** The newest unfinished segment of a branch, on the safekeeper that has the most of it. */
export interface PartialSegment {
  branch: string;
  segment: string;
  path: string;
  /** How far its bytes are durable (the rest of the file is zeros). */
  flushLsn: string;
  safekeeper: string;
}

/**
 * WAL by file name, wherever it is: on a safekeeper's disk (finished segments, history files and the newest
 * unfinished segment), else in storage_dest (offloaded, verified on read). This is what recovery's
 * restore_command is served from.
 */
export class WalStore {
  constructor(
    private readonly safekeepers: () => SafekeeperNode[],
    private readonly storage?: Storage,
  ) {}

  private segmentSize(node: SafekeeperNode): number | undefined {
    try {
      return (JSON.parse(fs.readFileSync(path.join(node.dir, 'system.json'), 'utf8')) as { segmentSize: number }).segmentSize;
    } catch {
      return undefined;
    }
  }

  /** The newest unfinished segment of `branch`, from the safekeeper that flushed the most. */
  partial(branch: string): PartialSegment | undefined {
    let best: (PartialSegment & { lsn: bigint }) | undefined;
    for (const node of this.safekeepers()) {
      const { flushLsn, timeline } = node.lastStatus;
      const size = this.segmentSize(node);
      if (!flushLsn || !timeline || !size) continue;
      const lsn = parseLsn(flushLsn);
      const segment = segmentName(timeline, segmentOf(lsn, size), size);
      const file = path.join(node.dir, 'wal', branch, `${segment}.partial`);
      if (fs.existsSync(file) && (!best || lsn > best.lsn)) {
        best = { branch, segment, path: file, flushLsn, safekeeper: node.name, lsn };
      }
    }
    if (!best) return undefined;
    const { lsn: _lsn, ...partial } = best;
    return partial;
  }

  /** The bytes of a WAL file (`000000010000000000000003`, `00000002.history`), or undefined when nobody has it. */
  async read(branch: string, fileName: string): Promise<Buffer | undefined> {
    const nodes = [...this.safekeepers()].sort((a, b) => flushOf(b) - flushOf(a));
    for (const node of nodes) {
      const file = path.join(node.dir, 'wal', branch, fileName);
      if (fs.existsSync(file)) return fs.readFileSync(file);
    }
    const partial = this.partial(branch);
    if (partial?.segment === fileName) return fs.readFileSync(partial.path);
    if (!this.storage) return undefined;
    for (const key of [walObjectKey(branch, fileName), partialObjectKey(branch, fileName)]) {
      if (await this.storage.head(key)) return unpackWal(key, await readObject(this.storage, key));
    }
    return undefined;
  }
}

function flushOf(node: SafekeeperNode): number {
  const lsn = node.lastStatus.flushLsn;
  return lsn ? Number(parseLsn(lsn)) : -1;
}
