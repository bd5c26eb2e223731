// Postgres' data page checksum (pg_checksum_page, storage/checksum_impl.h), written from its description: an
// FNV-1a variant that mixes 4 bytes at a time into 32 parallel sums (so that compilers vectorise it), each started
// from its own base offset, two extra rounds of zeros, the sums xor-folded, the block number mixed in, and the
// result reduced to 1..65535. Clusters made by neon have data checksums on (postgres/initdb.ts), so a page of the
// image cache can be checked on its own, without the chunk store.
export const BLCKSZ = 8192;
const N_SUMS = 32;
const FNV_PRIME = 16777619;
const BASE_OFFSETS = new Uint32Array([
  0x5b1f36e9, 0xb8525960, 0x02ab50aa, 0x1de66d2a, 0x79ff467a, 0x9bb9f8a3, 0x217e7cd2, 0x83e13d2c, 0xf8d4474f, 0xe39eb970, 0x42c6ae16,
  0x993216fa, 0x7b093b5d, 0x98daff3c, 0xf718902a, 0x0b1c9cdb, 0xe58f764b, 0x187636bc, 0x5d7b3bb1, 0xe73de7de, 0x92bec979, 0xcca6c0b2,
  0x304a0979, 0x85aa43d4, 0x783125bb, 0x6ca8eaa2, 0xe407eac6, 0x4b5cfc3e, 0x9fbf8c76, 0x15ca20be, 0xf2ca9fd3, 0x959bd756,
]);
/** RELSEG_SIZE: blocks per 1 GB segment file of a relation (`16384`, `16384.1`, …). */
export const RELSEG_BLOCKS = 131072;

const sums = new Uint32Array(N_SUMS);

/** pd_checksum as stored in the page header (offset 8). */
export function storedChecksum(page: Uint8Array): number {
  return page[8] | (page[9] << 8);
}

/** PageIsNew: pd_upper is 0 (a page that was extended but never written; Postgres expects it all zeros). */
export function isNewPage(page: Uint8Array): boolean {
  return (page[14] | (page[15] << 8)) === 0;
}

/** The checksum Postgres computes for `page` (8 KiB) as block `block` of its relation fork. */
export function pageChecksum(page: Uint8Array, block: number): number {
  // Little-endian words, as Postgres reads them on the platforms neon supports (x86-64, arm64).
  const view = new DataView(page.buffer, page.byteOffset, BLCKSZ);
  sums.set(BASE_OFFSETS);
  for (let i = 0; i < BLCKSZ / 4; i += N_SUMS) {
    for (let j = 0; j < N_SUMS; j++) {
      let value = view.getUint32((i + j) * 4, true);
      // pd_checksum (the low half of word 2) counts as zero: the checksum does not cover itself.
      if (i + j === 2) value &= 0xffff0000;
      const mixed = (sums[j] ^ value) >>> 0;
      sums[j] = Math.imul(mixed, FNV_PRIME) ^ (mixed >>> 17);
    }
  }
  for (let round = 0; round < 2; round++) {
    for (let j = 0; j < N_SUMS; j++) {
      const mixed = sums[j];
      sums[j] = Math.imul(mixed, FNV_PRIME) ^ (mixed >>> 17);
    }
  }
  let result = 0;
  for (let j = 0; j < N_SUMS; j++) result ^= sums[j];
  // Mixing in the block number catches a page written at the wrong place; offset by one, 0 is never a checksum.
  return (((result ^ block) >>> 0) % 65535) + 1;
}

const RELATION_FILE = /^(?:global|base\/\d+|pg_tblspc\/\d+\/[^/]+\/\d+)\/\d+(?:_(?:fsm|vm|init))?(?:\.(\d+))?$/;

/** For a relation data file path of a data directory, the block number of its first page; else undefined. */
export function firstBlockOf(relativePath: string): number | undefined {
  const match = RELATION_FILE.exec(relativePath);
  if (!match) return undefined;
  return Number(match[1] ?? 0) * RELSEG_BLOCKS;
}

/** What is wrong with a relation page, or undefined when it is fine. */
export function checkPage(page: Uint8Array, block: number): string | undefined {
  if (isNewPage(page)) return page.every((b) => b === 0) ? undefined : 'a new page (pd_upper 0) that is not all zeros';
  const stored = storedChecksum(page);
  const computed = pageChecksum(page, block);
  return stored === computed ? undefined : `page checksum ${stored} does not match its contents (${computed})`;
}
