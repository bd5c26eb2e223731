import fs from 'node:fs';
import path from 'node:path';
import { NeonError, messageOf } from '../core/errors.js';
import type { StorageRequest } from '../core/storage.js';
import { findBinaries } from '../postgres/binaries.js';
import type { ComputeRecord, RepoMeta, RepoState, Repository } from './repository.js';

// `neon doctor` and `neon repair`: a repository whose config.json or state.json is gone (deleted by hand, a sync
// tool, a disk problem) still holds every branch, snapshot and row. These rebuild the two files from what is on
// disk instead of recreating the repository; an unreadable file is kept aside, never deleted.

/** One thing `neon doctor` found. */
export interface Finding {
  file: string;
  problem: string;
}

/** What is wrong with the repository's own files; empty when they read well. */
export async function diagnose(repo: Repository): Promise<Finding[]> {
  const found: Finding[] = [];
  for (const [file, read] of [
    [repo.metaFile, () => repo.readMeta()],
    [repo.stateFile, () => repo.readState()],
  ] as const) {
    try {
      await read();
    } catch (error) {
      found.push({ file, problem: messageOf(error).split(', but ')[0] });
    }
  }
  return found;
}

/** Options of {@link repairRepository}. */
export interface RepairOptions {
  /** Folder whose neon.config.* applies (recorded in the rebuilt config.json). */
  projectDir: string;
  /** The storage_dest the repository was made with, when config.json has to be rebuilt. */
  storageDest?: StorageRequest;
}

/** Rebuild config.json and state.json where they are missing or unreadable; answers what was rebuilt. */
export async function repairRepository(repo: Repository, options: RepairOptions): Promise<{ repaired: string[]; notes: string[] }> {
  const status = await repo.inspect();
  if (status === 'absent') throw new NeonError('no_repository', `no neon repository at ${repo.dir}: nothing to repair`);
  const repaired: string[] = [];
  const notes: string[] = [];
  const records = computeRecords(repo, notes);
  if (!(await readable(() => repo.readMeta()))) {
    await repo.writeMeta(await rebuildMeta(repo, records, options));
    repaired.push(repo.metaFile);
  }
  if (!(await readable(() => repo.readState()))) {
    if (!records.some((r) => r.name === 'main')) notes.push('no record of the main compute was found: create computes with neon pg create');
    keepAside(repo.stateFile);
    await repo.writeState({ computes: Object.fromEntries(records.map((r) => [r.name, r])) } satisfies RepoState);
    repaired.push(repo.stateFile);
  }
  return { repaired, notes };
}

async function readable(read: () => Promise<unknown>): Promise<boolean> {
  try {
    await read();
    return true;
  } catch {
    return false;
  }
}

/** The records each compute keeps beside its data (`computes/<name>/compute.json`, written with state.json). */
function computeRecords(repo: Repository, notes: string[]): ComputeRecord[] {
  const names = fs.existsSync(repo.computesDir) ? fs.readdirSync(repo.computesDir) : [];
  const records: ComputeRecord[] = [];
  for (const name of names.sort()) {
    const file = path.join(repo.computesDir, name, 'compute.json');
    try {
      records.push(JSON.parse(fs.readFileSync(file, 'utf8')) as ComputeRecord);
    } catch {
      notes.push(`computes/${name} has no readable compute.json: its data is kept but it is not listed`);
    }
  }
  return records;
}

/** config.json from the data directories: the Postgres major of main's data, the binaries for it. */
async function rebuildMeta(repo: Repository, records: ComputeRecord[], options: RepairOptions): Promise<RepoMeta> {
  const main = records.find((r) => r.name === 'main') ?? records[0];
  const versionFile = main ? path.join(repo.dataDirOf(main), 'PG_VERSION') : path.join(repo.computesDir, 'main', 'pgdata', 'PG_VERSION');
  let version: number;
  try {
    version = Number(fs.readFileSync(versionFile, 'utf8').trim());
  } catch {
    throw new NeonError('repair_failed', `cannot tell the PostgreSQL version: ${versionFile} is unreadable`);
  }
  if (fs.existsSync(path.join(repo.dir, 'offload')) && !options.storageDest) {
    throw new NeonError(
      'repair_needs_storage',
      `${repo.dir} pushed its history to a storage_dest: pass the one given to neon init (neon repair --storage_dest=URL)`,
    );
  }
  keepAside(repo.metaFile);
  return {
    formatVersion: 1,
    createdAt: new Date().toISOString(),
    projectDir: path.resolve(options.projectDir),
    ...(options.storageDest ? { storageDest: options.storageDest.url } : {}),
    postgres: await findBinaries({ version }),
    plugins: [],
  };
}

/** Move an unreadable file out of the way (`state.json.broken-<time>`) so that nothing is lost by repairing. */
function keepAside(file: string): void {
  if (fs.existsSync(file)) fs.renameSync(file, `${file}.broken-${new Date().toISOString().replace(/[:.]/g, '-')}`);
}
