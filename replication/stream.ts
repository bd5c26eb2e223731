import { textRows, type WireConnection } from './connection.js';
import { type Lsn, parseLsn, pgNow } from '../core/wal.js';

/** WAL bytes from the server (XLogData): `data` belongs at `start`; `walEnd` is the server's flush position. */
export interface XLogData {
  kind: 'wal';
  start: Lsn;
  walEnd: Lsn;
  data: Buffer;
}

/** A primary keepalive: the server's position, and whether it wants an answer now. */
export interface Keepalive {
  kind: 'keepalive';
  walEnd: Lsn;
  replyRequested: boolean;
}

/** Decode one CopyData payload of a physical replication stream. */
export function parseStreamMessage(payload: Buffer): XLogData | Keepalive | undefined {
  const tag = payload[0];
  if (tag === 0x77 /* w */) {
    return { kind: 'wal', start: payload.readBigUInt64BE(1), walEnd: payload.readBigUInt64BE(9), data: payload.subarray(25) };
  }
  if (tag === 0x6b /* k */) {
    return { kind: 'keepalive', walEnd: payload.readBigUInt64BE(1), replyRequested: payload[17] === 1 };
  }
  return undefined;
}

/** A standby status update: what was written, flushed (fsynced) and applied. */
export function standbyStatus(write: Lsn, flush: Lsn, apply: Lsn, replyRequested = false): Buffer {
  const message = Buffer.alloc(34);
  message[0] = 0x72; // r
  message.writeBigUInt64BE(write, 1);
  message.writeBigUInt64BE(flush, 9);
  message.writeBigUInt64BE(apply, 17);
  message.writeBigInt64BE(pgNow(), 25);
  message[33] = replyRequested ? 1 : 0;
  return message;
}

/** IDENTIFY_SYSTEM: the cluster's identity, current timeline and flush position. */
export async function identifySystem(connection: WireConnection): Promise<{ systemId: string; timeline: number; xlogpos: Lsn }> {
  const [row] = textRows(await connection.query('IDENTIFY_SYSTEM'));
  return { systemId: row.systemid!, timeline: Number(row.timeline), xlogpos: parseLsn(row.xlogpos!) };
}

/** TIMELINE_HISTORY: the history file of a timeline (its name and raw content). */
export async function timelineHistory(connection: WireConnection, timeline: number): Promise<{ name: string; content: Buffer }> {
  const result = await connection.query(`TIMELINE_HISTORY ${timeline}`);
  const [name, content] = result.rows[0];
  return { name: name!.toString(), content: content ?? Buffer.alloc(0) };
}

/** The server's WAL segment size in bytes (`SHOW wal_segment_size` works on walsender connections). */
export async function walSegmentSize(connection: WireConnection): Promise<number> {
  const [row] = textRows(await connection.query('SHOW wal_segment_size'));
  const match = /^(\d+)\s*(kB|MB|GB)?$/.exec(row.wal_segment_size ?? '');
  if (!match) throw new Error(`cannot read wal_segment_size ("${row.wal_segment_size}")`);
  const unit = { kB: 1024, MB: 1024 * 1024, GB: 1024 * 1024 * 1024 }[match[2] as 'kB' | 'MB' | 'GB'] ?? 1;
  return Number(match[1]) * unit;
}

/**
 * Make sure a physical replication slot exists (READ_REPLICATION_SLOT, PostgreSQL 15+), creating it with
 * RESERVE_WAL when it does not. Returns true when it had to be created.
 */
export async function ensurePhysicalSlot(connection: WireConnection, slot: string): Promise<boolean> {
  const [row] = textRows(await connection.query(`READ_REPLICATION_SLOT ${slot}`));
  if (row?.slot_type === 'physical') return false;
  if (row?.slot_type) throw new Error(`replication slot ${slot} exists but is ${row.slot_type}, not physical`);
  await connection.query(`CREATE_REPLICATION_SLOT ${slot} PHYSICAL RESERVE_WAL`);
  return true;
}
