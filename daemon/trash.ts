import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fsyncDir } from '../core/fs-atomic.js';
import type { Logger } from '../core/log.js';
import { stopLeftovers } from '../postgres/postmaster.js';
import type { DaemonContext } from './context.js';
import type { RepoState, Repository } from './repository.js';

/**
 * Crash-safe removal of a compute's folder. Destroying a compute is: stop it, rename `computes/<name>` into
 * `trash/` (one atomic step: the tombstone), drop its record from state.json, then delete the trash folder. A crash
 * (a SIGKILLed daemon) at any point leaves either an intact compute or a tombstone that the next daemon start
 * completes ({@link finishDestroys}); never a half-deleted data directory that still has a record.
 */

/** `.neon/trash`: outside `computes/`, so that nothing that lists computes ever sees a folder being deleted. */
export function trashDir(repo: Repository): string {
  return path.join(repo.dir, 'trash');
}

const SEP = '@';

/**
 * A new, unused folder name in the trash for something of compute `name` (the trash is made if needed): the name
 * before {@link SEP} is what {@link finishDestroys} reads back.
 */
export function trashEntry(repo: Repository, name: string): string {
  const trash = trashDir(repo);
  fs.mkdirSync(trash, { recursive: true, mode: 0o700 });
  return path.join(trash, `${name}${SEP}${Date.now()}-${randomBytes(4).toString('hex')}`);
}

/** Move a compute's folder to the trash (a no-op when it has none); returns the trash folder. */
export async function moveToTrash(repo: Repository, name: string): Promise<string | undefined> {
  const home = path.join(repo.computesDir, name);
  if (!fs.existsSync(home)) return undefined;
  const trash = trashDir(repo);
  const target = trashEntry(repo, name);
  await fs.promises.rename(home, target);
  await fsyncDir(repo.computesDir);
  await fsyncDir(trash);
  return target;
}

/** The compute names that have a folder in the trash (a destroy that was under way). */
function trashedNames(repo: Repository): Set<string> {
  const dir = trashDir(repo);
  const entries = fs.existsSync(dir) ? fs.readdirSync(dir) : [];
  return new Set(entries.map((entry) => entry.slice(0, entry.lastIndexOf(SEP))).filter(Boolean));
}

/** Delete everything in the trash; Postgres processes still running in a trashed folder are stopped first. */
export async function emptyTrash(repo: Repository, log: Logger): Promise<void> {
  const dir = trashDir(repo);
  if (!fs.existsSync(dir)) return;
  for (const entry of fs.readdirSync(dir)) {
    const folder = path.join(dir, entry);
    const leftovers = await stopLeftovers(path.join(folder, 'pgdata'));
    if (leftovers.length) log.warn('stopped %d process(es) still running in the destroyed compute folder %s', leftovers.length, folder);
    await fs.promises.rm(folder, { recursive: true, force: true });
  }
}

/**
 * At daemon start, before any compute is supervised: finish the destroys a crash interrupted. A record whose
 * folder is in the trash (and not in `computes/`) is dropped from `state`, and the trash is emptied. Returns the
 * names of the computes whose destroy was finished; `state` is written back when it changed.
 */
export async function finishDestroys(repo: Repository, state: RepoState, log: Logger): Promise<string[]> {
  const trashed = trashedNames(repo);
  const finished: string[] = [];
  for (const name of Object.keys(state.computes)) {
    if (name === 'main' || !trashed.has(name) || fs.existsSync(path.join(repo.computesDir, name))) continue;
    delete state.computes[name];
    finished.push(name);
  }
  if (finished.length) {
    log.warn('finishing the destroy of compute(s) %s, interrupted by a crash', finished.join(', '));
    await repo.writeState(state);
  }
  await emptyTrash(repo, log);
  return finished;
}

/**
 * Stop a compute and remove its folder and record, crash-safe: the folder is renamed into the trash before the
 * record goes (the next daemon start finishes what a crash interrupted), then removed asynchronously — a data
 * directory holds a thousand files, and the daemon keeps answering meanwhile. Its branch stays.
 */
export async function discardCompute(daemon: DaemonContext, name: string): Promise<void> {
  await daemon.computes.get(name)?.stop();
  daemon.computes.delete(name);
  const trashed = await moveToTrash(daemon.repo, name);
  const state = await daemon.repo.readState();
  if (Object.hasOwn(state.computes, name)) {
    delete state.computes[name];
    await daemon.repo.writeState(state);
  }
  if (trashed) await fs.promises.rm(trashed, { recursive: true, force: true });
}
