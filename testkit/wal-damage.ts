// Damage a safekeeper's copy of the WAL the way a bad disk would: one flipped byte inside a record, so that its
// CRC no longer matches. Used by the tests of verify, recovery and incremental images over damaged WAL.
import fs from 'node:fs';
import path from 'node:path';
import { type Lsn, segmentName } from '../core/wal.js';
import { verifyWal } from '../wal/verify.js';

const SEGMENT = 16 * 1024 * 1024;
const RM_HEAP_ID = 10;

/** A safekeeper's WAL folder for `branch` in repository `dir`. */
export function safekeeperWalDir(dir: string, sk: string, branch = 'main'): string {
  return path.join(dir, '.neon', 'safekeepers', sk, 'wal', branch);
}

/**
 * Flip a byte inside the first heap record (longer than 100 bytes, not crossing a page) that starts after
 * `after` and before `to` in safekeeper `sk`'s copy; returns the file, its name and the record's LSN.
 */
export async function flipHeapRecord(dir: string, after: Lsn, to: Lsn, sk = 'sk1'): Promise<{ file: string; name: string; lsn: Lsn }> {
  const wal = safekeeperWalDir(dir, sk);
  const files = fs
    .readdirSync(wal)
    .filter((f) => /^[0-9A-F]{24}(\.partial)?$/.test(f))
    .map((f) => path.join(wal, f));
  let hit: Lsn | undefined;
  await verifyWal(files, {
    from: after - (after % BigInt(SEGMENT)),
    upTo: to,
    onRecord: (r) => {
      const inPage = Number(r.lsn % 8192n) + r.totalLength < 8192;
      if (hit === undefined && r.rmid === RM_HEAP_ID && r.lsn >= after && inPage && r.totalLength > 100) hit = r.lsn;
    },
  });
  if (hit === undefined) throw new Error(`no heap record to damage in ${sk}'s copy of the WAL`);
  const name = segmentName(1, hit / BigInt(SEGMENT), SEGMENT);
  const file = [path.join(wal, name), path.join(wal, name + '.partial')].find((f) => fs.existsSync(f))!;
  const fd = fs.openSync(file, 'r+');
  try {
    const at = Number(hit % BigInt(SEGMENT)) + 60; // inside the record's data: its CRC no longer matches
    const byte = Buffer.alloc(1);
    fs.readSync(fd, byte, 0, 1, at);
    byte[0] ^= 0x10;
    fs.writeSync(fd, byte, 0, 1, at);
  } finally {
    fs.closeSync(fd);
  }
  return { file, name, lsn: hit };
}
