/**
 * WAL-G's storage layout and documents, as WAL-G (github.com/wal-g/wal-g) writes them. Each name cites the
 * source it follows; test/unit/formats-walg-fixture.test.ts checks them against the same sources.
 */
import { NeonError } from '../../core/errors.js';

/** utility/utility.go: BaseBackupPath = "basebackups_" + VersionStr + "/". */
export const BASEBACKUPS = 'basebackups_005/';
/** utility/utility.go: WalPath = "wal_" + VersionStr + "/". */
export const WAL = 'wal_005/';
/** utility/utility.go: SentinelSuffix. */
export const SENTINEL_SUFFIX = '_backup_stop_sentinel.json';
/** utility/utility.go: MetadataFileName. */
export const METADATA = 'metadata.json';
/** internal/databases/postgres/backup.go: FilesMetadataName. */
export const FILES_METADATA = 'files_metadata.json';
/** internal/storage_tar_ball.go: TarPartitionFolderName. */
export const TAR_PARTITIONS = '/tar_partitions/';

/** utility/utility.go BackupNamePrefix "base_" + the WAL segment of the start LSN; deltas add "_D_" + parent's segment (backup_push_handler.go). */
export const backupName = (segment: string, parentSegment?: string) => `base_${segment}${parentSegment ? `_D_${parentSegment}` : ''}`;
/** internal/storage_tar_ball.go: fmt.Sprintf("part_%0.3d.tar", partNumber), numbered from 1 (storage_tar_ball_maker.go). */
export const partName = (n: number) => `part_${String(n).padStart(3, '0')}.tar`;
export const sentinelKey = (name: string) => `${BASEBACKUPS}${name}${SENTINEL_SUFFIX}`;
export const tarKey = (name: string, file: string) => `${BASEBACKUPS}${name}${TAR_PARTITIONS}${file}`;

/**
 * internal/databases/postgres/bundle.go ExcludedFilenames: folders whose contents WAL-G leaves out (the folder
 * itself is kept) and files it skips, matched by base name.
 */
export const EXCLUDED = new Set([
  'log', 'pg_log', 'pg_xlog', 'pg_wal', 'pgsql_tmp', 'postgresql.auto.conf.tmp', 'postmaster.pid', 'postmaster.opts', 'recovery.conf',
  'pg_dynshmem', 'pg_notify', 'pg_replslot', 'pg_serial', 'pg_stat_tmp', 'pg_snapshots', 'pg_subtrans', 'standby.signal',
]);

/** internal/databases/postgres/backup_sentinel_dto.go BackupSentinelDto (the fields neon reads). */
export interface Sentinel {
  LSN: bigint;
  FinishLSN: bigint;
  PgVersion: number;
  SystemIdentifier?: string;
  DeltaFrom?: string;
  DeltaFullName?: string;
  DeltaLSN?: bigint;
  DeltaCount?: number;
  FilesMetadataDisabled?: boolean;
  Version?: number;
  Spec?: unknown;
}

/** internal/backup_file_description.go BackupFileDescription. */
export interface FileDescription {
  IsIncremented: boolean;
  IsSkipped: boolean;
  MTime: string;
  UpdatesCount?: number;
}

/** internal/databases/postgres/backup_sentinel_dto.go FilesMetadataDto. */
export interface FilesMetadata {
  Files?: Record<string, FileDescription>;
  TarFileSets?: Record<string, string[]>;
}

/**
 * JSON with 64-bit integers: LSNs and the system identifier are Go uint64s, past what a JS number holds. Write
 * them as bigint and they come out as bare digits.
 */
export function stringifyU64(value: unknown): string {
  return JSON.stringify(value, (_key, v) => (typeof v === 'bigint' ? `@u64:${v}` : v), 2).replace(/"@u64:(\d+)"/g, '$1');
}

/** Parse JSON keeping the digits of large integers (as strings) for the fields named. */
export function parseSentinel(text: string, where: string): Sentinel {
  let raw: any;
  try {
    // Quote every bare integer of 16+ digits so that JSON.parse keeps it exact.
    raw = JSON.parse(text.replace(/(:\s*)(\d{16,})(\s*[,}\n])/g, '$1"$2"$3'));
  } catch (error) {
    throw new NeonError('bad_backup', `${where} is not valid JSON: ${(error as Error).message}`);
  }
  const big = (v: unknown, field: string, required = true): bigint | undefined => {
    if (v === undefined || v === null) {
      if (required) throw new NeonError('bad_backup', `${where}: ${field} is missing`);
      return undefined;
    }
    return BigInt(v as string | number);
  };
  if (typeof raw.PgVersion !== 'number') throw new NeonError('bad_backup', `${where}: PgVersion is missing`);
  return {
    LSN: big(raw.LSN, 'LSN')!,
    FinishLSN: big(raw.FinishLSN, 'FinishLSN')!,
    PgVersion: raw.PgVersion,
    SystemIdentifier: raw.SystemIdentifier !== undefined && raw.SystemIdentifier !== null ? String(raw.SystemIdentifier) : undefined,
    DeltaFrom: raw.DeltaFrom ?? undefined,
    DeltaFullName: raw.DeltaFullName ?? undefined,
    DeltaLSN: big(raw.DeltaLSN, 'DeltaLSN', false),
    DeltaCount: raw.DeltaCount ?? undefined,
    FilesMetadataDisabled: raw.FilesMetadataDisabled ?? false,
    Version: raw.Version,
    Spec: raw.Spec ?? raw.spec,
  };
}

/** Major version from WAL-G's PgVersion (server_version_num, e.g. 150015 → 15). */
export const majorOf = (pgVersion: number) => (pgVersion >= 100000 ? Math.floor(pgVersion / 10000) : Math.floor(pgVersion / 100));

// ---- increments (internal/databases/postgres/pagefile.go, incremental_page_reader.go) -----------------------

/** IncrementFileHeader: 'w', 'i', format version '1', SignatureMagicNumber 0x55. */
export const INCREMENT_HEADER = Buffer.from(['w'.charCodeAt(0), 'i'.charCodeAt(0), '1'.charCodeAt(0), 0x55]);
export const PAGE_SIZE = 8192;

/**
 * Build an increment: header, file size (u64 LE), count of changed blocks (u32 LE), their numbers (u32 LE each),
 * then the pages in that order (IncrementalPageReader.initialize / WriteDiffMapToHeader).
 */
export function buildIncrement(fileSize: number, pages: Map<number, Buffer>): Buffer {
  const blocks = [...pages.keys()].sort((a, b) => a - b);
  const head = Buffer.alloc(4 + 8 + 4 + 4 * blocks.length);
  INCREMENT_HEADER.copy(head, 0);
  head.writeBigUInt64LE(BigInt(fileSize), 4);
  head.writeUInt32LE(blocks.length, 12);
  blocks.forEach((block, i) => head.writeUInt32LE(block, 16 + 4 * i));
  return Buffer.concat([head, ...blocks.map((b) => pages.get(b)!)]);
}
