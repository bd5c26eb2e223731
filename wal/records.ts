// A decoder of PostgreSQL WAL (versions 14–17), as far as neon needs it: page headers, record headers, CRCs and
// block references (Postgres itself replays WAL, see DESIGN.md). Layouts are those of access/xlogrecord.h and
// access/xlog_internal.h; the checks are those of xlogreader.c (XLogReaderValidatePageHeader,
// ValidXLogRecordHeader, ValidXLogRecord, DecodeXLogRecord). Little-endian WAL (x86-64, arm64) with the default
// XLOG_BLCKSZ and BLCKSZ of 8 kB, both checked against the long page header.
import { formatLsn, type Lsn } from '../core/wal.js';
import { CRC32C_INIT, crc32cFinish, crc32cUpdate } from './crc32c.js';
import { decodeRecordBody, RECORD_HEADER, type BlockRef } from './blocks.js';
import {
  align8,
  PAGE,
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
