import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { createLogger } from '../core/log.js';
import { isDaemonOf } from './lock.js';
import { Repository } from './repository.js';

/** Set in the daemon's environment by its watchdog: that process is the daemon itself. */
export const SUPERVISED_ENV = 'NEON_DAEMON_SUPERVISED';

/** Messages from a supervised daemon to its watchdog: its ready/error message for `neon start`, and "stopping". */
export type ToWatchdog = { type: 'stopping' } | { type: 'ready' | 'error'; [field: string]: unknown };

/** Pause before restarting a daemon that died: at once, then 1 s doubling to 30 s; reset by a healthy minute. */
const RESTART_MIN_MS = 1000;
const RESTART_MAX_MS = 30_000;
const HEALTHY_UPTIME_MS = 60_000;

/**
 * The daemon's watchdog: the process `neon start` spawns (`neon __daemon`), which runs the real daemon as its
 * child and starts it again within moments when it dies unasked (SIGKILL, the OOM killer, a crash). Meanwhile
 * the computes and the safekeepers stream on (a safekeeper outlives its daemon for a minute), and the next daemon
 * adopts the computes and lets its safekeepers take over from the old ones, so committed writes pause only for
 * that handover. A watchdog rather than safekeepers alone: it also brings back what only the daemon does (REST
 * API, offload, images, supervision) with no second control channel, and it is small enough not to crash.
 * It forwards the first daemon's ready (or error) message to `neon start`, and ends when the daemon is asked to
 * stop (`neon stop`: the daemon tells it "stopping") or when another daemon has taken the repository.
 */
export async function runWatchdog(repoDir: string, cli: string): Promise<void> {
  const log = createLogger('watchdog');
  const repo = new Repository(repoDir);
  let child: ChildProcess | undefined;
  let stopping = false;
  let first = true;
  let failures = 0;
  const forward = (signal: NodeJS.Signals) => {
    stopping = true;
    if (child?.exitCode === null && child.signalCode === null) child.kill(signal);
    else process.exit(0);
  };
  process.on('SIGTERM', () => forward('SIGTERM'));
  process.on('SIGINT', () => forward('SIGINT'));
  process.on('SIGHUP', () => undefined);

  const launch = () => {
    const started = Date.now();
    let ready = false;
    const daemon = spawn(process.execPath, [cli, '__daemon', '--repo', repoDir], {
      env: { ...process.env, [SUPERVISED_ENV]: '1' },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    child = daemon;
    daemon.on('message', (message: ToWatchdog) => {
      if (message.type === 'stopping') {
        // Asked to stop: nothing to restart. Leave now, so that `neon stop` finds nothing of ours once the daemon is gone.
        stopping = true;
        process.exit(0);
      }
      if (message.type === 'ready') ready = true;
      if (first) {
        process.send?.(message);
        if (message.type === 'ready') {
          first = false;
          if (process.connected) process.disconnect();
        }
      }
    });
    daemon.on('exit', (code, signal) => {
      if (stopping || (code === 0 && !signal)) process.exit(0);
      // The first start failed: `neon start` has the daemon's error; nothing to supervise.
      if (first) process.exit(code ?? 1);
      if (!ready && anotherDaemon(repo, daemon.pid)) {
        log.info('another daemon runs for %s: this watchdog ends', repo.dir);
        process.exit(0);
      }
      if (Date.now() - started >= HEALTHY_UPTIME_MS) failures = 0;
      const delay = failures === 0 ? 0 : Math.min(RESTART_MIN_MS * 2 ** (failures - 1), RESTART_MAX_MS);
      failures += 1;
      log.error('daemon pid %d ended (%s); starting it again in %d ms', daemon.pid, signal ?? `exit code ${code}`, delay);
      setTimeout(launch, delay);
    });
  };
  launch();
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
