// Which pages WAL changed in an LSN range: the block references of every record (what Neon's pageserver indexes),
// plus the relation-level events that block references do not show (relation files created or truncated, whole
// databases created or dropped). An incremental base image copies the changed blocks over the previous image
// and takes the listed whole relations/databases as changed.
import type { Lsn } from '../core/wal.js';
import { u32, type RelFileLocator, type WalRecord, type WalSource } from './records.js';
import { verifyWal, walFileSource } from './verify.js';

const RM_SMGR_ID = 2;
const RM_DBASE_ID = 4;
const XLOG_SMGR_CREATE = 0x10;
const XLOG_SMGR_TRUNCATE = 0x20;
const XLR_SPECIAL_REL_UPDATE = 0x01;

/** Fork numbers: main, free space map, visibility map, init. */
export const FORK_NAMES = ['main', 'fsm', 'vm', 'init'] as const;

/** The changed blocks of one relation fork. */
export interface ChangedFork {
  rel: RelFileLocator;
  fork: number;
  blocks: Set<number>;
}

/** What changed between two LSNs. */
export interface ChangedPages {
  /** Keyed `spc/db/rel/fork` (see {@link forkKey}). */
  forks: Map<string, ChangedFork>;
  /** XLOG_SMGR_CREATE: a relation fork file was created (empty). */
  created: { lsn: Lsn; rel: RelFileLocator; fork: number }[];
  /** XLOG_SMGR_TRUNCATE: relation cut to `block` heap blocks; `forks` are those truncated (main, fsm, vm). */
  truncated: { lsn: Lsn; rel: RelFileLocator; block: number; forks: number[] }[];
  /** Records of the database rmgr (CREATE DATABASE copies a template's files without block references; DROP removes them). */
  databases: { lsn: Lsn; db: number; info: number }[];
  /** Other records flagged XLR_SPECIAL_REL_UPDATE (they change relation files beyond their block references). */
  special: { lsn: Lsn; rmid: number; info: number }[];
  records: number;
  /** End of the last record taken into account. */
  endLsn?: Lsn;
}

export const forkKey = (rel: RelFileLocator, fork: number) => `${rel.spc}/${rel.db}/${rel.rel}/${fork}`;

/** An empty {@link ChangedPages}, to feed with {@link addRecord}. */
export function emptyChangedPages(): ChangedPages {
  return { forks: new Map(), created: [], truncated: [], databases: [], special: [], records: 0 };
}

/** Account for one record. */
export function addRecord(changes: ChangedPages, record: WalRecord): void {
  changes.records++;
  changes.endLsn = record.endLsn;
  for (const ref of record.blocks) {
    const key = forkKey(ref.rel, ref.fork);
    let fork = changes.forks.get(key);
    if (!fork) changes.forks.set(key, (fork = { rel: ref.rel, fork: ref.fork, blocks: new Set() }));
    fork.blocks.add(ref.block);
  }
  const kind = record.info & 0xf0;
  const data = record.mainData;
  const relAt = (i: number): RelFileLocator => ({ spc: u32(data, i), db: u32(data, i + 4), rel: u32(data, i + 8) });
  if (record.rmid === RM_SMGR_ID && kind === XLOG_SMGR_CREATE && data.length >= 16) {
    // xl_smgr_create { RelFileLocator rlocator; ForkNumber forkNum; }
    changes.created.push({ lsn: record.lsn, rel: relAt(0), fork: u32(data, 12) });
  } else if (record.rmid === RM_SMGR_ID && kind === XLOG_SMGR_TRUNCATE && data.length >= 20) {
    // xl_smgr_truncate { BlockNumber blkno; RelFileLocator rlocator; int flags; }: flags HEAP 1, VM 2, FSM 4
    const flags = u32(data, 16);
    const forks = [flags & 1 ? 0 : -1, flags & 4 ? 1 : -1, flags & 2 ? 2 : -1].filter((f) => f >= 0);
    changes.truncated.push({ lsn: record.lsn, rel: relAt(4), block: u32(data, 0), forks });
  } else if (record.rmid === RM_DBASE_ID && data.length >= 4) {
    // Every xl_dbase_* record of 14–17 starts with the database's OID.
    changes.databases.push({ lsn: record.lsn, db: u32(data, 0), info: record.info });
  } else if (record.info & XLR_SPECIAL_REL_UPDATE) {
    changes.special.push({ lsn: record.lsn, rmid: record.rmid, info: record.info });
  }
}

/** Changed pages of already decoded records. */
export function collectChangedPages(records: Iterable<WalRecord>): ChangedPages {
  const changes = emptyChangedPages();
  for (const record of records) addRecord(changes, record);
  return changes;
}

/**
 * Changed pages from the record at `from` (a record start, e.g. a base image's LSN) to the flush point `upTo`,
 * verifying the WAL on the way: damaged WAL is an error, never a silently short list.
 */
export async function changedPages(
  input: string | string[] | WalSource,
  options: { from: Lsn; upTo: Lsn; timeline?: number },
): Promise<ChangedPages> {
  const source = typeof input === 'string' || Array.isArray(input) ? walFileSource(input, { timeline: options.timeline }) : input;
  const changes = emptyChangedPages();
  const result = await verifyWal(source, { ...options, onRecord: (record) => addRecord(changes, record) });
  if (result.error) throw result.error;
  return changes;
}
