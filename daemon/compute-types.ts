import type { NeonHooks } from '../core/hooks.js';
import type { Launcher } from '../core/launcher.js';
import type { Logger } from '../core/log.js';
import type { PgBinaries } from '../postgres/binaries.js';
import type { PgUser } from '../postgres/user.js';
import type { ComputeRecord, Repository } from './repository.js';

/** Life of a compute as shown by `neon status` and `GET /pgs`. */
export type ComputeState = 'stopped' | 'starting' | 'running' | 'stopping' | 'restarting' | 'failed';

/** What the REST API says about a compute. */
export interface ComputeInfo {
  name: string;
  branch: string;
  state: ComputeState;
  pid: number | null;
  port: number;
  data_dir: string;
  log_file: string;
  connection_string: string;
  /** Automatic restarts after unexpected exits since the compute was last started by request. */
  restarts: number;
  /** While `restarting`: when the next attempt is due. */
  next_restart_at?: string;
  last_exit?: { code: number | null; signal: string | null; at: string };
  read_only: boolean;
  /** A hot standby following its branch's primary. */
  replica: boolean;
  /** The point of history it was made at, for a static compute. */
  at: string | null;
  /** Where its last recovery stopped (after a start at a point of history). */
  reached_lsn: string | null;
}

/** What a compute needs from the daemon. */
export interface ComputeDeps {
  repo: Repository;
  binaries: PgBinaries;
  pgUser?: PgUser;
  /** The private Unix socket folder where the daemon and safekeepers log in (see postgres/internal.ts). */
  socketDir: string;
  launcher: Launcher;
  hooks: NeonHooks;
  log: Logger;
  sharedBuffers?: string;
  settings?: Record<string, string | number | boolean>;
  /** Persist a changed record (its port) in state.json. */
  save(record: ComputeRecord): Promise<void>;
  /** Restore its data directory again, which could not be trusted: the record to start it with (its recovery). */
  remake(record: ComputeRecord): Promise<ComputeRecord>;
}
