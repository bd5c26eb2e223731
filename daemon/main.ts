import { NeonError, isExpected, messageOf } from '../core/errors.js';
import { createLogger } from '../core/log.js';
import type { ComputeInfo } from './compute.js';
import type { Daemon } from './daemon.js';
import { Repository } from './repository.js';
import type { Status } from './routes.js';
import { runWatchdog, SUPERVISED_ENV, type ToWatchdog } from './watchdog.js';

/** Messages the daemon sends to the `neon start` that spawned it, over the IPC channel. */
export type DaemonMessage =
  { type: 'ready'; port: number; notice?: string; status: Status; pgs: ComputeInfo[] } | { type: 'error'; code: string; message: string };

/** NODE_EXTRA_CA_CERTS of `neon start`, kept aside while the watchdog starts (cli/daemon-control.ts). */
export const DAEMON_CA_ENV = 'NEON_DAEMON_EXTRA_CA_CERTS';

/** Entry point of the daemon process (`neon __daemon --repo DIR`, spawned by `neon start`). */
export async function runDaemon(repoDir: string, cli: string): Promise<void> {
  // The process `neon start` spawns is the watchdog; the daemon is its child, started again when it dies unasked.
  const supervised = process.env[SUPERVISED_ENV] === '1';
  if (!supervised && process.env.NEON_NO_WATCHDOG !== '1') {
    // The daemons the watchdog starts (with its environment) get the CA bundle back.
    if (process.env[DAEMON_CA_ENV] !== undefined) process.env.NODE_EXTRA_CA_CERTS = process.env[DAEMON_CA_ENV];
    delete process.env[DAEMON_CA_ENV];
    return runWatchdog(repoDir, cli);
  }
  let crashed = false;
  const repo = new Repository(repoDir);
  const log = createLogger('daemon');
  const tell = (message: DaemonMessage) => process.send?.(message);
  let daemon: Daemon | undefined;
  const onSignal = () => (daemon ? void daemon.shutdown('signal') : process.exit(1));
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('SIGHUP', () => undefined);
  process.on('uncaughtException', (error) => {
    log.error('uncaught: %s', error.stack ?? error.message);
    crashed = true;
    process.exitCode = 1;
    onSignal();
  });
  try {
    // Imported here, not above: the watchdog (the same entry, unsupervised) never runs them, and compiling the
    // daemon's modules there would delay the daemon's own start by as much again.
    const [{ Daemon }, { registerRoutes, statusOf }, { toWire }, meta] = await Promise.all([
      import('./daemon.js'),
      import('./routes.js'),
      import('../core/rest.js'),
      repo.readMeta(),
    ]);
    daemon = new Daemon(repo, meta, log, cli);
    daemon.onStopped = () => process.exit();
    // A stop that was asked for ends the watchdog too; a crash is for it to answer with a new daemon.
    daemon.onStopping = () => {
      if (!crashed && process.connected) process.send?.({ type: 'stopping' } satisfies ToWatchdog);
    };
    log.info('starting daemon pid %d for %s', process.pid, repo.dir);
    const notice = await daemon.start((rest) => registerRoutes(rest, daemon!));
    // The answer to `neon start` travels with the ready message: no HTTP round trips before it can print.
    tell(toWire({ type: 'ready', port: daemon.port, notice, status: statusOf(daemon), pgs: daemon.pgs() }) as DaemonMessage);
  } catch (error) {
    log.error('start failed: %s', isExpected(error) ? messageOf(error) : (error as Error).stack);
    tell({ type: 'error', code: error instanceof NeonError ? error.code : 'internal', message: messageOf(error) });
    process.exitCode = 1;
    await daemon?.shutdown('signal');
    process.exit();
  }
  // The watchdog keeps its channel: the daemon tells it when it is asked to stop.
  if (process.connected && !supervised) process.disconnect();
}
