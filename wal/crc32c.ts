// CRC-32C (Castagnoli), computed exactly as Postgres' pg_crc32c: reflected polynomial 0x82F63B78, initial value
// 0xFFFFFFFF, final XOR 0xFFFFFFFF.
//
// Hand-written: no CRC-32C package is installed (node_modules has none, and node:zlib's crc32 is the other,
// IEEE polynomial), and adding a native dependency for one function is not worth it. Table-driven slicing-by-8
// processes 8 bytes per step with eight 256-entry tables; in V8 that is several hundred MB/s, so a 16 MiB
// segment verifies in tens of milliseconds.

const POLY = 0x82f63b78;

/** TABLES[k * 256 + b]: the CRC contribution of byte `b` followed by `k` zero bytes. */
const TABLES = (() => {
  const t = new Uint32Array(8 * 256);
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

/**
 * Feed `data[start, end)` into a running CRC (Postgres' COMP_CRC32C). Start from {@link CRC32C_INIT} and finish
 * with {@link crc32cFinish}.
 */
export function crc32cUpdate(crc: number, data: Uint8Array, start = 0, end = data.length): number {
  const t = TABLES;
  let c = crc >>> 0;
  let i = start;
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
