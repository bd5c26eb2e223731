// CRC-32C (Castagnoli), computed exactly as Postgres' pg_crc32c: reflected polynomial 0x82F63B78, initial value
// 0xFFFFFFFF, final XOR 0xFFFFFFFF.
//
// Hand-written: node:zlib's crc32 is the other, IEEE polynomial, and a native CRC-32C package only pays for
// long inputs (a call costs more than a JS CRC of ~200 bytes, and most WAL records are shorter). Table-driven
// slicing-by-8 processes 8 bytes per step with eight 256-entry tables, reading them as two 32-bit words where
// the bytes are 4-aligned (WAL records are 8-aligned in their segment buffer): about 1 GB/s in V8.
import os from 'node:os';

const POLY = 0x82f63b78;

/** TABLES[k * 256 + b]: the CRC contribution of byte `b` followed by `k` zero bytes. */
const TABLES = (() => {
  const t = new Int32Array(8 * 256); // Int32: reads stay small integers in V8 (Uint32 values ≥ 2^31 would be doubles)
  for (let b = 0; b < 256; b++) {
    let c = b;
    for (let i = 0; i < 8; i++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[b] = c;
  }
  for (let k = 1; k < 8; k++) {
    for (let b = 0; b < 256; b++) {
      const prev = t[(k - 1) * 256 + b];
      t[k * 256 + b] = (prev >>> 8) ^ t[prev & 0xff];
    }
  }
  return t;
})();

/** The initial running value (Postgres' INIT_CRC32C). */
export const CRC32C_INIT = 0xffffffff;

const LITTLE_ENDIAN = os.endianness() === 'LE';
let wordsOf: ArrayBufferLike | undefined;
let words: Int32Array<ArrayBufferLike> = new Int32Array(0);

/** A 32-bit view of `data`'s whole ArrayBuffer (kept for the next call: records of one segment share it). */
function wordView(data: Uint8Array): Int32Array {
  if (data.buffer !== wordsOf) {
    wordsOf = data.buffer;
    words = new Int32Array(data.buffer, 0, data.buffer.byteLength >>> 2);
  }
  return words;
}

/**
 * Feed `data[start, end)` into a running CRC (Postgres' COMP_CRC32C). Start from {@link CRC32C_INIT} and finish
 * with {@link crc32cFinish}.
 */
export function crc32cUpdate(crc: number, data: Uint8Array, start = 0, end = data.length): number {
  const t = TABLES;
  let c = crc | 0;
  let i = start;
  if (LITTLE_ENDIAN && end - start >= 64) {
    for (; (data.byteOffset + i) & 3; i++) c = t[(c ^ data[i]) & 0xff] ^ (c >>> 8);
    const w = wordView(data);
    const base = (data.byteOffset + i) >> 2;
    const n = (end - i) >> 3;
    for (let k = 0, j = base; k < n; k++, j += 2) {
      const lo = c ^ w[j];
      const hi = w[j + 1];
      c =
        t[1792 + (lo & 0xff)] ^
        t[1536 + ((lo >>> 8) & 0xff)] ^
        t[1280 + ((lo >>> 16) & 0xff)] ^
        t[1024 + (lo >>> 24)] ^
        t[768 + (hi & 0xff)] ^
        t[512 + ((hi >>> 8) & 0xff)] ^
        t[256 + ((hi >>> 16) & 0xff)] ^
        t[hi >>> 24];
    }
    i += n << 3;
  }
  for (const stop = end - 8; i <= stop; i += 8) {
    const lo = c ^ (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24));
    const hi = data[i + 4] | (data[i + 5] << 8) | (data[i + 6] << 16) | (data[i + 7] << 24);
    c =
      t[1792 + (lo & 0xff)] ^
      t[1536 + ((lo >>> 8) & 0xff)] ^
      t[1280 + ((lo >>> 16) & 0xff)] ^
      t[1024 + (lo >>> 24)] ^
      t[768 + (hi & 0xff)] ^
      t[512 + ((hi >>> 8) & 0xff)] ^
      t[256 + ((hi >>> 16) & 0xff)] ^
      t[hi >>> 24];
  }
  for (; i < end; i++) c = t[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return c >>> 0;
}

/** Postgres' FIN_CRC32C. */
export function crc32cFinish(crc: number): number {
  return (crc ^ 0xffffffff) >>> 0;
}

/** CRC-32C of a whole buffer. */
export function crc32c(data: Uint8Array): number {
  return crc32cFinish(crc32cUpdate(CRC32C_INIT, data));
}
