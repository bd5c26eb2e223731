import { PgError, textRows, type WireConnection } from './connection.js';
import { type Lsn, parseLsn } from '../core/wal.js';

/** What the archive stream delivers, in order: a new archive begins, its bytes, the backup manifest. */
export interface BaseBackupSink {
  /** A tar archive starts: `base.tar` for the data directory, `<oid>.tar` for a tablespace at `location`. */
  archive(name: string, location: string): void;
  /** Bytes of the current archive (tar, without the two trailing zero blocks). */
  data(chunk: Buffer): void;
  /** Bytes of the backup manifest (JSON), when one was asked for. */
  manifest?(chunk: Buffer): void;
}

/** Where a base backup begins (its checkpoint's redo point) and ends (where it becomes consistent). */
export interface BaseBackupResult {
  startLsn: Lsn;
  endLsn: Lsn;
  timeline: number;
}

/**
 * BASE_BACKUP over a replication connection, in the protocol of PostgreSQL 15 and later: one COPY OUT whose
 * CopyData messages start with a type byte ('n' new archive, 'd' data, 'p' progress, 'm' manifest), framed by
 * result sets carrying the start and end positions. Older servers use another shape; neon refuses them earlier.
 *
 * The sink is called synchronously from the socket's data handler: while it works, no more is read, so a sink
 * that processes each chunk before returning keeps memory bounded by the socket buffers.
 */
export async function baseBackup(
  connection: WireConnection,
  options: { label: string; fastCheckpoint?: boolean; manifest?: boolean },
  sink: BaseBackupSink,
): Promise<BaseBackupResult> {
  const major = parseInt(connection.parameters.server_version ?? '', 10);
  if (major < 15) throw new Error(`BASE_BACKUP: the server is PostgreSQL ${major}; neon needs 15 or newer`);
  const parts = [
    `LABEL '${options.label.replace(/'/g, "''")}'`,
    `CHECKPOINT '${options.fastCheckpoint === false ? 'spread' : 'fast'}'`,
    `MANIFEST '${options.manifest ? 'yes' : 'no'}'`,
    'WAIT false',
  ];
  let inManifest = false;
  let failure: Error | undefined;
  const results = await connection.copyOut(`BASE_BACKUP (${parts.join(', ')})`, (payload) => {
    if (failure) return;
    try {
      const kind = payload[0];
      if (kind === 0x6e /* n */) {
        const nameEnd = payload.indexOf(0, 1);
        const name = payload.toString('utf8', 1, nameEnd);
        const location = payload.toString('utf8', nameEnd + 1, payload.indexOf(0, nameEnd + 1));
        inManifest = false;
        sink.archive(name, location);
      } else if (kind === 0x6d /* m */) {
        inManifest = true;
      } else if (kind === 0x64 /* d */) {
        const data = payload.subarray(1);
        if (inManifest) sink.manifest?.(data);
        else sink.data(data);
      }
    } catch (error) {
      // Keep draining the stream (the server is still sending) and report the sink's error at the end.
      failure = error as Error;
    }
  });
  if (failure) throw failure;
  const positions = results.filter((r) => r.fields.includes('recptr'));
  if (positions.length < 2) throw new PgError({ M: 'BASE_BACKUP: the server did not report start and end positions', C: 'XX000' });
  const [start] = textRows(positions[0]);
  const [end] = textRows(positions[positions.length - 1]);
  return { startLsn: parseLsn(start.recptr!), endLsn: parseLsn(end.recptr!), timeline: Number(end.tli) };
}
