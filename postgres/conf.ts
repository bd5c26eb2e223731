import path from 'node:path';
import { writeFileAtomic } from '../core/fs-atomic.js';
import { ensureInternalHba } from './internal.js';
import { chownTo, type PgUser } from './user.js';

/** Settings of a compute, written to `neon.conf` in its data directory before each start. */
export interface ComputeSettings {
  port: number;
  sharedBuffers?: string;
  /** Name shown in `ps` (`postgres: neon-main: …`). */
  clusterName: string;
  /** The private socket folder (mode 0700) where the internal role gets in; none: TCP only. */
  socketDir?: string;
  extra?: Record<string, string | number | boolean>;
}

function quote(value: string | number | boolean): string {
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return `'${value.replace(/'/g, "''")}'`;
}

/**
 * Write `neon.conf`: clients on TCP 127.0.0.1, neon's internal role on a Unix socket in the private socket folder
 * (readable by the Postgres user only; pg_hba.conf lets that role in there and nowhere else), the WAL and replication settings that safekeepers, base images and replicas need, and the user's extras.
 */
export async function writeComputeConf(dataDir: string, settings: ComputeSettings, pgUser?: PgUser): Promise<void> {
  const values: Record<string, string | number | boolean> = {
    listen_addresses: '127.0.0.1',
    port: settings.port,
    unix_socket_directories: settings.socketDir ?? '',
    unix_socket_permissions: '0700',
    cluster_name: settings.clusterName,
    shared_buffers: settings.sharedBuffers ?? '128MB',
    password_encryption: 'scram-sha-256',
    wal_level: 'replica',
    max_wal_senders: 16,
    max_replication_slots: 16,
    wal_keep_size: '128MB',
    hot_standby: true,
    logging_collector: false,
    log_destination: 'stderr',
    log_line_prefix: '%m [%p] ',
    ...settings.extra,
  };
  const lines = Object.entries(values).map(([key, value]) => `${key} = ${quote(value)}`);
  const file = path.join(dataDir, 'neon.conf');
  await writeFileAtomic(
    file,
    `# Written by neon; edits are replaced at the next start. Use postgres.settings in neon.config.ts.\n${lines.join('\n')}\n`,
    0o600,
  );
  await chownTo(pgUser, file);
  if (settings.socketDir) await ensureInternalHba(dataDir, pgUser);
}
