import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { messageOf, NeonError } from '../core/errors.js';
import { readJson, writeFileAtomic } from '../core/fs-atomic.js';
import type { PgBinaries } from '../postgres/binaries.js';

/** Where Postgres binaries came from and which they are, fixed when the repository is created. */
export type RepoPostgres = PgBinaries;

/** `config.json`: the snapshot of the settings a repository was created with. Written last by `init`. */
export interface RepoMeta {
  formatVersion: 1;
  createdAt: string;
  /** The folder whose neon.config.* the daemon loads. */
  projectDir: string;
  /** Normalised storage destination, if one was given. */
  storageDest?: string;
  postgres: RepoPostgres;
  /** Names of the plugins that were configured at init, for `neon status`. */
  plugins: string[];
}

/** One compute (a Postgres server over a data directory of the repository). */
export interface ComputeRecord {
  name: string;
  branch: string;
  /** Data directory, relative to the repository. */
  dataDir: string;
  /** Last port it ran on; reused when free. */
  port: number;
  user: string;
  password: string;
  database: string;
  /** Whether it should be running while the daemon runs (kept across `neon stop` / `neon start`). */
  running: boolean;
  createdAt: string;
  /** A read-only compute frozen at a point of history (recovery paused there). */
  readOnly?: boolean;
  /** A hot standby following its branch's primary. */
  replica?: boolean;
  /** A primary that a promoted replica replaced on its branch: it must not start again. */
  retired?: string;
  /** The point it was made at, as asked (snapshot name, LSN or time). */
  at?: string;
  /**
   * Set while its data directory still has to reach a point by archive recovery: the settings of that recovery,
   * and the state that ends it (promoted: a primary; paused: a static compute, which keeps them).
   */
  recovery?: { settings: Record<string, string>; until: 'promoted' | 'paused' | 'standby'; walDir?: string };
}

/** A compute that writes its branch's WAL (not a static compute, not a replica). */
export function isPrimary(record: ComputeRecord): boolean {
  return !record.readOnly && !record.replica;
}

/** `state.json`: what the daemon keeps between runs. Holds passwords, so it is mode 0600. */
export interface RepoState {
  computes: Record<string, ComputeRecord>;
}

/** `daemon.json`: how the CLI reaches a running daemon. */
export interface DaemonInfo {
  pid: number;
  port: number;
  startedAt: string;
}

/** The repository folder (`.neon/` by default) and the files in it. */
export class Repository {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = path.resolve(dir);
  }

  get metaFile() {
    return path.join(this.dir, 'config.json');
  }
  get stateFile() {
    return path.join(this.dir, 'state.json');
  }
  get tokenFile() {
    return path.join(this.dir, 'token');
  }
  get daemonFile() {
    return path.join(this.dir, 'daemon.json');
  }
  get pidFile() {
    return path.join(this.dir, 'daemon.pid');
  }
  get logsDir() {
    return path.join(this.dir, 'logs');
  }
  get computesDir() {
    return path.join(this.dir, 'computes');
  }

  /** Log file of a component, e.g. `logs/compute-main.log`. */
  logFile(component: string): string {
    return path.join(this.logsDir, `${component}.log`);
  }

  /** Absolute data directory of a compute. */
  dataDirOf(compute: ComputeRecord): string {
    return path.resolve(this.dir, compute.dataDir);
  }

  /** Present while `init` runs: a folder with it and no config.json is a half-made repository, safe to redo. */
  get initMarker() {
    return path.join(this.dir, 'init.incomplete');
  }

  /** True once `init` has completed (its last step writes config.json). */
  async exists(): Promise<boolean> {
    return fsSync.existsSync(this.metaFile);
  }

  /**
   * What is in the folder: nothing of neon's (`absent`), a repository `init` never finished (`half-made`: only
   * init's own files, safe to redo), or content whose config.json is gone (`broken`: never recreated on a guess).
   */
  async inspect(): Promise<'absent' | 'half-made' | 'complete' | 'broken'> {
    if (await this.exists()) return 'complete';
    const present = REPO_ENTRIES.filter((entry) => fsSync.existsSync(path.join(this.dir, entry)));
    if (present.length === 0) return 'absent';
    return fsSync.existsSync(this.initMarker) ? 'half-made' : 'broken';
  }

  async readMeta(): Promise<RepoMeta> {
    const meta = await readState<RepoMeta>(this.metaFile);
    if (!meta) {
      if ((await this.inspect()) === 'broken') throw brokenRepository(this.dir, `${this.metaFile} is missing`);
      throw new NeonError('no_repository', `no neon repository at ${this.dir}: run \`neon init\` or \`neon start\``);
    }
    if (meta.formatVersion !== 1) {
      throw new NeonError('bad_repository', `${this.metaFile} has format version ${meta.formatVersion}; this neon reads version 1`);
    }
    return meta;
  }

  writeMeta(meta: RepoMeta): Promise<void> {
    return writeFileAtomic(this.metaFile, JSON.stringify(meta, null, 2) + '\n');
  }

  /** state.json; missing or unreadable is an error that says how to repair it, never an empty repository. */
  async readState(): Promise<RepoState> {
    const state = await readState<RepoState>(this.stateFile);
    if (!state) throw brokenRepository(this.dir, `${this.stateFile} is missing`);
    if (typeof state.computes !== 'object' || state.computes === null) {
      throw brokenRepository(this.dir, `${this.stateFile} has no "computes"`);
    }
    return state;
  }

  /**
   * Write state.json, and each compute's record beside its data (`computes/<name>/compute.json`): from those
   * `neon repair` rebuilds a lost state.json with every password intact.
   */
  async writeState(state: RepoState): Promise<void> {
    await writeFileAtomic(this.stateFile, JSON.stringify(state, null, 2) + '\n', 0o600);
    for (const record of Object.values(state.computes)) {
      const dir = path.join(this.computesDir, record.name);
      // A compute being destroyed has no folder any more: its record must not bring one back.
      if (fsSync.existsSync(dir)) await writeFileAtomic(path.join(dir, 'compute.json'), JSON.stringify(record, null, 2) + '\n', 0o600);
    }
  }

  /** Create the bearer token the REST API requires (mode 0600, only the owner can read it). */
  async createToken(): Promise<string> {
    // Imported here: loading node:crypto would cost every CLI call (they all import this module) ~20 ms.
    const { randomBytes } = await import('node:crypto');
    const token = randomBytes(32).toString('base64url');
    await writeFileAtomic(this.tokenFile, token + '\n', 0o600);
    return token;
  }

  async readToken(): Promise<string> {
    try {
      return (await fs.readFile(this.tokenFile, 'utf8')).trim();
    } catch {
      throw new NeonError('no_token', `cannot read the API token ${this.tokenFile}: run neon as the user who created the repository`);
    }
  }

  readDaemonInfo(): Promise<DaemonInfo | undefined> {
    return readJson<DaemonInfo>(this.daemonFile);
  }
}

/** Entries `init` creates; --force and the clean-up of a half-made repository remove these and nothing else. */
export const REPO_ENTRIES = [
  'config.json',
  'state.json',
  'token',
  'daemon.json',
  'daemon.pid',
  'logs',
  'computes',
  'safekeepers',
  'offload',
  'pageserver',
  'sockets',
  'storages.json',
  'claim.json',
  'pulled',
  'exports',
  'trash',
];

function brokenRepository(dir: string, what: string): NeonError {
  return new NeonError(
    'broken_repository',
    `${what}, but ${dir} holds a neon repository: nothing was changed. Run \`neon repair\` to rebuild it from what is on disk, ` +
      `or \`neon init --force\` to delete the repository and start over`,
  );
}

/** Read a JSON state file: undefined when it does not exist; empty or unparsable is a `broken_repository` error. */
async function readState<T>(file: string): Promise<T | undefined> {
  try {
    return await readJson<T>(file);
  } catch (error) {
    throw brokenRepository(path.dirname(file), `${file} cannot be read (${messageOf(error)})`);
  }
}

/** The repository folder: `--repo`, else NEON_REPO_DIR, else `.neon` in the current folder. */
export function repoDirFrom(option: string | undefined, cwd = process.cwd()): string {
  return path.resolve(cwd, option || process.env.NEON_REPO_DIR || '.neon');
}
