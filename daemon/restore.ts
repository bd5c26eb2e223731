import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { NeonError } from '../core/errors.js';
import type { PgBinaries } from '../postgres/binaries.js';
import { asUser, type PgUser } from '../postgres/user.js';

/** Where a restore from storage alone ended. */
export interface Recovered {
  /** The LSN replay reached: every commit before it is back. */
  lsn: string | null;
  /** Commit time of the last transaction replayed (Postgres' text form), when one was replayed. */
  time: string | null;
}

/** Options of {@link recoverWithNewPassword}. */
export interface RecoverOptions {
  binaries: PgBinaries;
  dataDir: string;
  pgUser?: PgUser;
  /** Recovery settings (restore_command, …) as the pageserver prepared them. */
  settings: Record<string, string>;
  /** The main login, whose password is set to `password`. */
  user: string;
  database: string;
  password: string;
}

const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;

/**
 * Replay the WAL of a restored data directory to its end in a single-user Postgres (no socket, no TCP: nobody
 * can connect while it runs), then give the main user a new password. The storage_dest never holds the password
 * (only the database's own SCRAM verifier, which cannot log in), so a machine that restores from storage alone
 * sets a new one: the SQL goes over stdin, never on a command line. Returns where replay ended.
 */
export async function recoverWithNewPassword(options: RecoverOptions): Promise<Recovered> {
  const { binaries, dataDir, settings } = options;
  // hot_standby off: a single-user backend that also tried to serve reads during recovery fails ("sinval slot
  // for backend 0 is already in use").
  const flags = Object.entries({ ...settings, hot_standby: 'off', password_encryption: 'scram-sha-256' }).flatMap(([key, value]) => ['-c', `${key}=${value}`]);
  const input = [
    "select pg_last_wal_replay_lsn()::text as neon_lsn, coalesce(pg_last_xact_replay_timestamp()::text, '') as neon_time",
    `alter role ${quoteIdent(options.user)} password '${options.password.replace(/'/g, "''")}'`,
    '',
  ].join('\n');
  const run = await execa(path.join(binaries.binDir, 'postgres'), ['--single', '-D', dataDir, ...flags, options.database], {
    ...asUser(options.pgUser),
    input,
    reject: false,
    env: { LC_ALL: 'C', LANG: 'C' },
    extendEnv: true,
  });
  const errors = `${run.stderr}`.split('\n').filter((line) => /\b(FATAL|ERROR|PANIC)\b/.test(line));
  if (run.exitCode !== 0 || errors.length) {
    throw new NeonError(
      'recovery_failed',
      `replaying the WAL from storage failed: ${errors.slice(-2).join(' / ') || `postgres --single exited with ${run.exitCode}`}`,
      { status: 500 },
    );
  }
  const field = (name: string) => new RegExp(`\\b${name} = "([^"]*)"`).exec(`${run.stdout}`)?.[1] || null;
  return { lsn: field('neon_lsn'), time: field('neon_time') };
}

/** Remove the folder of WAL staged for a recovery that is done. */
export async function removeStagedWal(walDir: string): Promise<void> {
  await fs.rm(walDir, { recursive: true, force: true });
}
