import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from '../lib/lazy-execa.js';
import { NeonError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fs-atomic.js';
import type { PgBinaries } from './binaries.js';
import { asUser, type PgUser } from './user.js';

/**
 * The role the daemon, the safekeepers, base images and replicas log in as. It has no password: it is let in
 * only over the Unix socket in the repository's private socket folder (mode 0700, owned by the Postgres user),
 * so no user action — a password change, a renamed user, a promote — can lock neon out of its own computes.
 */
export const INTERNAL_ROLE = 'neon_internal';

/** The statement that creates it (at initdb, or once on the first start of a repository made before it existed). */
export const CREATE_INTERNAL_ROLE = `CREATE ROLE ${INTERNAL_ROLE} WITH SUPERUSER REPLICATION LOGIN`;

// Postgres refuses socket paths over 107 bytes (sun_path); `.s.PGSQL.NNNNN.lock` is the longest name it makes.
const MAX_SOCKET_DIR = 107 - '/.s.PGSQL.65535.lock'.length;

/**
 * The private folder holding every compute's Unix socket: `<repo>/sockets`, or, when that path is too long for a
 * socket, a folder under the system temp dir named after the repository.
 */
export function socketDirOf(repoDir: string): string {
  const inRepo = path.join(repoDir, 'sockets');
  if (Buffer.byteLength(inRepo) <= MAX_SOCKET_DIR) return inRepo;
  const hash = createHash('sha256').update(path.resolve(repoDir)).digest('hex').slice(0, 16);
  return path.join(os.tmpdir(), `neon-${hash}`);
}

/**
 * Create the socket folder (mode 0700, owned by the Postgres user) or check one that exists: a folder that is
 * not ours, or open to others, is refused rather than used (it could be someone else's under /tmp).
 */
export function ensureSocketDir(dir: string, pgUser: PgUser | undefined): void {
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  try {
    if (pgUser) fs.chownSync(dir, pgUser.uid, pgUser.gid);
    fs.chmodSync(dir, 0o700);
  } catch {
    // not ours to change: the check below says so
  }
  const stat = fs.lstatSync(dir);
  const owner = pgUser?.uid ?? process.getuid?.();
  if (!stat.isDirectory() || (owner !== undefined && stat.uid !== owner) || (stat.mode & 0o077) !== 0) {
    throw new NeonError(
      'bad_socket_dir',
      `${dir} (the private socket folder of the computes) is not a folder of mode 0700 owned by the Postgres user: remove it and start again`,
    );
  }
}

const HBA_BEGIN = '# neon: internal access (begin)';
const HBA_END = '# neon: internal access (end)';
const HBA_BLOCK = [
  HBA_BEGIN,
  '# The daemon and the safekeepers log in as neon_internal over the private Unix socket only (no TCP line lets it in).',
  `local all ${INTERNAL_ROLE} trust`,
  `local replication ${INTERNAL_ROLE} trust`,
  HBA_END,
].join('\n');

/** pg_hba.conf text without neon's block (what an export hands to vanilla Postgres). */
export function withoutInternalHba(text: string): string {
  const begin = text.indexOf(HBA_BEGIN);
  const end = text.indexOf(HBA_END);
  return begin >= 0 && end > begin ? text.slice(0, begin) + text.slice(end + HBA_END.length).replace(/^\n/, '') : text;
}

/**
 * Put neon's lines first in a data directory's pg_hba.conf (first match wins), keeping the user's lines after
 * them. Done before every start, so clusters from older repositories and images get them too.
 */
export async function ensureInternalHba(dataDir: string, pgUser: PgUser | undefined): Promise<void> {
  const file = path.join(dataDir, 'pg_hba.conf');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return; // not a data directory (yet)
    throw error;
  }
  const wanted = `${HBA_BLOCK}\n${withoutInternalHba(text)}`;
  if (wanted === text) return;
  await writeFileAtomic(file, wanted, 0o600);
  if (pgUser) fs.chownSync(file, pgUser.uid, pgUser.gid);
}

/** Create the internal role in a stopped cluster, in single-user mode (right after initdb). */
export async function createInternalRoleOffline(binaries: PgBinaries, dataDir: string, pgUser: PgUser | undefined): Promise<void> {
  try {
    await execa(path.join(binaries.binDir, 'postgres'), ['--single', '-D', dataDir, '-c', 'exit_on_error=true', 'postgres'], {
      ...asUser(pgUser),
      input: `${CREATE_INTERNAL_ROLE};\n`,
      env: { LC_ALL: 'C', LANG: 'C' },
      extendEnv: true,
    });
  } catch (error) {
    const stderr = ((error as { stderr?: string }).stderr ?? '').trim().split('\n').slice(-3).join(' / ');
    throw new NeonError('initdb_failed', `creating the role ${INTERNAL_ROLE} in ${dataDir} failed: ${stderr || (error as Error).message}`, {
      status: 500,
    });
  }
}
