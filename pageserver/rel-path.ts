import type { ChangedPages } from '../wal/changed-pages.js';

/** Blocks per relation segment file (RELSEG_SIZE of a default build: 1 GiB files of 8 KiB pages). */
export const RELSEG_BLOCKS = 131072;
const DEFAULTTABLESPACE_OID = 1663;
const GLOBALTABLESPACE_OID = 1664;
const FORKS: Record<string, number> = { '': 0, _fsm: 1, _vm: 2, _init: 3 };
const REL_FILE = /^(?:base\/(\d+)|global)\/(\d+)(_fsm|_vm|_init)?(?:\.(\d+))?$/;

/** A relation segment file of a data directory: which fork of which relation, and which 1 GiB piece of it. */
export interface RelFile {
  spc: number;
  db: number;
  rel: number;
  fork: number;
  segno: number;
}

/**
 * The relation a data-directory path (`base/5/16384_vm.2`, `global/1262`) holds, or undefined for other files
 * (pg_xact, pg_control, …). Tablespaces other than the default and global ones are not in images.
 */
export function parseRelPath(file: string): RelFile | undefined {
  const match = REL_FILE.exec(file);
  if (!match) return undefined;
  const global = match[1] === undefined;
  return {
    spc: global ? GLOBALTABLESPACE_OID : DEFAULTTABLESPACE_OID,
    db: global ? 0 : Number(match[1]),
    rel: Number(match[2]),
    fork: FORKS[match[3] ?? ''],
    segno: Number(match[4] ?? 0),
  };
}

/** Key of a relation (all forks), as `spc/db/rel`. */
export const relKey = (r: { spc: number; db: number; rel: number }) => `${r.spc}/${r.db}/${r.rel}`;

/** The relations the WAL touched in any way: block references, creation, truncation. */
export function touchedRelations(changes: ChangedPages): Set<string> {
  const touched = new Set<string>();
  for (const fork of changes.forks.values()) touched.add(relKey(fork.rel));
  for (const event of [...changes.created, ...changes.truncated]) touched.add(relKey(event.rel));
  return touched;
}

/**
 * Page numbers of file `rel` (local to its segment file) that must be read for a new image: the changed blocks
 * within the file, and every page past the previous image's length (`oldPages`) up to the new one.
 */
export function pagesToRead(rel: RelFile, changes: ChangedPages, oldPages: number, newPages: number): number[] {
  const first = rel.segno * RELSEG_BLOCKS;
  const pages = new Set<number>();
  const blocks = changes.forks.get(`${rel.spc}/${rel.db}/${rel.rel}/${rel.fork}`)?.blocks;
  for (const block of blocks ?? []) {
    const local = block - first;
    if (local >= 0 && local < newPages) pages.add(local);
  }
  for (let page = oldPages; page < newPages; page++) pages.add(page);
  return [...pages].sort((a, b) => a - b);
}
