import fs from 'node:fs';
import { NeonError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fs-atomic.js';
import { parseLsn } from '../core/wal.js';
import type { WalSpan } from './recovery.js';

/** A line of history. `main` has no parent; every other branch forks from its parent at `forkLsn`. */
export interface Branch {
  name: string;
  parent: string | null;
  forkLsn: string | null;
  /** A fork at a time: its LSN is known once a compute has been made there (then it is set). */
  forkTime?: string;
  createdAt: string;
  /** Where its WAL ends, once no compute writes on it any more (a checkout left it). */
  tipLsn?: string;
  /** The automatic snapshot that marks that end: checking it out continues this branch. */
  leftAt?: string;
}

/** A named point in history: no data is copied to make one. */
export interface Snapshot {
  name: string;
  branch: string;
  lsn: string;
  /** The Postgres timeline the branch was on at that point. */
  timeline: number;
  createdAt: string;
  /** Made by neon (the state left behind by a checkout), not by the user. */
  auto: boolean;
}

interface HistoryFile {
  branches: Record<string, Branch>;
  snapshots: Record<string, Snapshot>;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** Check a branch or snapshot name: letters, digits, `.`, `_`, `-`, at most 63 characters, no path characters. */
export function checkName(kind: 'branch' | 'snapshot' | 'compute', name: unknown): string {
  if (typeof name !== 'string' || !NAME.test(name) || name.includes('..')) {
    throw new NeonError(
      `bad_${kind}_name`,
      `invalid ${kind} name ${JSON.stringify(name)}: use 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit`,
    );
  }
  return name;
}

/** The branches and snapshots of a repository (`pageserver/history.json`), saved atomically on every change. */
export class History {
  private data: HistoryFile;

  constructor(private readonly file: string) {
    this.data = this.load();
  }

  // Null-prototype maps: a name such as `constructor` or `toString` is looked up among the branches and
  // snapshots only, never found on Object.prototype.
  private load(): HistoryFile {
    const data = fs.existsSync(this.file) ? (JSON.parse(fs.readFileSync(this.file, 'utf8')) as HistoryFile) : undefined;
    return {
      branches: Object.assign(Object.create(null), data?.branches) as Record<string, Branch>,
      snapshots: Object.assign(Object.create(null), data?.snapshots) as Record<string, Snapshot>,
    };
  }

  /** Read the file again (after it was replaced, e.g. pulled from storage). */
  reload(): void {
    this.data = this.load();
  }

  private save(): Promise<void> {
    return writeFileAtomic(this.file, JSON.stringify(this.data, null, 2) + '\n');
  }

  branches(): Branch[] {
    return Object.values(this.data.branches);
  }

  branch(name: string): Branch {
    const found = this.hasBranch(name) ? this.data.branches[name] : undefined;
    if (!found) throw new NeonError('branch_not_found', `no branch named "${name}" (see \`neon branch list\`)`, { status: 404 });
    return found;
  }

  hasBranch(name: string): boolean {
    return Object.hasOwn(this.data.branches, name);
  }

  async addBranch(branch: Branch): Promise<Branch> {
    checkName('branch', branch.name);
    if (this.hasBranch(branch.name))
      throw new NeonError('branch_exists', `a branch named "${branch.name}" already exists`, { status: 409 });
    this.data.branches[branch.name] = branch;
    await this.save();
    return branch;
  }

  /** Change a branch's record (its tip when left, …). */
  async updateBranch(name: string, change: Partial<Omit<Branch, 'name'>>): Promise<Branch> {
    const updated = { ...this.branch(name), ...change };
    this.data.branches[name] = updated;
    await this.save();
    return updated;
  }

  async deleteBranch(name: string): Promise<void> {
    this.branch(name);
    delete this.data.branches[name];
    await this.save();
  }

  snapshots(): Snapshot[] {
    return Object.values(this.data.snapshots).sort((a, b) => (a.createdAt < b.createdAt ? -1 : 1));
  }

  snapshot(name: string): Snapshot {
    const found = this.hasSnapshot(name) ? this.data.snapshots[name] : undefined;
    if (!found) throw new NeonError('snapshot_not_found', `no snapshot named "${name}" (see \`neon snapshot list\`)`, { status: 404 });
    return found;
  }

  hasSnapshot(name: string): boolean {
    return Object.hasOwn(this.data.snapshots, name);
  }

  async addSnapshot(snapshot: Snapshot): Promise<Snapshot> {
    checkName('snapshot', snapshot.name);
    if (this.hasSnapshot(snapshot.name)) {
      throw new NeonError('snapshot_exists', `a snapshot named "${snapshot.name}" already exists`, { status: 409 });
    }
    this.branch(snapshot.branch);
    this.data.snapshots[snapshot.name] = snapshot;
    await this.save();
    return snapshot;
  }

  async deleteSnapshot(name: string): Promise<void> {
    this.snapshot(name);
    delete this.data.snapshots[name];
    await this.save();
  }

  /**
   * Which branch serves which part of `name`'s history: its ancestors up to each fork point, then itself. A
   * branch's WAL before its fork point lives with its parent.
   */
  chain(name: string): WalSpan[] {
    const lineage: Branch[] = [];
    for (let branch: Branch | undefined = this.branch(name); branch; branch = branch.parent ? this.branch(branch.parent) : undefined) {
      lineage.unshift(branch);
    }
    return lineage.map((branch, i) => {
      const next = lineage[i + 1];
      return {
        branch: branch.name,
        from: branch.forkLsn ? parseLsn(branch.forkLsn) : 0n,
        to: next?.forkLsn ? parseLsn(next.forkLsn) : undefined,
      };
    });
  }
}
