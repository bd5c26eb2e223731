// A decoder of PostgreSQL WAL (versions 14–17), as far as neon needs it: page headers, record headers, CRCs and
// block references (Postgres itself replays WAL, see DESIGN.md). Layouts are those of access/xlogrecord.h and
// access/xlog_internal.h; the checks are those of xlogreader.c (XLogReaderValidatePageHeader,
// ValidXLogRecordHeader, ValidXLogRecord, DecodeXLogRecord). Little-endian WAL (x86-64, arm64) with the default
// XLOG_BLCKSZ and BLCKSZ of 8 kB, both checked against the long page header.
import { formatLsn, type Lsn } from '../core/wal.js';
import { CRC32C_INIT, crc32cFinish, crc32cUpdate } from './crc32c.js';

/** XLOG_BLCKSZ: the WAL page size. */
export const WAL_PAGE_SIZE = 8192;
const PAGE = BigInt(WAL_PAGE_SIZE);
const SHORT_PAGE_HEADER = 24; // MAXALIGN(sizeof(XLogPageHeaderData))
const LONG_PAGE_HEADER = 40; // MAXALIGN(sizeof(XLogLongPageHeaderData))
/** SizeOfXLogRecord; the CRC covers the header up to xl_crc, at offset 20. */
export const RECORD_HEADER = 24;
const XLP_FIRST_IS_CONTRECORD = 0x1;
const XLP_LONG_HEADER = 0x2;
const XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x8;
const XLP_ALL_FLAGS = 0xf;
const MAX_RECORD = 1020 * 1024 * 1024; // XLogRecordMaxSize (16+); 14 and 15 stop at 1 GB anyway
const RM_XLOG_ID = 0;
const XLOG_SWITCH = 0x40;

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

/** RelFileLocator (RelFileNode before 16): tablespace, database and relfilenode numbers. */
export interface RelFileLocator {
  spc: number;
  db: number;
  rel: number;
}

/** A full-page image in a block reference (XLogRecordBlockImageHeader). */
export interface BlockImage {
  /** Bytes stored in WAL (the page without its hole, maybe compressed). */
  length: number;
  holeOffset: number;
  holeLength: number;
  /** BKPIMAGE_APPLY: replay restores the image (otherwise it is only for wal_consistency_checking). */
  apply: boolean;
  compression?: 'pglz' | 'lz4' | 'zstd';
}

/** A block reference (XLogRecordBlockHeader): a page that replaying the record changes. */
export interface BlockRef {
  id: number;
  rel: RelFileLocator;
  /** 0 main, 1 fsm, 2 visibility map, 3 init. */
  fork: number;
  block: number;
  hasImage: boolean;
  hasData: boolean;
  /** BKPBLOCK_WILL_INIT: replay starts the page from zeros. */
  willInit: boolean;
  dataLength: number;
  image?: BlockImage;
}

/** A decoded record. `mainData` is a view into WAL bytes: copy it to keep it. */
export interface WalRecord {
  lsn: Lsn;
  /** End of the record, MAXALIGNed: what Postgres reports as the record's end (e.g. a commit LSN). */
  endLsn: Lsn;
  totalLength: number;
  xid: number;
  prev: Lsn;
  /** xl_info: the high 4 bits belong to the resource manager. */
  info: number;
  rmid: number;
  blocks: BlockRef[];
  mainData: Uint8Array;
  origin?: number;
  toplevelXid?: number;
}

/** Why {@link readRecords} stopped without an error. */
export interface ReadStop {
  /** Where the next record would start. */
  at: Lsn;
  /** `end`: reached options.end; `incomplete`: a record runs past options.end; `end-of-wal`: no more WAL. */
  why: 'end' | 'incomplete' | 'end-of-wal';
  pgVersion?: number;
  systemId?: bigint;
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
const u64 = (b: Uint8Array, i: number) => (BigInt(u32(b, i + 4)) << 32n) | BigInt(u32(b, i));
const align8 = (n: number) => BigInt((n + 7) & ~7);
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

/** Validated pages of a source, one segment in memory at a time. */
class Pages {
  readonly known: PageContext = {};
  private segno = -1n;
  private current?: WalSegment;
  private lastLsn = -1n;
  private last?: { h: PageHeader; data: Uint8Array; off: number };
  constructor(readonly source: WalSource) {}

  get version(): number | undefined {
    return this.known.magic === undefined ? undefined : PAGE_MAGIC[this.known.magic];
  }

  nameOf(lsn: Lsn): string {
    return this.source.name(lsn / BigInt(this.source.segmentSize));
  }

  /** The validated page at `pageLsn`, with its bytes at `data[off]`. */
  page(pageLsn: Lsn): { h: PageHeader; data: Uint8Array; off: number } {
    if (pageLsn === this.lastLsn && this.last) return this.last; // most records share their page with the one before
    const size = BigInt(this.source.segmentSize);
    const segno = pageLsn / size;
    if (segno !== this.segno) {
      const segment = this.source.segment(segno);
      if (!segment) throw new WalDecodeError('segment-missing', pageLsn, this.source.name(segno), 'missing WAL segment');
      this.segno = segno;
      this.current = segment;
      // As xlogreader does, check the long header of every segment entered, wherever reading starts.
      if (pageLsn % size !== 0n) this.header(segno * size, segment.data, 0);
    }
    const data = this.current!.data;
    const off = Number(pageLsn % size);
    this.last = { h: this.header(pageLsn, data, off), data, off };
    this.lastLsn = pageLsn;
    return this.last;
  }

  private header(pageLsn: Lsn, data: Uint8Array, off: number): PageHeader {
    if (off + WAL_PAGE_SIZE > data.length) {
      throw new WalDecodeError('segment-missing', pageLsn, this.current!.name, `segment holds only ${data.length} bytes`);
    }
    return checkPageHeader(data, off, pageLsn, this.source.segmentSize, this.current!.name, this.known);
  }
}

/** The rmgr ids Postgres accepts: built-in 0–21 (XLOG…LOGICALMSG, the same in 14–17), custom 128–255 from 15. */
const validRmgr = (rmid: number, version = 17) => rmid <= 21 || (version >= 15 && rmid >= 128);

/**
 * The first record at or after the page-aligned `pageLsn`, skipping the tail of a record continued from an
 * earlier page (as XLogFindNextRecord does).
 */
export function firstRecordAt(source: WalSource, pageLsn: Lsn): Lsn {
  const pages = new Pages(source);
  for (let p = pageLsn - (pageLsn % PAGE); ; p += PAGE) {
    const { h } = pages.page(p);
    if (!(h.info & XLP_FIRST_IS_CONTRECORD)) return p + BigInt(h.size);
    if (BigInt(h.size) + align8(h.remLen) < PAGE) return p + BigInt(h.size) + align8(h.remLen);
  }
}

/** Options of {@link readRecords}. */
export interface ReadOptions {
  /** Stop before the first record that does not end at or before `end` (e.g. a flush point). */
  end?: Lsn;
  /** LSN of the record before `start`, when known: then the first xl_prev is checked exactly. */
  prev?: Lsn;
}

/**
 * Decode records from `start` (a record start, or a page start whose page begins with a record). With
 * `options.end`, anything wrong before `end` is a {@link WalDecodeError}, even zeros; without it, reading stops at
 * what looks like the end of WAL (a zero record length, a missing segment, a zeroed or recycled page).
 */
export function* readRecords(source: WalSource, start: Lsn, options: ReadOptions = {}): Generator<WalRecord, ReadStop, void> {
  const pages = new Pages(source);
  const end = options.end;
  let pos = start;
  let prev = options.prev;
  const stop = (why: ReadStop['why']): ReadStop => ({ at: pos, why, pgVersion: pages.version, systemId: pages.known.systemId });
  const fail = (reason: WalErrorReason, detail: string) => new WalDecodeError(reason, pos, pages.nameOf(pos), detail);
  const checkHeader = (b: Uint8Array, i: number) => {
    if (!validRmgr(b[i + 17], pages.version)) throw fail('record-rmgr', `invalid resource manager id ${b[i + 17]}`);
    const xlPrev = u64(b, i + 8);
    if (prev === undefined ? xlPrev >= pos : xlPrev !== prev) {
      throw fail(
        'record-prev',
        `record with incorrect prev-link ${formatLsn(xlPrev)}${prev === undefined ? '' : ` (expected ${formatLsn(prev)})`}`,
      );
    }
  };
  try {
    for (;;) {
      if (end !== undefined && pos >= end) return stop('end');
      const pageLsn = pos - (pos % PAGE);
      const page = pages.page(pageLsn);
      let off = Number(pos % PAGE);
      if (off === 0) {
        pos += BigInt(page.h.size);
        off = page.h.size;
      } else if (off < page.h.size) throw fail('record-offset', `record offset ${off} inside the page header`);
      if (page.h.info & XLP_FIRST_IS_CONTRECORD && off === page.h.size)
        throw fail('contrecord-unexpected', 'a record was expected, the page continues one');
      if (end !== undefined && pos >= end) return stop('end');
      const at = page.off + off;
      const totalLength = u32(page.data, at);
      if (totalLength === 0 && end === undefined) return stop('end-of-wal');
      if (totalLength < RECORD_HEADER || totalLength > MAX_RECORD) throw fail('record-length', `invalid record length ${totalLength}`);
      const avail = WAL_PAGE_SIZE - off;
      if (avail >= RECORD_HEADER) checkHeader(page.data, at);
      let record: Uint8Array;
      let next: Lsn;
      if (totalLength <= avail) {
        if (end !== undefined && pos + BigInt(totalLength) > end) return stop('incomplete');
        record = page.data.subarray(at, at + totalLength);
        next = pos + align8(totalLength);
      } else {
        record = new Uint8Array(totalLength);
        record.set(page.data.subarray(at, at + avail));
        let got = avail;
        let p = pageLsn;
        let overwritten = false;
        next = pos;
        while (got < totalLength) {
          p += PAGE;
          if (end !== undefined && p >= end) return stop('incomplete');
          const cont = pages.page(p);
          if (cont.h.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD) {
            // The rest of this record was never written (a crash); WAL went on from this page. Skip it, as Postgres does.
            overwritten = true;
            pos = p;
            break;
          }
          if (!(cont.h.info & XLP_FIRST_IS_CONTRECORD))
            throw fail('contrecord-missing', `the record's continuation page ${formatLsn(p)} has no contrecord flag`);
          if (cont.h.remLen === 0 || cont.h.remLen + got !== totalLength) {
            throw fail('contrecord-length', `continuation length ${cont.h.remLen} on page ${formatLsn(p)}, expected ${totalLength - got}`);
          }
          const n = Math.min(cont.h.remLen, WAL_PAGE_SIZE - cont.h.size);
          if (end !== undefined && p + BigInt(cont.h.size + n) > end) return stop('incomplete');
          const from = cont.off + cont.h.size;
          record.set(cont.data.subarray(from, from + n), got);
          if (got < RECORD_HEADER && got + n >= RECORD_HEADER) checkHeader(record, 0);
          got += n;
          next = p + BigInt(cont.h.size) + align8(n);
        }
        if (overwritten) continue;
      }
      let crc = crc32cUpdate(CRC32C_INIT, record, RECORD_HEADER, totalLength);
      crc = crc32cFinish(crc32cUpdate(crc, record, 0, 20));
      if (crc !== u32(record, 20))
        throw fail('record-crc', `record CRC ${u32(record, 20).toString(16)} does not match its data (${crc.toString(16)})`);
      const body = decodeRecordBody(record, pages.version ?? 17);
      if (typeof body === 'string') throw fail('record-blocks', body);
      const rmid = record[17];
      const info = record[16];
      yield { lsn: pos, endLsn: next, totalLength, xid: u32(record, 4), prev: u64(record, 8), info, rmid, ...body };
      prev = pos;
      pos = next;
      if (rmid === RM_XLOG_ID && (info & 0xf0) === XLOG_SWITCH) {
        // The rest of the segment is unused: the next record starts the next segment.
        const size = BigInt(source.segmentSize);
        pos = ((pos + size - 1n) / size) * size;
      }
    }
  } catch (error) {
    const endOfWal = error instanceof WalDecodeError && ['segment-missing', 'page-magic', 'page-addr'].includes(error.reason);
    if (end === undefined && endOfWal) return stop('end-of-wal');
    throw error;
  }
}

const BLCKSZ = 8192;
const XLR_MAX_BLOCK_ID = 32;
const XLR_BLOCK_ID_DATA_SHORT = 255;
const XLR_BLOCK_ID_DATA_LONG = 254;
const XLR_BLOCK_ID_ORIGIN = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID = 252;
const BKPBLOCK_HAS_IMAGE = 0x10;
const BKPBLOCK_HAS_DATA = 0x20;
const BKPBLOCK_WILL_INIT = 0x40;
const BKPBLOCK_SAME_REL = 0x80;
const BKPIMAGE_HAS_HOLE = 0x01;

/** bimg_info's other bits moved in 15: IS_COMPRESSED 0x02 and APPLY 0x04 became APPLY 0x02 and PGLZ/LZ4/ZSTD 0x04/0x08/0x10. */
function imageFlags(bits: number, version: number): { apply: boolean; compression?: BlockImage['compression'] } {
  if (version < 15) return { apply: (bits & 0x04) !== 0, compression: bits & 0x02 ? 'pglz' : undefined };
  const compression = bits & 0x04 ? 'pglz' : bits & 0x08 ? 'lz4' : bits & 0x10 ? 'zstd' : undefined;
  return { apply: (bits & 0x02) !== 0, compression };
}

/** The fragment headers after the record header (DecodeXLogRecord); a string says what is wrong. */
export function decodeRecordBody(
  record: Uint8Array,
  version: number,
): { blocks: BlockRef[]; mainData: Uint8Array; origin?: number; toplevelXid?: number } | string {
  const total = record.length;
  let p = RECORD_HEADER;
  let dataTotal = 0;
  let mainLength = 0;
  let origin: number | undefined;
  let toplevelXid: number | undefined;
  let lastRel: RelFileLocator | undefined;
  const blocks: BlockRef[] = [];
  const need = (n: number) => total - p - n >= 0;
  while (total - p > dataTotal) {
    if (!need(1)) return 'record too short for its headers';
    const id = record[p++];
    if (id === XLR_BLOCK_ID_DATA_SHORT || id === XLR_BLOCK_ID_DATA_LONG) {
      const size = id === XLR_BLOCK_ID_DATA_SHORT ? 1 : 4;
      if (!need(size)) return 'record too short for its main data header';
      mainLength = size === 1 ? record[p] : u32(record, p);
      p += size;
      dataTotal += mainLength;
      break; // the main data header is always last
    } else if (id === XLR_BLOCK_ID_ORIGIN) {
      if (!need(2)) return 'record too short for its origin';
      origin = u16(record, p);
      p += 2;
    } else if (id === XLR_BLOCK_ID_TOPLEVEL_XID) {
      if (!need(4)) return 'record too short for its top-level xid';
      toplevelXid = u32(record, p);
      p += 4;
    } else if (id <= XLR_MAX_BLOCK_ID) {
      if (blocks.length && id <= blocks[blocks.length - 1].id) return `out-of-order block_id ${id}`;
      if (!need(3)) return 'record too short for a block header';
      const flags = record[p];
      const dataLength = u16(record, p + 1);
      p += 3;
      const hasData = (flags & BKPBLOCK_HAS_DATA) !== 0;
      if (hasData !== dataLength > 0) return `block ${id}: BKPBLOCK_HAS_DATA ${hasData ? 'set' : 'not set'} but data length ${dataLength}`;
      dataTotal += dataLength;
      let image: BlockImage | undefined;
      if (flags & BKPBLOCK_HAS_IMAGE) {
        if (!need(5)) return 'record too short for an image header';
        const length = u16(record, p);
        const holeOffset = u16(record, p + 2);
        const bits = record[p + 4];
        p += 5;
        const { apply, compression } = imageFlags(bits, version);
        const hasHole = (bits & BKPIMAGE_HAS_HOLE) !== 0;
        let holeLength = BLCKSZ - length;
        if (compression) {
          holeLength = 0;
          if (hasHole) {
            if (!need(2)) return 'record too short for a hole length';
            holeLength = u16(record, p);
            p += 2;
          }
        }
        dataTotal += length;
        if (hasHole && (holeOffset === 0 || holeLength === 0 || length === BLCKSZ))
          return `block ${id}: image hole flag set, but hole ${holeOffset}+${holeLength}, length ${length}`;
        if (!hasHole && (holeOffset !== 0 || holeLength !== 0))
          return `block ${id}: image without hole flag, but hole ${holeOffset}+${holeLength}`;
        if (compression && length === BLCKSZ) return `block ${id}: compressed image of length ${length}`;
        image = { length, holeOffset, holeLength, apply, compression };
      }
      if (!(flags & BKPBLOCK_SAME_REL)) {
        if (!need(12)) return 'record too short for a relation';
        lastRel = { spc: u32(record, p), db: u32(record, p + 4), rel: u32(record, p + 8) };
        p += 12;
      } else if (!lastRel) return `block ${id}: BKPBLOCK_SAME_REL set but no previous relation`;
      if (!need(4)) return 'record too short for a block number';
      const block = u32(record, p);
      p += 4;
      blocks.push({
        id,
        rel: lastRel,
        fork: flags & 0x0f,
        block,
        hasImage: !!image,
        hasData,
        willInit: (flags & BKPBLOCK_WILL_INIT) !== 0,
        dataLength,
        image,
      });
    } else return `invalid block_id ${id}`;
  }
  if (total - p !== dataTotal) return `record length ${total} does not match its fragments (${p} bytes of headers, ${dataTotal} of data)`;
  return { blocks, mainData: record.subarray(total - mainLength), origin, toplevelXid };
}
