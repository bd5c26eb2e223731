import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { NeonError } from '../core/errors.js';

/** The OS user Postgres processes run as when neon itself runs as root. */
export interface PgUser {
  name: string;
  uid: number;
  gid: number;
}

/** True when this process runs as root (Postgres will not). */
export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/**
 * The unprivileged user for Postgres when running as root, or undefined when neon is not root (then Postgres
 * runs as neon's own user). No such user → an error saying how to create one.
 */
export function pgUserFor(name = 'postgres'): PgUser | undefined {
  if (!isRoot()) return undefined;
  const entry = lookupPasswd(name);
  if (!entry) {
    throw new NeonError(
      'no_pg_user',
      `Postgres refuses to run as root and there is no user "${name}" to run it as: create one ` +
        `(useradd --system --user-group --home-dir /nonexistent ${name}), set postgres.user in neon.config.ts, or run neon as a normal user`,
    );
  }
  if (entry.uid === 0) throw new NeonError('no_pg_user', `postgres.user "${name}" is root (uid 0); Postgres needs an unprivileged user`);
  return entry;
}

function lookupPasswd(name: string): PgUser | undefined {
  let text: string;
  try {
    text = execFileSync('getent', ['passwd', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return undefined;
  }
  const [user, , uid, gid] = text.trim().split(':');
  return user === name ? { name, uid: Number(uid), gid: Number(gid) } : undefined;
}

/** Options for child processes that must run as the Postgres user (empty when neon is not root). */
export function asUser(user: PgUser | undefined): { uid?: number; gid?: number } {
  return user ? { uid: user.uid, gid: user.gid } : {};
}

/** Give `target` (and, with `recursive`, everything under it) to the Postgres user. */
export async function chownTo(user: PgUser | undefined, target: string, recursive = false): Promise<void> {
  if (!user) return;
  await fs.lchown(target, user.uid, user.gid);
  if (!recursive) return;
  for (const entry of await fs.readdir(target, { withFileTypes: true })) {
    const child = path.join(target, entry.name);
    if (entry.isDirectory()) await chownTo(user, child, true);
    else await fs.lchown(child, user.uid, user.gid);
  }
}

/** The first of `paths` the Postgres user cannot reach, by running `test -x` as that user (exactly what it sees). */
export function unreachable(user: PgUser | undefined, paths: string[]): string | undefined {
  if (!user) return undefined;
  const script = 'for p; do test -x "$p" || { printf %s "$p"; exit 1; }; done';
  const result = spawnSync('/bin/sh', ['-c', script, 'sh', ...paths], { uid: user.uid, gid: user.gid, encoding: 'utf8' });
  return result.status === 0 ? undefined : result.stdout || paths[0];
}

/** Check that the Postgres user can reach each path (search permission on every parent folder). */
export function checkReachable(user: PgUser | undefined, paths: string[]): void {
  const blocked = unreachable(user, paths);
  if (blocked) {
    throw new NeonError(
      'pg_user_cannot_reach',
      `the Postgres user "${user!.name}" cannot reach ${blocked}: give it search permission on every parent folder ` +
        `(chmod o+x on each), or set NEON_REPO_DIR to a folder it can reach`,
    );
  }
}
