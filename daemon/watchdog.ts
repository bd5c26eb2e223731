import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { createLogger, type Logger } from '../core/log.js';
import { isDaemonOf } from './lock.js';
import { Repository } from './repository.js';
import { DAEMON_NODE_FLAGS } from '../lib/proc.js';
import { trace } from '../lib/trace.js';

/** Set in the daemon's environment by its watchdog: that process is the daemon itself. */
export const SUPERVISED_ENV = 'NEON_DAEMON_SUPERVISED';

/** NODE_EXTRA_CA_CERTS of the daemon, kept aside while the watchdog runs (it makes no TLS connections). */
export const DAEMON_CA_ENV = 'NEON_DAEMON_EXTRA_CA_CERTS';

/** Messages from a daemon to its watchdog: "stopping" (asked to stop), and a restarted daemon's ready/error. */
export type ToWatchdog = { type: 'stopping' } | { type: 'ready' | 'error'; [field: string]: unknown };

/** Pause before restarting a daemon that died: at once, then 1 s doubling to 30 s; reset by a healthy minute. */
const RESTART_MIN_MS = 1000;
const RESTART_MAX_MS = 30_000;
const HEALTHY_UPTIME_MS = 60_000;

/**
 * Start the watchdog of this daemon (`neon __watchdog --repo DIR`), once the daemon is ready: started by the
 * daemon rather than before it, so that `neon start` waits for one Node start-up less. It runs detached, with an
 * IPC channel to this daemon; returns how to tell it that the daemon was asked to stop.
 */
export function spawnWatchdog(repoDir: string, cli: string, log: Logger): (message: ToWatchdog) => void {
  // Node parses the bundle NODE_EXTRA_CA_CERTS names at every start (~0.1 s): the watchdog makes no TLS
  // connections, so it starts without it and hands it back to the daemons it starts.
  const env = { ...process.env };
  if (env.NODE_EXTRA_CA_CERTS !== undefined) env[DAEMON_CA_ENV] = env.NODE_EXTRA_CA_CERTS;
  delete env.NODE_EXTRA_CA_CERTS;
  const child = spawn(process.execPath, [cli, '__watchdog', '--repo', repoDir], {
    env,
    detached: true,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  child.on('error', (error) => log.error('the watchdog did not start: %s', error.message));
  // The daemon must not wait for its watchdog to exit, nor keep running because of it.
  child.unref();
  (child.channel as { unref?: () => void } | undefined)?.unref?.();
  return (message) => {
    if (child.connected) child.send(message);
  };
}

/**
 * The daemon's watchdog: started by the first daemon once it is ready, it notices that daemon's death by the end
 * of their IPC channel, and starts a new daemon (its own child from then on) within moments when one dies unasked
 * (SIGKILL, the OOM killer, a crash). Meanwhile the computes and the safekeepers stream on (a safekeeper outlives
 * its daemon for a minute), and the next daemon adopts the computes and lets its safekeepers take over from the
 * old ones, so committed writes pause only for that handover. A watchdog rather than safekeepers alone: it also
 * brings back what only the daemon does (REST API, offload, images, supervision) with no second control channel,
 * and it is small enough not to crash. It ends when the daemon is asked to stop (`neon stop`: the daemon tells it
 * "stopping") or when another daemon has taken the repository.
 */
export async function runWatchdog(repoDir: string, cli: string): Promise<void> {
  const log = createLogger('watchdog');
  const repo = new Repository(repoDir);
  // The daemons it starts get the CA bundle back (see spawnWatchdog).
  const daemonEnv: NodeJS.ProcessEnv = { ...process.env, [SUPERVISED_ENV]: '1' };
  if (process.env[DAEMON_CA_ENV] !== undefined) daemonEnv.NODE_EXTRA_CA_CERTS = process.env[DAEMON_CA_ENV];
  delete daemonEnv[DAEMON_CA_ENV];
  let child: ChildProcess | undefined;
  let current = process.ppid;
  let stopping = false;
  let failures = 0;
  let started = Date.now();
  let ready = true;
  const forward = (signal: NodeJS.Signals) => {
    stopping = true;
    if (child ? child.exitCode === null && child.signalCode === null : isDaemonOf(current, repo.dir)) process.kill(current, signal);
    else process.exit(0);
  };
  process.on('SIGTERM', () => forward('SIGTERM'));
  process.on('SIGINT', () => forward('SIGINT'));
  process.on('SIGHUP', () => undefined);
  const onMessage = (message: ToWatchdog) => {
    // Asked to stop: nothing to restart. Leave now, so that `neon stop` finds nothing of ours once the daemon is gone.
    if (message.type === 'stopping') {
      stopping = true;
      process.exit(0);
    }
    if (message.type === 'ready') ready = true;
  };

  const ended = (how: string, cleanExit: boolean) => {
    if (stopping || cleanExit) process.exit(0);
    if (!ready && anotherDaemon(repo, current)) {
      log.info('another daemon runs for %s: this watchdog ends', repo.dir);
      process.exit(0);
    }
    if (Date.now() - started >= HEALTHY_UPTIME_MS) failures = 0;
    const delay = failures === 0 ? 0 : Math.min(RESTART_MIN_MS * 2 ** (failures - 1), RESTART_MAX_MS);
    failures += 1;
    log.error('daemon pid %d ended (%s); starting it again in %d ms', current, how, delay);
    setTimeout(launch, delay);
  };

  const launch = () => {
    if (anotherDaemon(repo, current)) {
      log.info('another daemon runs for %s: this watchdog ends', repo.dir);
      process.exit(0);
    }
    started = Date.now();
    ready = false;
    trace('watchdog', 'spawning the daemon');
    const daemon = spawn(process.execPath, [...DAEMON_NODE_FLAGS, cli, '__daemon', '--repo', repoDir], {
      env: daemonEnv,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    child = daemon;
    current = daemon.pid ?? 0;
    daemon.on('message', onMessage);
    daemon.on('exit', (code, signal) => ended(signal ?? `exit code ${code}`, code === 0 && !signal));
  };

  // The first daemon is the parent: its end closes the channel (whatever killed it).
  process.on('message', onMessage);
  let gone = false;
  const firstGone = () => {
    if (gone) return;
    gone = true;
    ended('its channel closed', false);
  };
  process.once('disconnect', firstGone);
  if (!process.connected) firstGone();
}

// A daemon of this repository other than the one that just ended (`neon start` while this one was restarting).
function anotherDaemon(repo: Repository, ended: number | undefined): boolean {
  let owner: number;
  try {
    owner = Number(fs.readFileSync(repo.pidFile, 'utf8').trim());
  } catch {
    return false;
  }
  return !!owner && owner !== ended && isDaemonOf(owner, repo.dir);
}
