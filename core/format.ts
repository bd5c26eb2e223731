import type { Storage } from './storage.js';

/** What the format bail hook is asked for (`--snapshot_format`). */
export interface FormatRequest {
  format: string;
}

/**
 * A backup format: the code that packs a data directory into a storage and unpacks it again (plain pgdata,
 * basebackup tar, WAL-G layout, …). The storage API is the same for all formats; only the packing differs.
 */
export interface BackupFormat {
  readonly name: string;
  /** Write the (stopped or consistent) data directory `dataDir` into `storage`. */
  exportTo?(dataDir: string, storage: Storage): Promise<void>;
  /** Fill the empty folder `dataDir` from what `storage` holds. */
  importFrom?(storage: Storage, dataDir: string): Promise<void>;
}
