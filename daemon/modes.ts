import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../core/log.js';
import type { PgUser } from '../postgres/user.js';
import type { Repository } from './repository.js';

/**
 * Who may read a repository. Everything under `.neon` that holds data (the plain image cache is a full copy of the
 * database with pg_authid's password verifiers; WAL, chunk packs, logs, state.json with passwords) is its owner's
 * only: files 0600, folders 0700. One exception, because Postgres must get to its data directory when neon runs as
 * root and Postgres as the unprivileged Postgres user: the folders on the way there (`.neon`, `.neon/computes`,
 * `.neon/computes/<name>`) are 0710 with the Postgres user's group: that group may pass through them, not list
 * them, and nobody else may even pass. The data directories themselves are the Postgres user's, 0700.
 */
const PRIVATE_FILE = 0o600;
const PRIVATE_DIR = 0o700;
const PASSABLE_DIR = 0o710;

/** Mode and group of the folders on the Postgres user's way to its data directories. */
function passage(pgUser: PgUser | undefined): { mode: number; gid?: number } {
  return pgUser ? { mode: PASSABLE_DIR, gid: pgUser.gid } : { mode: PRIVATE_DIR };
}

function setPassage(dir: string, pgUser: PgUser | undefined): void {
  const { mode, gid } = passage(pgUser);
  if (gid !== undefined) fs.chownSync(dir, process.getuid?.() ?? -1, gid);
  fs.chmodSync(dir, mode);
}

/**
 * Make the repository private, at daemon start. Sets the process umask to 077, so that every file and folder the
 * daemon and the processes it starts (safekeepers, Postgres) create from now on is private without each place
 * having to say so. A repository whose top folder is not private yet (made by `init`, which runs in the CLI, or by
 * an older neon) is walked once and every group and other permission removed; later starts only check the top.
 */
export function makePrivate(repo: Repository, pgUser: PgUser | undefined, log: Logger): void {
  process.umask(0o077);
  const { mode, gid } = passage(pgUser);
  const top = fs.statSync(repo.dir);
  if ((top.mode & 0o777) !== mode || (gid !== undefined && top.gid !== gid)) {
    const changed = tighten(repo.dir);
    if (changed) log.info('made %d file(s) and folder(s) of %s readable by their owner only', changed, repo.dir);
  }
  // Written by `neon start` (in the CLI, before this daemon ran) with its own mode.
  for (const file of [repo.logFile('daemon')]) if (fs.existsSync(file)) fs.chmodSync(file, PRIVATE_FILE);
  setPassage(repo.computesDir, pgUser);
  for (const entry of fs.readdirSync(repo.computesDir, { withFileTypes: true })) {
    if (entry.isDirectory()) setPassage(path.join(repo.computesDir, entry.name), pgUser);
  }
  setPassage(repo.dir, pgUser);
}

/** Remove group and other permissions from everything under `dir` (symlinks left alone); returns how many changed. */
function tighten(dir: string): number {
  let changed = 0;
  const visit = (target: string) => {
    const stat = fs.lstatSync(target);
    if (stat.isSymbolicLink()) return;
    if (stat.mode & 0o077) {
      fs.chmodSync(target, stat.mode & 0o7700);
      changed++;
    }
    if (stat.isDirectory()) for (const entry of fs.readdirSync(target)) visit(path.join(target, entry));
  };
  visit(dir);
  return changed;
}

/** Create a compute's folder with the access of `computes/` (the Postgres user passes through it to pgdata). */
export function makeComputeHome(home: string): void {
  fs.mkdirSync(home, { recursive: true });
  const parent = fs.statSync(path.dirname(home));
  fs.chownSync(home, parent.uid, parent.gid);
  fs.chmodSync(home, parent.mode & 0o7777);
}
