import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { NeonError } from '../core/errors.js';
import type { PgBinaries } from './binaries.js';
import { createInternalRoleOffline, ensureInternalHba } from './internal.js';
import { asUser, chownTo, type PgUser } from './user.js';

/** How neon creates clusters: data checksums, SCRAM everywhere, UTF-8 with the C locale (benchmarks use the same). */
export const INITDB_FLAGS = [
  '--auth-local=scram-sha-256',
  '--auth-host=scram-sha-256',
  '--data-checksums',
  '--encoding=UTF8',
  '--locale=C',
  '--no-instructions',
];

/** What {@link initdb} creates. */
export interface InitdbOptions {
  binaries: PgBinaries;
  dataDir: string;
  /** Superuser name and password (SCRAM, for TCP and local connections alike). */
  superuser: string;
  password: string;
  pgUser?: PgUser;
}

/**
 * Create a data directory: data checksums on, SCRAM authentication everywhere (TCP and replication from
 * localhost included, which initdb's pg_hba.conf allows), the internal role (`neon_internal`, let in over the
 * private Unix socket only), and postgresql.conf including the `neon.conf` that
 * the daemon writes before every start.
 */
export async function initdb(options: InitdbOptions): Promise<void> {
  const { binaries, dataDir, pgUser } = options;
  // recursive mkdir gives every folder it makes the same mode: the parents must stay reachable.
  await fs.mkdir(path.dirname(dataDir), { recursive: true, mode: 0o755 });
  await fs.mkdir(dataDir, { mode: 0o700 });
  await chownTo(pgUser, dataDir);
  // The password reaches initdb through a file only its user can read: never on a command line.
  const pwfile = path.join(path.dirname(dataDir), `.pwfile-${process.pid}`);
  await fs.writeFile(pwfile, options.password + '\n', { mode: 0o600 });
  await chownTo(pgUser, pwfile);
  try {
    await execa(path.join(binaries.binDir, 'initdb'), ['-D', dataDir, '-U', options.superuser, `--pwfile=${pwfile}`, ...INITDB_FLAGS], {
      ...asUser(pgUser),
      env: { LC_ALL: 'C', LANG: 'C' },
      extendEnv: true,
    });
  } catch (error) {
    const stderr = ((error as { stderr?: string }).stderr ?? '').trim().split('\n').slice(-3).join(' / ');
    throw new NeonError('initdb_failed', `initdb failed in ${dataDir}: ${stderr || (error as Error).message}`, { status: 500 });
  } finally {
    await fs.rm(pwfile, { force: true });
  }
  await fs.appendFile(path.join(dataDir, 'postgresql.conf'), "\n# Written by neon before every start.\ninclude_if_exists = 'neon.conf'\n");
  // neon's own way in, part of the cluster from its first image on.
  await createInternalRoleOffline(binaries, dataDir, pgUser);
  await ensureInternalHba(dataDir, pgUser);
}
