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

/**
 * Fragment headers of one record, parsed without allocating (what {@link scanRecordBody} fills in and reuses):
 * block fields in typed arrays, one slot per block in order.
 */
export class BodyScan {
  blocks = 0;
  mainLength = 0;
  /** Offset of the main data, relative to the record's start. */
  mainOffset = 0;
  origin = -1;
  toplevelXid = -1;
  readonly id = new Uint8Array(XLR_MAX_BLOCK_ID + 1);
  readonly flags = new Uint8Array(XLR_MAX_BLOCK_ID + 1);
  readonly dataLength = new Uint16Array(XLR_MAX_BLOCK_ID + 1);
  /** Image length, hole offset, hole length and bimg_info; only for blocks whose flags have BKPBLOCK_HAS_IMAGE. */
  readonly image = new Uint32Array((XLR_MAX_BLOCK_ID + 1) * 4);
  /** spc, db, rel, block per slot (the relation carried over for BKPBLOCK_SAME_REL). */
  readonly where = new Uint32Array((XLR_MAX_BLOCK_ID + 1) * 4);
}

/**
 * Check the fragment headers of the record at `buf[start, start + total)` (DecodeXLogRecord) into `out`; returns
 * what is wrong, or undefined. Nothing is allocated unless the record is damaged.
 */
export function scanRecordBody(buf: Uint8Array, start: number, total: number, version: number, out: BodyScan): string | undefined {
  let p = RECORD_HEADER;
  let dataTotal = 0;
  let mainLength = 0;
  let haveRel = false;
  let spc = 0;
  let db = 0;
  let rel = 0;
  let n = 0;
  out.origin = -1;
  out.toplevelXid = -1;
  while (total - p > dataTotal) {
    if (total - p < 1) return 'record too short for its headers';
    const id = buf[start + p++];
    if (id === XLR_BLOCK_ID_DATA_SHORT) {
      if (total - p < 1) return 'record too short for its main data header';
      mainLength = buf[start + p];
      p += 1;
      dataTotal += mainLength;
      break; // the main data header is always last
    } else if (id === XLR_BLOCK_ID_DATA_LONG) {
      if (total - p < 4) return 'record too short for its main data header';
      mainLength = u32(buf, start + p);
      p += 4;
      dataTotal += mainLength;
      break;
    } else if (id === XLR_BLOCK_ID_ORIGIN) {
      if (total - p < 2) return 'record too short for its origin';
      out.origin = u16(buf, start + p);
      p += 2;
    } else if (id === XLR_BLOCK_ID_TOPLEVEL_XID) {
      if (total - p < 4) return 'record too short for its top-level xid';
      out.toplevelXid = u32(buf, start + p);
      p += 4;
    } else if (id <= XLR_MAX_BLOCK_ID) {
      if (n && id <= out.id[n - 1]) return `out-of-order block_id ${id}`;
      if (total - p < 3) return 'record too short for a block header';
      const flags = buf[start + p];
      const dataLength = u16(buf, start + p + 1);
      p += 3;
      const hasData = (flags & BKPBLOCK_HAS_DATA) !== 0;
      if (hasData !== dataLength > 0) return `block ${id}: BKPBLOCK_HAS_DATA ${hasData ? 'set' : 'not set'} but data length ${dataLength}`;
      dataTotal += dataLength;
      if (flags & BKPBLOCK_HAS_IMAGE) {
        if (total - p < 5) return 'record too short for an image header';
        const length = u16(buf, start + p);
        const holeOffset = u16(buf, start + p + 2);
        const bits = buf[start + p + 4];
        p += 5;
        const compressed = version < 15 ? (bits & 0x02) !== 0 : (bits & 0x1c) !== 0;
        const hasHole = (bits & BKPIMAGE_HAS_HOLE) !== 0;
        let holeLength = BLCKSZ - length;
        if (compressed) {
          holeLength = 0;
          if (hasHole) {
            if (total - p < 2) return 'record too short for a hole length';
            holeLength = u16(buf, start + p);
            p += 2;
          }
        }
        dataTotal += length;
        if (hasHole && (holeOffset === 0 || holeLength === 0 || length === BLCKSZ))
          return `block ${id}: image hole flag set, but hole ${holeOffset}+${holeLength}, length ${length}`;
        if (!hasHole && (holeOffset !== 0 || holeLength !== 0))
          return `block ${id}: image without hole flag, but hole ${holeOffset}+${holeLength}`;
        if (compressed && length === BLCKSZ) return `block ${id}: compressed image of length ${length}`;
        out.image[n * 4] = length;
        out.image[n * 4 + 1] = holeOffset;
        out.image[n * 4 + 2] = holeLength;
        out.image[n * 4 + 3] = bits;
      }
      if (!(flags & BKPBLOCK_SAME_REL)) {
        if (total - p < 12) return 'record too short for a relation';
        spc = u32(buf, start + p);
        db = u32(buf, start + p + 4);
        rel = u32(buf, start + p + 8);
        haveRel = true;
        p += 12;
      } else if (!haveRel) return `block ${id}: BKPBLOCK_SAME_REL set but no previous relation`;
      if (total - p < 4) return 'record too short for a block number';
      out.id[n] = id;
      out.flags[n] = flags;
      out.dataLength[n] = dataLength;
      out.where[n * 4] = spc;
      out.where[n * 4 + 1] = db;
      out.where[n * 4 + 2] = rel;
      out.where[n * 4 + 3] = u32(buf, start + p);
      p += 4;
      n++;
    } else return `invalid block_id ${id}`;
  }
  if (total - p !== dataTotal) return `record length ${total} does not match its fragments (${p} bytes of headers, ${dataTotal} of data)`;
  out.blocks = n;
  out.mainLength = mainLength;
  out.mainOffset = total - mainLength;
  return undefined;
}

/** The block references of a scanned record as objects (one {@link RelFileLocator} shared by blocks of one relation). */
export function blockRefs(scan: BodyScan, version: number): BlockRef[] {
  const blocks: BlockRef[] = [];
  let rel: RelFileLocator | undefined;
  for (let i = 0; i < scan.blocks; i++) {
    const flags = scan.flags[i];
    const w = scan.where;
    if (!rel || !(flags & BKPBLOCK_SAME_REL)) rel = { spc: w[i * 4], db: w[i * 4 + 1], rel: w[i * 4 + 2] };
    let image: BlockImage | undefined;
    if (flags & BKPBLOCK_HAS_IMAGE) {
      const m = scan.image;
      image = { length: m[i * 4], holeOffset: m[i * 4 + 1], holeLength: m[i * 4 + 2], ...imageFlags(m[i * 4 + 3], version) };
    }
    blocks.push({
      id: scan.id[i],
      rel,
      fork: flags & 0x0f,
      block: w[i * 4 + 3],
      hasImage: !!image,
      hasData: (flags & BKPBLOCK_HAS_DATA) !== 0,
      willInit: (flags & BKPBLOCK_WILL_INIT) !== 0,
      dataLength: scan.dataLength[i],
      image,
    });
  }
  return blocks;
}

const sharedScan = new BodyScan();

/** The fragment headers after the record header (DecodeXLogRecord); a string says what is wrong. */
export function decodeRecordBody(
  record: Uint8Array,
  version: number,
): { blocks: BlockRef[]; mainData: Uint8Array; origin?: number; toplevelXid?: number } | string {
  const scan = sharedScan;
  const problem = scanRecordBody(record, 0, record.length, version, scan);
  if (problem !== undefined) return problem;
  return {
    blocks: blockRefs(scan, version),
    mainData: record.subarray(scan.mainOffset),
    origin: scan.origin < 0 ? undefined : scan.origin,
    toplevelXid: scan.toplevelXid < 0 ? undefined : scan.toplevelXid,
  };
}
