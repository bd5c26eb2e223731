import fs from 'node:fs';
import path from 'node:path';

/** What neon reads from `global/pg_control` (the fields sit at the same offsets in PostgreSQL 15 to 17). */
export interface ControlData {
  systemId: string;
  /** 1 = shut down, 2 = shut down in recovery, 3 = shutting down, 4 = in crash recovery, 6 = in production. */
  state: number;
  /** The latest checkpoint record. */
  checkpoint: bigint;
  /** Its redo point: where replay starts. */
  redo: bigint;
  timeline: number;
}

/**
 * Read pg_control without pg_controldata (the embedded binaries do not ship it). Layout of ControlFileData:
 * system_identifier u64 @0, pg_control_version u32 @8, catalog_version_no u32 @12, state u32 @16, time i64 @24,
 * checkPoint u64 @32, then CheckPoint: redo u64 @40, ThisTimeLineID u32 @48.
 */
export function readControlFile(dataDir: string): ControlData {
  const buffer = fs.readFileSync(path.join(dataDir, 'global', 'pg_control'));
  return {
    systemId: buffer.readBigUInt64LE(0).toString(),
    state: buffer.readUInt32LE(16),
    checkpoint: buffer.readBigUInt64LE(32),
    redo: buffer.readBigUInt64LE(40),
    timeline: buffer.readUInt32LE(48),
  };
}

/** True when the cluster was shut down cleanly (a consistent image can be taken from its files). */
export function isCleanShutdown(control: ControlData): boolean {
  return control.state === 1 || control.state === 2;
}
