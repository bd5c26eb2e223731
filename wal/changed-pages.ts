// Which pages WAL changed in an LSN range: the block references of every record (what Neon's pageserver indexes),
// plus the relation-level events that block references do not show (relation files created or truncated, whole
// databases created or dropped). An incremental base image copies the changed blocks over the previous image
// and takes the listed whole relations/databases as changed.
import type { Lsn } from '../core/wal.js';
import { u32, type RecordWalker, type RelFileLocator, type WalRecord, type WalSource } from './records.js';
import { walkWal, walFileSource, type VerifyResult } from './verify.js';

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
  relationEvents(changes, record.lsn, record.rmid, record.info, record.mainData);
}

/** The relation-level events of a record (its rmgr, info and main data), which block references do not show. */
function relationEvents(changes: ChangedPages, lsn: Lsn, rmid: number, info: number, data: Uint8Array): void {
  const kind = info & 0xf0;
  const relAt = (i: number): RelFileLocator => ({ spc: u32(data, i), db: u32(data, i + 4), rel: u32(data, i + 8) });
  if (rmid === RM_SMGR_ID && kind === XLOG_SMGR_CREATE && data.length >= 16) {
    // xl_smgr_create { RelFileLocator rlocator; ForkNumber forkNum; }
    changes.created.push({ lsn, rel: relAt(0), fork: u32(data, 12) });
  } else if (rmid === RM_SMGR_ID && kind === XLOG_SMGR_TRUNCATE && data.length >= 20) {
    // xl_smgr_truncate { BlockNumber blkno; RelFileLocator rlocator; int flags; }: flags HEAP 1, VM 2, FSM 4
    const flags = u32(data, 16);
    const forks = [flags & 1 ? 0 : -1, flags & 4 ? 1 : -1, flags & 2 ? 2 : -1].filter((f) => f >= 0);
    changes.truncated.push({ lsn, rel: relAt(4), block: u32(data, 0), forks });
  } else if (rmid === RM_DBASE_ID && data.length >= 4) {
    // Every xl_dbase_* record of 14–17 starts with the database's OID.
    changes.databases.push({ lsn, db: u32(data, 0), info });
  } else if (info & XLR_SPECIAL_REL_UPDATE) {
    changes.special.push({ lsn, rmid, info });
  }
}

/**
 * {@link addRecord} for the record a walker has just checked, from its scanned block headers: no objects per
 * record, and the fork key is built only when a block's relation fork differs from the previous block's.
 */
function addWalked(changes: ChangedPages, walker: RecordWalker, last: { key: number[]; fork?: ChangedFork }): void {
  changes.records++;
  const scan = walker.scan;
  const where = scan.where;
  const key = last.key;
  for (let i = 0; i < scan.blocks; i++) {
    const spc = where[i * 4];
    const db = where[i * 4 + 1];
    const rel = where[i * 4 + 2];
    const forkNumber = scan.flags[i] & 0x0f;
    let fork = last.fork;
    if (!fork || key[0] !== spc || key[1] !== db || key[2] !== rel || key[3] !== forkNumber) {
      const locator = { spc, db, rel };
      const name = forkKey(locator, forkNumber);
      fork = changes.forks.get(name);
      if (!fork) changes.forks.set(name, (fork = { rel: locator, fork: forkNumber, blocks: new Set() }));
      key[0] = spc;
      key[1] = db;
      key[2] = rel;
      key[3] = forkNumber;
      last.fork = fork;
    }
    fork.blocks.add(where[i * 4 + 3]);
  }
  const rmid = walker.rmid;
  const info = walker.info;
  if (rmid === RM_SMGR_ID || rmid === RM_DBASE_ID || info & XLR_SPECIAL_REL_UPDATE) {
    relationEvents(changes, BigInt(walker.lsn), rmid, info, walker.mainData());
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
  const { changes, result } = await changedPagesThrough(input, options);
  if (result.error) throw result.error;
  return changes;
}

/** What {@link changedPagesThrough} found. */
export interface ChangedThrough {
  changes: ChangedPages;
  /** The walk's verdict on the WAL from `from` to `upTo` (its `error` says where it is damaged). */
  result: VerifyResult;
  /** Where the record at `through` ends; undefined when no record starts there. */
  throughEnd?: Lsn;
}

/**
 * {@link changedPages} in one verifying pass, counting only the records up to and including the one at `through`
 * (the checkpoint an incremental image replays to): the WAL after it, up to `upTo`, is checked but not counted.
 * Damage is returned in `result`, not thrown: the caller may try other copies of the WAL.
 */
export async function changedPagesThrough(
  input: string | string[] | WalSource,
  options: { from: Lsn; upTo: Lsn; timeline?: number; through?: Lsn },
): Promise<ChangedThrough> {
  // The walk keeps no record bytes (relation events copy what they read), so segment buffers can be reused.
  const source =
    typeof input === 'string' || Array.isArray(input) ? walFileSource(input, { timeline: options.timeline, reuse: true }) : input;
  const changes = emptyChangedPages();
  const last = { key: [-1, -1, -1, -1] };
  const through = options.through === undefined ? -1 : Number(options.through);
  let endLsn = -1;
  let throughEnd = -1;
  const result = await walkWal(source, options, (walker) => {
    if (throughEnd >= 0) return; // past `through`: verified, not counted
    addWalked(changes, walker, last);
    endLsn = walker.endLsn;
    if (walker.lsn === through) throughEnd = walker.endLsn;
  });
  if (endLsn >= 0) changes.endLsn = BigInt(endLsn);
  return { changes, result, throughEnd: throughEnd >= 0 ? BigInt(throughEnd) : undefined };
}
