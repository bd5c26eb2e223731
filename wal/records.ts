// A decoder of PostgreSQL WAL (versions 14–17), as far as neon needs it: page headers, record headers, CRCs and
// block references (Postgres itself replays WAL, see DESIGN.md). Layouts are those of access/xlogrecord.h and
// access/xlog_internal.h; the checks are those of xlogreader.c (XLogReaderValidatePageHeader,
// ValidXLogRecordHeader, ValidXLogRecord, DecodeXLogRecord). Little-endian WAL (x86-64, arm64) with the default
// XLOG_BLCKSZ and BLCKSZ of 8 kB, both checked against the long page header.
import { formatLsn, type Lsn } from '../core/wal.js';
import { CRC32C_INIT, crc32cFinish, crc32cUpdate } from './crc32c.js';
import type { SegmentVerdict } from './verdicts.js';
import { blockRefs, BodyScan, RECORD_HEADER, scanRecordBody, type BlockRef } from './blocks.js';
import {
  Pages,
  u32,
  u64,
  WAL_PAGE_SIZE,
  WalDecodeError,
  XLP_FIRST_IS_CONTRECORD,
  XLP_FIRST_IS_OVERWRITE_CONTRECORD,
  type WalErrorReason,
  type WalSource,
} from './pages.js';

// The page and block layers live in their own files; their API is re-exported here, where callers look for it.
export * from './pages.js';
export * from './blocks.js';

const MAX_RECORD = 1020 * 1024 * 1024; // XLogRecordMaxSize (16+); 14 and 15 stop at 1 GB anyway
const RM_XLOG_ID = 0;
const XLOG_SWITCH = 0x40;

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

/** The rmgr ids Postgres accepts: built-in 0–21 (XLOG…LOGICALMSG, the same in 14–17), custom 128–255 from 15. */
const validRmgr = (rmid: number, version = 17) => rmid <= 21 || (version >= 15 && rmid >= 128);

/**
 * The first record at or after the page-aligned `pageLsn`, skipping the tail of a record continued from an
 * earlier page (as XLogFindNextRecord does).
 */
export function firstRecordAt(source: WalSource, pageLsn: Lsn): Lsn {
  const pages = new Pages(source);
  const align = (n: number) => (n + 7) & ~7;
  for (let p = toNumber(pageLsn - (pageLsn % 8192n)); ; p += WAL_PAGE_SIZE) {
    pages.page(p);
    if (!(pages.info & XLP_FIRST_IS_CONTRECORD)) return BigInt(p + pages.size);
    if (pages.size + align(pages.remLen) < WAL_PAGE_SIZE) return BigInt(p + pages.size + align(pages.remLen));
  }
}

/** Options of {@link readRecords}. */
export interface ReadOptions {
  /** Stop before the first record that does not end at or before `end` (e.g. a flush point). */
  end?: Lsn;
  /** LSN of the record before `start`, when known: then the first xl_prev is checked exactly. */
  prev?: Lsn;
  /**
   * Recent verdicts of segments (see ./verdicts.ts): a segment verified from its first record up to at most
   * `end` is not walked again, only the records crossing into and out of it.
   */
  verdicts?: (segno: number) => SegmentVerdict | undefined;
}

/** An LSN as a number: exact below 2^53 (8 PiB of WAL), which the decoder's arithmetic relies on. */
function toNumber(lsn: Lsn): number {
  if (lsn > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`LSN ${formatLsn(lsn)} is beyond what the WAL decoder reads (2^53)`);
  return Number(lsn);
}

const TWO32 = 0x100000000;

/**
 * The record walk of {@link readRecords}, without objects per record: {@link next} checks the next record (page
 * headers, length, xl_prev, CRC-32C, fragment headers) and describes it in this object's fields, valid until
 * the next call. Records spanning pages are put together in one reused buffer.
 */
export class RecordWalker {
  readonly pages: Pages;
  readonly scan = new BodyScan();
  private readonly end: number;
  /** Where the next record starts. */
  pos: number;
  /** The record before `pos` (-1: unknown). */
  prev: number;
  private readonly verdicts?: (segno: number) => SegmentVerdict | undefined;
  private verdictSegno = -1;
  /** Records taken from verdicts instead of walked, and the end of the last of them (-1: none). */
  skippedRecords = 0;
  skippedEnd = -1;
  /** The first record checked or taken from a verdict (-1: none yet). */
  firstLsn = -1;
  private scratch = new Uint8Array(64 * 1024);
  /** The current record: its start and end (MAXALIGNed) and bytes at `buf[at, at + totalLength)`. */
  lsn = 0;
  endLsn = 0;
  totalLength = 0;
  buf: Uint8Array = this.scratch;
  at = 0;
  rmid = 0;
  info = 0;
  /** Set when {@link next} returns false. */
  stopped?: ReadStop;

  constructor(source: WalSource, start: Lsn, options: ReadOptions = {}) {
    this.pages = new Pages(source);
    this.end = options.end === undefined ? -1 : toNumber(options.end);
    this.pos = toNumber(start);
    this.prev = options.prev === undefined ? -1 : toNumber(options.prev);
    this.verdicts = options.verdicts;
  }

  /**
   * At a segment's first record, take the segment's verdict instead of walking it, if there is one that fits:
   * same range or less, this record's xl_prev the record before it, the same page context. Returns true when
   * it skipped.
   */
  private skip(pos: number): boolean {
    const pages = this.pages;
    const segno = Math.floor(pos / pages.segmentSize);
    if (segno === this.verdictSegno || pos % WAL_PAGE_SIZE === 0) return false; // a page start is no record's start
    this.verdictSegno = segno;
    const verdict = this.verdicts!(segno);
    if (!verdict || verdict.first !== pos || this.end < 0 || verdict.end > this.end) return false;
    const pageLsn = pos - (pos % WAL_PAGE_SIZE);
    pages.page(pageLsn);
    const at = pages.off + (pos - pageLsn);
    if (WAL_PAGE_SIZE - (pos - pageLsn) < RECORD_HEADER) return false;
    const xlPrev = u32(pages.data, at + 12) * TWO32 + u32(pages.data, at + 8);
    if (this.prev >= 0 && xlPrev !== this.prev) return false;
    if (verdict.magic !== pages.known.magic || verdict.tli !== pages.tli) return false;
    pages.lastPage = Math.max(pages.lastPage, verdict.lastPage);
    if (this.firstLsn < 0) this.firstLsn = pos;
    this.skippedRecords += verdict.records;
    this.skippedEnd = verdict.lastValid;
    this.pos = verdict.resumeAt;
    this.prev = verdict.resumePrev;
    return true;
  }

  /** True when the record fits in its page (then `buf` is the segment's bytes, not a copy). */
  get inPlace(): boolean {
    return this.buf !== this.scratch;
  }

  /** Check the next record: true when there is one, false at a stop ({@link stopped}); a {@link WalDecodeError} for damage. */
  next(): boolean {
    try {
      return this.step();
    } catch (error) {
      const endOfWal = error instanceof WalDecodeError && ['segment-missing', 'page-magic', 'page-addr'].includes(error.reason);
      if (this.end < 0 && endOfWal) return this.stop('end-of-wal');
      throw error;
    }
  }

  private stop(why: ReadStop['why']): false {
    const pages = this.pages;
    this.stopped = { at: BigInt(this.pos), why, pgVersion: pages.version, systemId: pages.known.systemId };
    return false;
  }

  private fail(reason: WalErrorReason, detail: string): WalDecodeError {
    return new WalDecodeError(reason, BigInt(this.pos), this.pages.nameOf(this.pos), detail);
  }

  private checkHeader(b: Uint8Array, i: number): void {
    const pos = this.pos;
    const prev = this.prev;
    if (!validRmgr(b[i + 17], this.pages.pgVersion || undefined))
      throw this.fail('record-rmgr', `invalid resource manager id ${b[i + 17]}`);
    // As a double: exact below 2^53; above, still larger than any position or prev-link this walk has.
    const xlPrev = u32(b, i + 12) * TWO32 + u32(b, i + 8);
    if (prev < 0 ? xlPrev >= pos : xlPrev !== prev) {
      throw this.fail(
        'record-prev',
        `record with incorrect prev-link ${formatLsn(u64(b, i + 8))}${prev < 0 ? '' : ` (expected ${formatLsn(BigInt(prev))})`}`,
      );
    }
  }

  private step(): boolean {
    const pages = this.pages;
    const end = this.end;
    for (;;) {
      let pos = this.pos;
      if (end >= 0 && pos >= end) return this.stop('end');
      if (this.verdicts && this.skip(pos)) continue;
      const pageLsn = pos - (pos % WAL_PAGE_SIZE);
      pages.page(pageLsn);
      let off = pos - pageLsn;
      if (off === 0) {
        pos = this.pos = pos + pages.size;
        off = pages.size;
      } else if (off < pages.size) throw this.fail('record-offset', `record offset ${off} inside the page header`);
      if (pages.info & XLP_FIRST_IS_CONTRECORD && off === pages.size)
        throw this.fail('contrecord-unexpected', 'a record was expected, the page continues one');
      if (end >= 0 && pos >= end) return this.stop('end');
      const data = pages.data;
      const at = pages.off + off;
      const totalLength = u32(data, at);
      if (totalLength === 0 && end < 0) return this.stop('end-of-wal');
      if (totalLength < RECORD_HEADER || totalLength > MAX_RECORD) throw this.fail('record-length', `invalid record length ${totalLength}`);
      const avail = WAL_PAGE_SIZE - off;
      if (avail >= RECORD_HEADER) this.checkHeader(data, at);
      let next: number;
      if (totalLength <= avail) {
        if (end >= 0 && pos + totalLength > end) return this.stop('incomplete');
        this.buf = data;
        this.at = at;
        next = pos + ((totalLength + 7) & ~7);
      } else {
        if (this.scratch.length < totalLength) this.scratch = new Uint8Array(Math.max(totalLength, this.scratch.length * 2));
        const record = this.scratch;
        record.set(data.subarray(at, at + avail));
        let got = avail;
        let p = pageLsn;
        let overwritten = false;
        next = pos;
        while (got < totalLength) {
          p += WAL_PAGE_SIZE;
          if (end >= 0 && p >= end) return this.stop('incomplete');
          pages.page(p);
          if (pages.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD) {
            // The rest of this record was never written (a crash); WAL went on from this page. Skip it, as Postgres does.
            overwritten = true;
            this.pos = p;
            break;
          }
          if (!(pages.info & XLP_FIRST_IS_CONTRECORD))
            throw this.fail('contrecord-missing', `the record's continuation page ${formatLsn(BigInt(p))} has no contrecord flag`);
          const remLen = pages.remLen;
          if (remLen === 0 || remLen + got !== totalLength) {
            throw this.fail(
              'contrecord-length',
              `continuation length ${remLen} on page ${formatLsn(BigInt(p))}, expected ${totalLength - got}`,
            );
          }
          const n = Math.min(remLen, WAL_PAGE_SIZE - pages.size);
          if (end >= 0 && p + pages.size + n > end) return this.stop('incomplete');
          const from = pages.off + pages.size;
          record.set(pages.data.subarray(from, from + n), got);
          if (got < RECORD_HEADER && got + n >= RECORD_HEADER) this.checkHeader(record, 0);
          got += n;
          next = p + pages.size + ((n + 7) & ~7);
        }
        if (overwritten) continue;
        this.buf = record;
        this.at = 0;
      }
      const buf = this.buf;
      const bufAt = this.at;
      let crc = crc32cUpdate(CRC32C_INIT, buf, bufAt + RECORD_HEADER, bufAt + totalLength);
      crc = crc32cFinish(crc32cUpdate(crc, buf, bufAt, bufAt + 20));
      const stored = u32(buf, bufAt + 20);
      if (crc !== stored) throw this.fail('record-crc', `record CRC ${stored.toString(16)} does not match its data (${crc.toString(16)})`);
      const problem = scanRecordBody(buf, bufAt, totalLength, pages.pgVersion || 17, this.scan);
      if (problem !== undefined) throw this.fail('record-blocks', problem);
      this.lsn = pos;
      if (this.firstLsn < 0) this.firstLsn = pos;
      this.endLsn = next;
      this.totalLength = totalLength;
      this.rmid = buf[bufAt + 17];
      this.info = buf[bufAt + 16];
      this.prev = pos;
      this.pos = next;
      if (this.rmid === RM_XLOG_ID && (this.info & 0xf0) === XLOG_SWITCH) {
        // The rest of the segment is unused: the next record starts the next segment.
        const size = pages.segmentSize;
        this.pos = Math.ceil(next / size) * size;
      }
      return true;
    }
  }

  /** The current record as a {@link WalRecord}; its bytes are copied when they were put together from pages. */
  record(): WalRecord {
    const total = this.totalLength;
    const bytes = this.inPlace ? this.buf.subarray(this.at, this.at + total) : this.buf.slice(0, total);
    const scan = this.scan;
    return {
      lsn: BigInt(this.lsn),
      endLsn: BigInt(this.endLsn),
      totalLength: total,
      xid: u32(bytes, 4),
      prev: u64(bytes, 8),
      info: this.info,
      rmid: this.rmid,
      blocks: blockRefs(scan, this.pages.pgVersion || 17),
      mainData: bytes.subarray(scan.mainOffset),
      origin: scan.origin < 0 ? undefined : scan.origin,
      toplevelXid: scan.toplevelXid < 0 ? undefined : scan.toplevelXid,
    };
  }

  /** The current record's main data (a view, valid until the next call). */
  mainData(): Uint8Array {
    return this.buf.subarray(this.at + this.scan.mainOffset, this.at + this.totalLength);
  }
}

/**
 * Decode records from `start` (a record start, or a page start whose page begins with a record). With
 * `options.end`, anything wrong before `end` is a {@link WalDecodeError}, even zeros; without it, reading stops at
 * what looks like the end of WAL (a zero record length, a missing segment, a zeroed or recycled page).
 */
export function* readRecords(source: WalSource, start: Lsn, options: ReadOptions = {}): Generator<WalRecord, ReadStop, void> {
  const walker = new RecordWalker(source, start, options);
  while (walker.next()) yield walker.record();
  return walker.stopped!;
}
