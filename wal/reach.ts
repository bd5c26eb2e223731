// How far a recovery can get in some WAL: Postgres replays records until its target, and treats the first bad
// record as the end of WAL, so a target behind damaged WAL is silently not reached (with a time target it even
// "recovers to the end instead"). Checking the WAL before recovery starts turns that into an error that names
// the damage.
import type { Lsn } from '../core/wal.js';
import type { RecordWalker, WalDecodeError, WalSource } from './records.js';
import { walkWal, walFileSource } from './verify.js';

const RM_XACT_ID = 1;
const XLOG_XACT_OPMASK = 0x70;
/** XLOG_XACT_COMMIT, _ABORT, _COMMIT_PREPARED, _ABORT_PREPARED: the records a recovery_target_time stops at. */
const XACT_ENDS = new Set([0x00, 0x20, 0x30, 0x40]);
const PG_EPOCH_MS = 946_684_800_000n;

/** What {@link checkReach} found. */
export interface Reach {
  /** True when nothing is damaged before the target (or before `upTo`, for a time the WAL does not reach). */
  ok: boolean;
  /** End of the last good record checked: where a recovery would stop at the damage. */
  reached: Lsn;
  /** The first damage before the target. */
  error?: WalDecodeError;
  /** For a time target: true when a transaction ended at or after it (recovery stops there, before any damage after). */
  timeFound?: boolean;
  records: number;
}

/** xact_time of a commit or abort record (the first field of xl_xact_commit / xl_xact_abort), in ms since 1970. */
function xactEndTime(walker: RecordWalker): number | undefined {
  if (walker.rmid !== RM_XACT_ID || !XACT_ENDS.has(walker.info & XLOG_XACT_OPMASK) || walker.scan.mainLength < 8) return undefined;
  const data = walker.mainData();
  const micros = Buffer.from(data.buffer, data.byteOffset, 8).readBigInt64LE(0);
  return Number(micros / 1000n + PG_EPOCH_MS);
}

class Found extends Error {}

/**
 * Check WAL from the record at `from` up to `upTo` (the target LSN, or the end of the WAL at hand). With `time`,
 * checking stops at the first commit or abort at or after that time, where Postgres' recovery stops too.
 */
export async function checkReach(input: string | string[] | WalSource, options: { from: Lsn; upTo: Lsn; time?: Date }): Promise<Reach> {
  const target = options.time?.getTime();
  // Without a time, no record is looked at: segment files can be read into reused buffers.
  const source = typeof input === 'string' || Array.isArray(input) ? walFileSource(input, { reuse: target === undefined }) : input;
  const range = { from: options.from, upTo: options.upTo };
  if (target === undefined) {
    // Segments the WAL store verified when it served them moments ago are not walked again (see ./verdicts.ts).
    const result = await walkWal(source, { ...range, recentVerdicts: true });
    return { ok: result.ok, reached: result.lastValidLsn, error: result.error, records: result.records, timeFound: false };
  }
  let reached = -1;
  let records = 0;
  const visit = (walker: RecordWalker) => {
    if ((xactEndTime(walker) ?? -Infinity) >= target) throw new Found();
    reached = walker.endLsn;
    records++;
  };
  const reachedLsn = () => (reached < 0 ? options.from : BigInt(reached));
  try {
    const result = await walkWal(source, range, visit);
    return { ok: result.ok, reached: result.ok ? reachedLsn() : result.lastValidLsn, error: result.error, records, timeFound: false };
  } catch (error) {
    if (error instanceof Found) return { ok: true, reached: reachedLsn(), records, timeFound: true };
    throw error;
  }
}
