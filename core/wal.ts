import path from 'node:path';
import { promisify } from 'node:util';
import { gunzip, gzip } from 'node:zlib';
import { NeonError } from './errors.js';

// The WAL contract shared by every part that handles WAL, plugins included: positions (LSNs), segment file
// names, and how WAL is keyed in a storage.
//
// WAL positions (LSNs) and segment file names. LSNs are bigints: they are 64-bit and a cluster that went through
// pg_resetwal can sit far above 2^53.

/** A WAL position. */
export type Lsn = bigint;

/** Postgres' default WAL segment size; the real one comes from `SHOW wal_segment_size`. */
export const DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024;

/** Parse `16/B374D848`. */
export function parseLsn(text: string): Lsn {
  const match = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text.trim());
  if (!match) throw new Error(`"${text}" is not an LSN (expected something like 0/16B3748)`);
  return (BigInt('0x' + match[1]) << 32n) | BigInt('0x' + match[2]);
}

/** Format as Postgres does: `16/B374D848`. */
export function formatLsn(lsn: Lsn): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** Number of the segment holding `lsn`. */
export function segmentOf(lsn: Lsn, segmentSize: number): bigint {
  return lsn / BigInt(segmentSize);
}

/** First LSN of segment `segno`. */
export function segmentStart(segno: bigint, segmentSize: number): Lsn {
  return segno * BigInt(segmentSize);
}

const hex8 = (value: bigint | number) => value.toString(16).toUpperCase().padStart(8, '0');

/** File name of a segment, e.g. `000000010000000000000003` (timeline, then the segment number in two halves). */
export function segmentName(timeline: number, segno: bigint, segmentSize: number): string {
  const perId = 0x100000000n / BigInt(segmentSize);
  return hex8(timeline) + hex8(segno / perId) + hex8(segno % perId);
}

/** Timeline and segment number of a segment file name; undefined for other names. */
export function parseSegmentName(name: string, segmentSize: number): { timeline: number; segno: bigint } | undefined {
  const match = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$/.exec(name);
  if (!match) return undefined;
  const perId = 0x100000000n / BigInt(segmentSize);
  return { timeline: parseInt(match[1], 16), segno: BigInt('0x' + match[2]) * perId + BigInt('0x' + match[3]) };
}

/** Name of a timeline history file: `00000002.history`. */
export function historyFileName(timeline: number): string {
  return `${hex8(timeline)}.history`;
}

/** One line of a timeline history file: timeline `timeline` ended at `switchpoint`. */
export interface TimelineSwitch {
  timeline: number;
  switchpoint: Lsn;
}

/** Parse a timeline history file (`1\t0/3000158\tno recovery target specified`). */
export function parseHistory(text: string): TimelineSwitch[] {
  const switches: TimelineSwitch[] = [];
  for (const line of text.split('\n')) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 2 || line.trim().startsWith('#')) continue;
    switches.push({ timeline: Number(fields[0]), switchpoint: parseLsn(fields[1]) });
  }
  return switches;
}

/** Microseconds since 2000-01-01, the clock of the replication protocol. */
export function pgNow(): bigint {
  return BigInt(Date.now() - 946_684_800_000) * 1000n;
}


// How WAL is laid out in a storage_dest: one object per segment, keyed by branch and segment name, gzip
// compressed. gzip's trailer holds the CRC-32 and length of the segment, so every read verifies the bytes:
// a flipped byte anywhere fails the decompression.

const gzipAsync = promisify(gzip);
const gunzipAsync = promisify(gunzip);

/** Key of a finished segment (or history file) of a branch: `wal/main/000000010000000000000003.gz`. */
export function walObjectKey(branch: string, fileName: string): string {
  return `${walObjectPrefix(branch)}${fileName}.gz`;
}

/** Key of the newest unfinished segment of a branch, replaced as it grows. */
export function partialObjectKey(branch: string, segmentName: string): string {
  return `${walObjectPrefix(branch)}${segmentName}${PARTIAL_SUFFIX}.gz`;
}

/** Compress a segment for upload (level 1: WAL compresses well even so, and offload must keep up). */
export function packWal(data: Buffer): Promise<Buffer> {
  return gzipAsync(data, { level: 1 });
}

/** Decompress and verify a WAL object; a damaged one is a `corrupt` error naming the key. */
export async function unpackWal(key: string, packed: Buffer): Promise<Buffer> {
  try {
    return await gunzipAsync(packed);
  } catch (error) {
    throw new NeonError('corrupt', `WAL object ${key} is corrupt (${(error as Error).message})`, { status: 500 });
  }
}

/** Suffix of a segment a safekeeper is still writing (the rest of the file is zeros). */
export const PARTIAL_SUFFIX = '.partial';

const WAL_FILE_NAME = /^(?:[0-9A-F]{24}|[0-9A-F]{8}\.history)$/;

/** True for a segment (`000000010000000000000003`) or timeline history file (`00000002.history`) name. */
export function isWalFileName(name: string): boolean {
  return WAL_FILE_NAME.test(name);
}

/** Where a safekeeper keeps a branch's WAL: `<safekeeper folder>/wal/<branch>/<segment>[.partial]`. */
export function safekeeperWalDir(safekeeperDir: string, branch: string): string {
  return path.join(safekeeperDir, 'wal', branch);
}

/** The prefix of every WAL object of a branch in a storage. */
export function walObjectPrefix(branch: string): string {
  return `wal/${branch}/`;
}

/** The WAL file an object key of `branch` holds, and whether it is the unfinished copy; undefined for other keys. */
export function walFileOfKey(branch: string, key: string): { name: string; partial: boolean } | undefined {
  const prefix = walObjectPrefix(branch);
  if (!key.startsWith(prefix)) return undefined;
  const match = /^(.+?)(\.partial)?\.gz$/.exec(key.slice(prefix.length));
  if (!match || !isWalFileName(match[1])) return undefined;
  return { name: match[1], partial: !!match[2] };
}
