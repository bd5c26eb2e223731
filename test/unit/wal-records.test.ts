// The WAL decoder on synthetic input: the CRC-32C vector, page header checks, and records laid out by a tiny WAL
// writer (records across pages, a record header split by a page boundary, block references, version differences).
// Real WAL from real Postgres is in test/e2e/wal-verify.test.ts.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { crc32c, crc32cFinish, crc32cUpdate, CRC32C_INIT } from '../../wal/crc32c.js';
import {
  checkPageHeader,
  decodeRecordBody,
  readRecords,
  WalDecodeError,
  type PageContext,
  type WalRecord,
  type WalSource,
} from '../../wal/records.js';

const MiB = 1024 * 1024;
const MAGIC_17 = 0xd116;

function pageHeader(
  bytes: Uint8Array,
  off: number,
  lsn: bigint,
  options: { long?: boolean; cont?: number; magic?: number; tli?: number; segSize?: number } = {},
) {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  view.setUint16(off, options.magic ?? MAGIC_17, true);
  view.setUint16(off + 2, (options.long ? 2 : 0) | (options.cont ? 1 : 0), true);
  view.setUint32(off + 4, options.tli ?? 1, true);
  view.setBigUint64(off + 8, lsn, true);
  view.setUint32(off + 16, options.cont ?? 0, true);
  if (options.long) {
    view.setBigUint64(off + 24, 7000000000000000001n, true);
    view.setUint32(off + 32, options.segSize ?? MiB, true);
    view.setUint32(off + 36, 8192, true);
  }
  return options.long ? 40 : 24;
}

/** Lay records out in one 1 MiB segment (number 1), as XLogInsert would; returns the source and each record's LSN. */
function writeWal(records: { rmid: number; info: number; body: Uint8Array }[]): { source: WalSource; lsns: bigint[]; data: Uint8Array } {
  const data = new Uint8Array(MiB);
  const base = BigInt(MiB);
  let pos = pageHeader(data, 0, base, { long: true });
  let prev = 0n;
  const lsns: bigint[] = [];
  for (const { rmid, info, body } of records) {
    if (pos % 8192 === 0) pos += pageHeader(data, pos, base + BigInt(pos));
    const rec = new Uint8Array(24 + body.length);
    const view = new DataView(rec.buffer);
    view.setUint32(0, rec.length, true);
    view.setUint32(4, 1234, true);
    view.setBigUint64(8, prev, true);
    rec[16] = info;
    rec[17] = rmid;
    rec.set(body, 24);
    view.setUint32(20, crc32cFinish(crc32cUpdate(crc32cUpdate(CRC32C_INIT, rec, 24), rec, 0, 20)), true);
    prev = base + BigInt(pos);
    lsns.push(prev);
    for (let done = 0; done < rec.length;) {
      if (pos % 8192 === 0) pos += pageHeader(data, pos, base + BigInt(pos), { cont: rec.length - done });
      const n = Math.min(rec.length - done, 8192 - (pos % 8192));
      data.set(rec.subarray(done, done + n), pos);
      done += n;
      pos += n;
    }
    pos = (pos + 7) & ~7;
  }
  const source: WalSource = { segmentSize: MiB, segment: (n) => (n === 1n ? { name: 'SEG1', data } : undefined), name: (n) => `SEG${n}` };
  return { source, lsns, data };
}

/** A body: one block reference (with data, optionally an image header), then main data. */
function body(options: { blockData?: number; main: number; image?: number[]; rel?: [number, number, number]; block?: number }): Uint8Array {
  const out: number[] = [];
  const u16 = (n: number) => out.push(n & 0xff, n >> 8);
  const u32 = (n: number) => out.push(n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24);
  const blockData = options.blockData ?? 0;
  out.push(0, (blockData ? 0x20 : 0) | (options.image ? 0x10 : 0));
  u16(blockData);
  let imageLength = 0;
  if (options.image) {
    const [length, holeOffset, bits, holeLength] = options.image;
    imageLength = length;
    u16(length);
    u16(holeOffset);
    out.push(bits);
    if (holeLength !== undefined) u16(holeLength);
  }
  for (const n of options.rel ?? [1663, 5, 16384]) u32(n);
  u32(options.block ?? 7);
  if (options.main < 256) out.push(255, options.main);
  else (out.push(254), u32(options.main));
  return Uint8Array.from([...out, ...new Array(imageLength + blockData + options.main).fill(0x5a)]);
}

const all = (source: WalSource, start: bigint, end?: bigint) => {
  const records: WalRecord[] = [];
  const reader = readRecords(source, start, { end });
  for (let step = reader.next(); ; step = reader.next()) {
    if (step.done) return { records, stop: step.value };
    records.push(step.value);
  }
};

const wal = suite('WAL records (synthetic)');

wal('CRC-32C: the check vector, and piecewise equals whole', () => {
  assert.is(crc32c(new TextEncoder().encode('123456789')), 0xe3069283);
  assert.is(crc32c(new Uint8Array(0)), 0);
  const data = Uint8Array.from({ length: 1000 }, (_, i) => (i * 31) & 0xff);
  assert.is(crc32cFinish(crc32cUpdate(crc32cUpdate(CRC32C_INIT, data, 0, 333), data, 333)), crc32c(data));
});

wal('page headers: a good long header, then each kind of damage', () => {
  const page = new Uint8Array(8192);
  const lsn = 3n * 16n * BigInt(MiB);
  pageHeader(page, 0, lsn, { long: true, segSize: 16 * MiB });
  const known: PageContext = {};
  const header = checkPageHeader(page, 0, lsn, 16 * MiB, 'SEG', known);
  assert.is(header.size, 40);
  assert.is(header.systemId, 7000000000000000001n);
  assert.is(known.magic, MAGIC_17);
  const reason = (fn: () => unknown) => {
    try {
      fn();
    } catch (error) {
      assert.instance(error, WalDecodeError);
      return (error as WalDecodeError).reason;
    }
    return 'no error';
  };
  assert.is(
    reason(() => checkPageHeader(page, 0, lsn + 8192n * 16n * 128n, 16 * MiB, 'SEG')),
    'page-addr',
  );
  assert.is(
    reason(() => checkPageHeader(page, 0, lsn, 1 * MiB, 'SEG')),
    'page-long-header',
  );
  pageHeader(page, 0, lsn, { magic: 0xd106, long: true, segSize: 16 * MiB });
  assert.is(
    reason(() => checkPageHeader(page, 0, lsn, 16 * MiB, 'SEG')),
    'page-magic',
  );
  pageHeader(page, 0, lsn, {});
  assert.is(
    reason(() => checkPageHeader(page, 0, lsn, 16 * MiB, 'SEG')),
    'page-info',
    'a segment starts with a long header',
  );
  pageHeader(page, 0, lsn + 8192n, { tli: 1 });
  assert.is(
    reason(() => checkPageHeader(page, 0, lsn + 8192n, 16 * MiB, 'SEG', { tli: 2, lastPage: lsn })),
    'page-timeline',
  );
});

wal('records across pages, a header split by a page end, xl_prev and block references', () => {
  const { source, lsns } = writeWal([
    { rmid: 10, info: 0x00, body: body({ blockData: 10, main: 3, rel: [1663, 5, 16384], block: 42 }) },
    { rmid: 10, info: 0x40, body: body({ main: 20000 }) }, // spans three pages
    { rmid: 1, info: 0x00, body: new Uint8Array([255, 8, 1, 2, 3, 4, 5, 6, 7, 8]) },
  ]);
  const { records, stop } = all(source, lsns[0]);
  assert.equal(
    records.map((r) => r.lsn),
    lsns,
  );
  assert.is(stop.why, 'end-of-wal');
  assert.is(stop.pgVersion, 17);
  assert.equal(records[0].blocks, [
    {
      id: 0,
      rel: { spc: 1663, db: 5, rel: 16384 },
      fork: 0,
      block: 42,
      hasImage: false,
      hasData: true,
      willInit: false,
      dataLength: 10,
      image: undefined,
    },
  ]);
  assert.is(records[0].mainData.length, 3);
  assert.is(records[1].mainData.length, 20000);
  assert.is(records[1].prev, lsns[0]);
  assert.is(records[2].prev, lsns[1]);
  assert.is(records[2].xid, 1234);

  // A first record of 8144 bytes ends at 8184: the next record's 24-byte header straddles the page end.
  const split = writeWal([
    { rmid: 10, info: 0, body: new Uint8Array([254, 8115 & 0xff, 8115 >> 8, 0, 0, ...new Array(8115).fill(1)]) }, // 24 + 5 + 8115
    { rmid: 1, info: 0, body: new Uint8Array([255, 2, 9, 9]) },
  ]);
  assert.is(split.lsns[1] % 8192n, 8184n);
  assert.equal(
    all(split.source, split.lsns[0]).records.map((r) => r.lsn),
    split.lsns,
  );
});

wal('damage and ends: CRC, zeros before the flush point, a record cut by the flush point', () => {
  const { source, lsns, data } = writeWal([
    { rmid: 10, info: 0, body: body({ main: 5 }) },
    { rmid: 10, info: 0, body: body({ main: 9000 }) },
  ]);
  const end = lsns[1] + 24n + 9200n;
  assert.is(all(source, lsns[0], lsns[1] + 100n).stop.why, 'incomplete');
  data[Number(lsns[1] - BigInt(MiB)) + 60] ^= 1;
  assert.throws(
    () => all(source, lsns[0], end),
    (e: WalDecodeError) => e.reason === 'record-crc' && e.lsn === lsns[1],
  );
  assert.throws(
    () => all(source, lsns[0], BigInt(MiB) + 60000n),
    (e: WalDecodeError) => e.reason === 'record-crc',
  );
  data[Number(lsns[1] - BigInt(MiB)) + 60] ^= 1;
  assert.throws(
    () => all(source, lsns[0], BigInt(MiB) + 60000n),
    (e: WalDecodeError) => e.reason === 'record-length',
    'zeros before the flush point',
  );
  assert.is(all(source, lsns[0]).stop.why, 'end-of-wal', 'without a flush point, zeros end the WAL');
  assert.throws(
    () => all(source, lsns[1] + 8n, end),
    (e: unknown) => e instanceof WalDecodeError,
    'not a record start',
  );
});

wal('image flags: BKPIMAGE bits moved between 14 and 15', () => {
  const record = (image: number[]) => {
    const b = body({ main: 0, image });
    const out = new Uint8Array(24 + b.length);
    out.set(b, 24);
    return out;
  };
  // bits 0x02 with a full 8192-byte image: 14 reads IS_COMPRESSED (invalid: a compressed image of BLCKSZ), 15+ reads APPLY.
  const full = record([8192, 0, 0x02]);
  assert.type(decodeRecordBody(full, 14), 'string');
  const v15 = decodeRecordBody(full, 15);
  assert.ok(typeof v15 !== 'string' && v15.blocks[0].image?.apply && !v15.blocks[0].image.compression);
  // A compressed image with a hole: 14 flags 0x02|0x01, 15+ flags 0x04|0x01 (pglz), then the hole length.
  const v14 = decodeRecordBody(record([3000, 100, 0x03, 200]), 14);
  assert.ok(typeof v14 !== 'string' && v14.blocks[0].image?.compression === 'pglz' && v14.blocks[0].image.holeLength === 200);
  const lz4 = decodeRecordBody(record([3000, 100, 0x09, 200]), 16);
  assert.ok(typeof lz4 !== 'string' && lz4.blocks[0].image?.compression === 'lz4' && !lz4.blocks[0].image.apply);
  // A hole without compression: length + hole = BLCKSZ.
  const hole = decodeRecordBody(record([8000, 64, 0x01]), 17);
  assert.ok(typeof hole !== 'string' && hole.blocks[0].image?.holeLength === 192);
  assert.type(decodeRecordBody(record([8000, 0, 0x00]), 17), 'string', 'no hole flag but a short image');
});

wal.run();
