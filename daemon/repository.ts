import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { NeonError } from '../core/errors.js';
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

  /** True once `init` has completed (its last step writes config.json). */
  async exists(): Promise<boolean> {
    return (await readJson(this.metaFile)) !== undefined;
  }

  async readMeta(): Promise<RepoMeta> {
    const meta = await readJson<RepoMeta>(this.metaFile);
    if (!meta) throw new NeonError('no_repository', `no neon repository at ${this.dir}: run \`neon init\` or \`neon start\``);
    if (meta.formatVersion !== 1) {
      throw new NeonError('bad_repository', `${this.metaFile} has format version ${meta.formatVersion}; this neon reads version 1`);
    }
    return meta;
  }

  writeMeta(meta: RepoMeta): Promise<void> {
    return writeFileAtomic(this.metaFile, JSON.stringify(meta, null, 2) + '\n');
  }

  async readState(): Promise<RepoState> {
    return (await readJson<RepoState>(this.stateFile)) ?? { computes: {} };
  }

  writeState(state: RepoState): Promise<void> {
    return writeFileAtomic(this.stateFile, JSON.stringify(state, null, 2) + '\n', 0o600);
  }

  /** Create the bearer token the REST API requires (mode 0600, only the owner can read it). */
  async createToken(): Promise<string> {
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

/** The repository folder: `--repo`, else NEON_REPO_DIR, else `.neon` in the current folder. */
export function repoDirFrom(option: string | undefined, cwd = process.cwd()): string {
  return path.resolve(cwd, option || process.env.NEON_REPO_DIR || '.neon');
}
