import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NeonError } from '../core/errors.js';
import { formatLsn, type Lsn } from '../core/wal.js';
import { trace } from '../lib/trace.js';
import { asUser, type PgUser } from '../postgres/user.js';
import { recoverySettings } from './recovery.js';

/** Where {@link replayTo} runs Postgres, and to which checkpoint. */
export interface ReplayJob {
  /** A data directory: a restored image (backup_label or a checkpoint in pg_control), with no server on it. */
  dataDir: string;
  /** The staged WAL (see stageWal), served by restore_command. */
  walDir: string;
  /** The folder of the `postgres` binary. */
  binDir: string;
  /** The checkpoint record to stop right after: the restartpoint made there at shutdown flushes every page. */
  checkpoint: Lsn;
  owner?: PgUser;
  /** Appended with the server's output. */
  logFile: string;
}

/**
 * Let Postgres itself replay WAL in `dataDir` up to and including the checkpoint record `checkpoint`, then shut
 * down (recovery_target_action = shutdown). At the shutdown it makes a restartpoint at that checkpoint, which
 * writes every page the replay changed: the files are then exactly the state at the end of that record, and
 * pg_control names the checkpoint, so the folder is a valid base image (consistent from the record's end).
 * Nothing listens (no TCP, a private socket folder), fsync is off (the result is a cache copy, as the plain
 * copies of full images are).
 */
export async function replayTo(job: ReplayJob): Promise<void> {
  const { dataDir, owner } = job;
  const socketDir = fs.mkdtempSync(path.join(os.tmpdir(), 'neon-replay-'));
  try {
    const settings: Record<string, string> = {
      ...recoverySettings(job.walDir, { lsn: job.checkpoint, action: 'promote' }),
      recovery_target_inclusive: 'on',
      recovery_target_action: 'shutdown',
      listen_addresses: '',
      unix_socket_directories: socketDir,
      port: '5432',
      hot_standby: 'off',
      fsync: 'off',
      shared_buffers: '128MB',
      logging_collector: 'off',
      log_destination: 'stderr',
      archive_mode: 'off',
      cluster_name: 'neon-replay',
    };
    const conf = Object.entries(settings).map(([key, value]) => `${key} = '${value.replace(/'/g, "''")}'`);
    fs.writeFileSync(path.join(dataDir, 'neon.conf'), `# neon: replay to a checkpoint for an incremental image\n${conf.join('\n')}\n`);
    fs.writeFileSync(path.join(dataDir, 'recovery.signal'), '');
    fs.rmSync(path.join(dataDir, 'postmaster.pid'), { force: true });
    fs.chmodSync(dataDir, 0o700);
    if (owner) {
      giveTree(dataDir, owner);
      fs.chownSync(socketDir, owner.uid, owner.gid);
    }
    trace('image', 'replay: starting postgres');
    const result = await runPostgres(job, dataDir);
    trace('image', 'replay: postgres exited');
    if (result.exitCode !== 0) {
      const tail = fs.existsSync(job.logFile) ? fs.readFileSync(job.logFile, 'utf8').trim().split('\n').slice(-3).join(' | ') : '';
      throw new NeonError(
        'replay_failed',
        `replaying WAL to checkpoint ${formatLsn(job.checkpoint)} failed (exit ${result.exitCode ?? result.signal ?? result.error}): ${tail}`,
        { status: 500 },
      );
    }
  } finally {
    fs.rmSync(socketDir, { recursive: true, force: true });
    for (const name of ['neon.conf', 'recovery.signal']) fs.rmSync(path.join(dataDir, name), { force: true });
  }
}

/** Run `postgres -D dataDir` (as the job's owner) to its exit, its output appended to the job's log file. */
async function runPostgres(
  job: ReplayJob,
  dataDir: string,
): Promise<{ exitCode: number | null; signal: NodeJS.Signals | null; error?: string }> {
  // node:child_process rather than execa: one spawn, no module graph to load on the first incremental.
  const log = fs.openSync(job.logFile, 'a', 0o640);
  try {
    const child = spawn(path.join(job.binDir, 'postgres'), ['-D', dataDir], {
      cwd: dataDir,
      ...asUser(job.owner),
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C', LANG: 'C', TZ: 'UTC' },
      stdio: ['ignore', log, log],
    });
    // A daemon that exits meanwhile takes the replay with it (as execa's cleanup did): nothing would read it.
    const stop = () => child.kill('SIGTERM');
    process.once('exit', stop);
    try {
      return await new Promise((resolve) => {
        child.once('error', (error) => resolve({ exitCode: null, signal: null, error: error.message }));
        child.once('exit', (exitCode, signal) => resolve({ exitCode, signal }));
      });
    } finally {
      process.removeListener('exit', stop);
    }
  } finally {
    fs.closeSync(log);
  }
}

/**
 * Give a data directory to the Postgres user, synchronously: a copy advanced by an earlier replay is already its
 * own, and a folder of ~1000 small files is done in milliseconds, where an await per file took a second on a busy
 * machine. Only entries owned by someone else are changed.
 */
function giveTree(dir: string, owner: PgUser): void {
  const give = (target: string) => {
    const stat = fs.lstatSync(target);
    if (stat.uid !== owner.uid || stat.gid !== owner.gid) fs.lchownSync(target, owner.uid, owner.gid);
    return stat;
  };
  if (!give(dir).isDirectory()) return;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const child = path.join(dir, entry.name);
    if (entry.isDirectory()) giveTree(child, owner);
    else give(child);
  }
}
