// Block references: the fragment headers after a WAL record's header (DecodeXLogRecord in xlogreader.c), which
// name the pages a record changes. Split from ./records.ts.
import { u16, u32 } from './pages.js';

/** SizeOfXLogRecord; the CRC covers the header up to xl_crc, at offset 20. */
export const RECORD_HEADER = 24;

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
