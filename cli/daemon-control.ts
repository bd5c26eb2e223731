import fs from 'node:fs';
import { callDaemon, notRunning } from './client.js';
import type { DaemonMessage } from '../daemon/main.js';
import { NeonError } from '../core/errors.js';
import { isDaemonOf } from '../daemon/lock.js';
import { cmdlineOf, DAEMON_ENV, DAEMON_NODE_FLAGS, isAlive, processesMatching, signal, waitGone } from '../lib/proc.js';
import { trace } from '../lib/trace.js';
import type { Repository } from '../daemon/repository.js';

/** How long `neon start` waits for the daemon to report ready (computes may replay a lot of WAL). */
const START_TIMEOUT_MS = 180_000;

/** The pid of the repository's running daemon, or undefined (a stale pid file is not a running daemon). */
export function runningDaemonPid(repo: Repository): number | undefined {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(repo.pidFile, 'utf8').trim());
  } catch {
    return undefined;
  }
  return pid && isDaemonOf(pid, repo.dir) ? pid : undefined;
}

/**
 * Start the daemon (`node <cli> __daemon`) detached from the terminal (its output goes to logs/daemon.log) and wait until it says it
 * is ready over the IPC channel, or why it could not start.
 */
export async function spawnDaemon(repo: Repository, projectDir: string, cli: string): Promise<Extract<DaemonMessage, { type: 'ready' }>> {
  // Only `neon start` spawns: the other commands that import this module do not load child_process.
  const { spawn } = await import('node:child_process');
  trace('cli', 'spawning the daemon');
  fs.mkdirSync(repo.logsDir, { recursive: true });
  const logFile = repo.logFile('daemon');
  const log = fs.openSync(logFile, 'a', 0o640);
  const child = spawn(process.execPath, [...DAEMON_NODE_FLAGS, cli, '__daemon', '--repo', repo.dir], {
    cwd: projectDir,
    env: { ...DAEMON_ENV, ...process.env },
    detached: true,
    stdio: ['ignore', log, log, 'ipc'],
  });
  fs.closeSync(log);
  try {
    const message = await new Promise<DaemonMessage>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new NeonError('start_timeout', `the daemon did not report ready within ${START_TIMEOUT_MS / 1000}s; see ${logFile}`)),
        START_TIMEOUT_MS,
      );
      child.once('message', (m) => (clearTimeout(timer), resolve(m as DaemonMessage)));
      child.once('exit', (code, sig) => {
        clearTimeout(timer);
        reject(new NeonError('daemon_exited', `the daemon exited while starting (${sig ?? 'code ' + code}); see ${logFile}`));
      });
      child.once('error', (error) => (clearTimeout(timer), reject(error)));
    });
    trace('cli', `daemon said ${message.type}`);
    if (message.type === 'error') {
      // It is cleaning up what it started; report once it is gone, so that a failed start leaves nothing running.
      if (child.exitCode === null && child.signalCode === null) await waitGone([child.pid!], 30_000);
      throw new NeonError(message.code, message.message);
    }
    return message;
  } finally {
    child.removeAllListeners();
    if (child.connected) child.disconnect();
    child.unref();
  }
}

/**
 * Call the running daemon, waiting while it is (re)starting: after a crash its watchdog starts a new one, whose
 * REST API answers only once its components are up. Gives up after `timeoutMs` with the last error.
 */
export async function callStartingDaemon<T>(repo: Repository, method: string, route: string, timeoutMs = START_TIMEOUT_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await callDaemon<T>(repo, method, route);
    } catch (error) {
      const starting = error instanceof NeonError && error.code === notRunning(repo).code;
      if (!starting || Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

/**
 * A daemon that crashed is started again by its watchdog after a pause (at most 30 s): stopping then must wait
 * for it, or the computes it would adopt keep running with nobody to stop them.
 */
async function daemonAfterRestart(repo: Repository): Promise<number | undefined> {
  const watchdogs = processesMatching(repo.dir).filter((pid) => cmdlineOf(pid)?.includes('__watchdog'));
  const deadline = Date.now() + 40_000;
  while (watchdogs.some(isAlive) && Date.now() < deadline) {
    const pid = runningDaemonPid(repo);
    if (pid) return pid;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return undefined;
}

/** Ask the daemon to stop everything and wait until its process is gone. */
export async function stopDaemon(repo: Repository, timeoutMs = 120_000): Promise<number> {
  const pid = runningDaemonPid(repo) ?? (await daemonAfterRestart(repo));
  if (!pid) {
    fs.rmSync(repo.daemonFile, { force: true });
    throw new NeonError('not_running', `neon is not running for ${repo.dir}: nothing to stop`);
  }
  try {
    await callDaemon(repo, 'POST', '/shutdown');
  } catch (error) {
    // A daemon that does not answer (still starting, or wedged) is asked by signal instead.
    if (!(error instanceof NeonError) || error.code !== notRunning(repo).code) throw error;
    signal(pid, 'SIGTERM');
  }
  if (!(await waitGone([pid], timeoutMs))) {
    throw new NeonError('stop_timeout', `the daemon (pid ${pid}) did not stop within ${timeoutMs / 1000}s; see ${repo.logFile('daemon')}`);
  }
  // The daemon removes it itself; a SIGKILL at the wrong moment would leave it behind.
  fs.rmSync(repo.daemonFile, { force: true });
  return pid;
}
