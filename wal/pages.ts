// WAL pages: the page header checks of xlogreader.c (XLogReaderValidatePageHeader) and a reader of validated
// pages over a source of segments. Split from ./records.ts, which decodes the records these pages carry.
import { formatLsn, type Lsn } from '../core/wal.js';

/** XLOG_BLCKSZ: the WAL page size. */
export const WAL_PAGE_SIZE = 8192;
export const PAGE = BigInt(WAL_PAGE_SIZE);
const SHORT_PAGE_HEADER = 24; // MAXALIGN(sizeof(XLogPageHeaderData))
const LONG_PAGE_HEADER = 40; // MAXALIGN(sizeof(XLogLongPageHeaderData))
export const XLP_FIRST_IS_CONTRECORD = 0x1;
const XLP_LONG_HEADER = 0x2;
export const XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x8;
const XLP_ALL_FLAGS = 0xf;

/** XLOG_PAGE_MAGIC of each supported major version (xlog_internal.h). */
export const PAGE_MAGIC: Readonly<Record<number, number>> = { 0xd10d: 14, 0xd110: 15, 0xd113: 16, 0xd116: 17 };

/** What was wrong at the first damaged place. `page-*` reasons are page header errors. */
export type WalErrorReason =
  | 'segment-missing'
  | 'page-magic'
  | 'page-info'
  | 'page-addr'
  | 'page-long-header'
  | 'page-timeline'
  | 'record-offset'
  | 'record-length'
  | 'record-rmgr'
  | 'record-prev'
  | 'record-crc'
  | 'record-blocks'
  | 'contrecord-unexpected'
  | 'contrecord-missing'
  | 'contrecord-length';

export class WalDecodeError extends Error {
  constructor(
    readonly reason: WalErrorReason,
    /** The record (or, for page errors, the page) where it went wrong. */
    readonly lsn: Lsn,
    /** File name of the segment holding `lsn`. */
    readonly segment: string,
    detail: string,
  ) {
    super(`${detail} at ${formatLsn(lsn)} in WAL segment ${segment}`);
    this.name = 'WalDecodeError';
  }
}

/** One segment's bytes. A `.partial` file may be shorter than the segment size: missing bytes read as zeros. */
export interface WalSegment {
  name: string;
  data: Uint8Array;
}

/** Where segments come from (see `walFileSource` in ./verify.ts for files and folders). */
export interface WalSource {
  segmentSize: number;
  segment(segno: bigint): WalSegment | undefined;
  /** Name of segment `segno`, present or not (for messages). */
  name(segno: bigint): string;
}

/** Page header fields (XLogPageHeaderData, and XLogLongPageHeaderData's on a segment's first page). */
export interface PageHeader {
  magic: number;
  info: number;
  tli: number;
  pageAddr: Lsn;
  remLen: number;
  size: number;
  systemId?: bigint;
  segmentSize?: number;
  blockSize?: number;
}

/** What earlier pages established; {@link checkPageHeader} fills it in. */
export interface PageContext {
  magic?: number;
  systemId?: bigint;
  tli?: number;
  lastPage?: Lsn;
}

export const u16 = (b: Uint8Array, i: number) => b[i] | (b[i + 1] << 8);
export const u32 = (b: Uint8Array, i: number) => (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16)) + b[i + 3] * 0x1000000;
export const u64 = (b: Uint8Array, i: number) => (BigInt(u32(b, i + 4)) << 32n) | BigInt(u32(b, i));
export const align8 = (n: number) => BigInt((n + 7) & ~7);
const hex4 = (n: number) => n.toString(16).toUpperCase().padStart(4, '0');

/** Validate the header of the WAL page at `pageLsn` whose bytes start at `bytes[offset]`, as Postgres does. */
export function checkPageHeader(
  bytes: Uint8Array,
  offset: number,
  pageLsn: Lsn,
  segmentSize: number,
  segment: string,
  known: PageContext = {},
): PageHeader {
  const fail = (reason: WalErrorReason, detail: string) => new WalDecodeError(reason, pageLsn, segment, detail);
  const info = u16(bytes, offset + 2);
  const header: PageHeader = {
    magic: u16(bytes, offset),
    info,
    tli: u32(bytes, offset + 4),
    pageAddr: u64(bytes, offset + 8),
    remLen: u32(bytes, offset + 16),
    size: info & XLP_LONG_HEADER ? LONG_PAGE_HEADER : SHORT_PAGE_HEADER,
  };
  if (!PAGE_MAGIC[header.magic]) throw fail('page-magic', `invalid page magic ${hex4(header.magic)} (Postgres 14–17 expected)`);
  if (known.magic !== undefined && header.magic !== known.magic)
    throw fail('page-magic', `page magic ${hex4(header.magic)} after ${hex4(known.magic)}`);
  if (info & ~XLP_ALL_FLAGS) throw fail('page-info', `invalid page info bits ${hex4(info)}`);
  if (info & XLP_LONG_HEADER) {
    header.systemId = u64(bytes, offset + 24);
    header.segmentSize = u32(bytes, offset + 32);
    header.blockSize = u32(bytes, offset + 36);
    if (known.systemId !== undefined && header.systemId !== known.systemId) {
      throw fail('page-long-header', `WAL from another database system (${header.systemId}, expected ${known.systemId})`);
    }
    if (header.segmentSize !== segmentSize)
      throw fail('page-long-header', `segment size ${header.segmentSize} in the page header, expected ${segmentSize}`);
    if (header.blockSize !== WAL_PAGE_SIZE)
      throw fail('page-long-header', `WAL block size ${header.blockSize}, only ${WAL_PAGE_SIZE} is supported`);
    known.systemId = header.systemId;
  } else if (pageLsn % BigInt(segmentSize) === 0n) {
    throw fail('page-info', `the first page of a segment has no long header (info ${hex4(info)})`);
  }
  if (header.pageAddr !== pageLsn) throw fail('page-addr', `unexpected page address ${formatLsn(header.pageAddr)}`);
  if (known.lastPage === undefined || pageLsn > known.lastPage) {
    if (known.tli !== undefined && header.tli < known.tli)
      throw fail('page-timeline', `out-of-sequence timeline ${header.tli} (after ${known.tli})`);
    known.lastPage = pageLsn;
    known.tli = header.tli;
  }
  known.magic = header.magic;
  return header;
}

const TWO32 = 0x100000000;

/**
 * Validated pages of a source, one segment in memory at a time. Positions are plain numbers (exact below 2^53,
 * 8 PiB of WAL): BigInt arithmetic per record was most of the decoder's time. After {@link page}, the fields
 * `info`, `size`, `remLen`, `data` and `off` describe the page.
 */
export class Pages {
  readonly known: PageContext = {};
  private segno = -1;
  private current?: WalSegment;
  private lastLsn = -1;
  /** known.tli and known.lastPage as numbers (-1: not yet), kept here on the fast path. */
  tli = -1;
  lastPage = -1;
  readonly segmentSize: number;
  /** Major version of the WAL read so far (0: none yet). */
  pgVersion = 0;
  info = 0;
  size = 0;
  remLen = 0;
  data: Uint8Array = new Uint8Array(0);
  off = 0;
  constructor(readonly source: WalSource) {
    this.segmentSize = source.segmentSize;
  }

  get version(): number | undefined {
    return this.known.magic === undefined ? undefined : PAGE_MAGIC[this.known.magic];
  }

  nameOf(lsn: Lsn | number): string {
    return this.source.name(BigInt(Math.floor(Number(lsn) / this.segmentSize)));
  }

  /** Validate the page at `pageLsn` (a multiple of {@link WAL_PAGE_SIZE}) and describe it in this object's fields. */
  page(pageLsn: number): void {
    if (pageLsn === this.lastLsn) return; // most records share their page with the one before
    const size = this.segmentSize;
    const segno = Math.floor(pageLsn / size);
    if (segno !== this.segno) {
      const segment = this.source.segment(BigInt(segno));
      if (!segment) throw new WalDecodeError('segment-missing', BigInt(pageLsn), this.source.name(BigInt(segno)), 'missing WAL segment');
      this.segno = segno;
      this.current = segment;
      this.lastLsn = -1;
      // As xlogreader does, check the long header of every segment entered, wherever reading starts.
      if (pageLsn % size !== 0) this.header(segno * size, segment.data, 0);
    }
    const data = this.current!.data;
    const off = pageLsn % size;
    this.header(pageLsn, data, off);
    this.lastLsn = pageLsn;
  }

  private header(pageLsn: number, data: Uint8Array, off: number): void {
    if (off + WAL_PAGE_SIZE > data.length) {
      throw new WalDecodeError('segment-missing', BigInt(pageLsn), this.current!.name, `segment holds only ${data.length} bytes`);
    }
    const info = data[off + 2] | (data[off + 3] << 8);
    const tli = u32(data, off + 4);
    // The common page (short header, as before, in order): checked here; anything else, and every error, by checkPageHeader.
    if (
      off !== 0 &&
      (info & ~(XLP_ALL_FLAGS & ~XLP_LONG_HEADER)) === 0 &&
      (data[off] | (data[off + 1] << 8)) === this.known.magic &&
      u32(data, off + 8) === pageLsn % TWO32 &&
      u32(data, off + 12) === Math.floor(pageLsn / TWO32) &&
      (pageLsn <= this.lastPage || tli >= this.tli)
    ) {
      if (pageLsn > this.lastPage) {
        this.lastPage = pageLsn;
        this.tli = tli;
      }
      this.data = data;
      this.off = off;
      this.info = info;
      this.size = SHORT_PAGE_HEADER;
      this.remLen = u32(data, off + 16);
      return;
    }
    const known = this.known;
    known.tli = this.tli < 0 ? undefined : this.tli;
    known.lastPage = this.lastPage < 0 ? undefined : BigInt(this.lastPage);
    const h = checkPageHeader(data, off, BigInt(pageLsn), this.segmentSize, this.current!.name, known);
    this.tli = known.tli ?? -1;
    this.lastPage = known.lastPage === undefined ? -1 : Number(known.lastPage);
    this.pgVersion = PAGE_MAGIC[h.magic];
    this.data = data;
    this.off = off;
    this.info = h.info;
    this.size = h.size;
    this.remLen = h.remLen;
  }
}
