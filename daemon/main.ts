import { NeonError, isExpected, messageOf } from '../core/errors.js';
import { createLogger } from '../core/log.js';
import type { ComputeInfo } from './compute.js';
import type { Daemon } from './daemon.js';
import { Repository } from './repository.js';
import type { Status } from './routes.js';
import { spawnWatchdog, SUPERVISED_ENV, type ToWatchdog } from './watchdog.js';
import { trace } from '../lib/trace.js';

/** Messages the daemon sends to the `neon start` that spawned it, over the IPC channel. */
export type DaemonMessage =
  { type: 'ready'; port: number; notice?: string; status: Status; pgs: ComputeInfo[] } | { type: 'error'; code: string; message: string };

/**
 * Entry point of the daemon process (`neon __daemon --repo DIR`), spawned by `neon start` (or, after a crash, by
 * its watchdog: then SUPERVISED_ENV is set and its "stopping" goes to the watchdog, its parent).
 */
export async function runDaemon(repoDir: string, cli: string): Promise<void> {
  const supervised = process.env[SUPERVISED_ENV] === '1';
  let crashed = false;
  const repo = new Repository(repoDir);
  const log = createLogger('daemon');
  const tell = (message: DaemonMessage) => process.send?.(message);
  let daemon: Daemon | undefined;
  // The first daemon starts its watchdog once it is ready; a supervised one has its watchdog as its parent.
  let toWatchdog: ((message: ToWatchdog) => void) | undefined = supervised ? (message) => process.send?.(message) : undefined;
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
    // Imported here, not above: the watchdog and the safekeepers (the same entry) never run them.
    const [{ Daemon }, meta] = await Promise.all([import('./daemon.js'), repo.readMeta()]);
    trace('daemon', 'modules loaded, meta read');
    daemon = new Daemon(repo, meta, log, cli);
    daemon.onStopped = () => process.exit();
    // A stop that was asked for ends the watchdog too; a crash is for it to answer with a new daemon.
    daemon.onStopping = () => {
      if (!crashed) toWatchdog?.({ type: 'stopping' });
    };
    log.info('starting daemon pid %d for %s', process.pid, repo.dir);
    // The REST routes (and their schemas) load while Postgres starts: nothing before it needs them.
    const notice = await daemon.start(async (rest) => (await import('./routes.js')).registerRoutes(rest, daemon!));
    const [{ statusOf }, { toWire }] = await Promise.all([import('./routes.js'), import('../core/rest.js')]);
    trace('daemon', 'ready: telling neon start');
    // The answer to `neon start` travels with the ready message: no HTTP round trips before it can print.
    tell(toWire({ type: 'ready', port: daemon.port, notice, status: statusOf(daemon), pgs: daemon.pgs() }) as DaemonMessage);
    if (!supervised && process.env.NEON_NO_WATCHDOG !== '1') toWatchdog = spawnWatchdog(repo.dir, cli, log);
  } catch (error) {
    log.error('start failed: %s', isExpected(error) ? messageOf(error) : (error as Error).stack);
    tell({ type: 'error', code: error instanceof NeonError ? error.code : 'internal', message: messageOf(error) });
    process.exitCode = 1;
    await daemon?.shutdown('signal');
    process.exit();
  }
  // A supervised daemon keeps its channel: it tells its watchdog when it is asked to stop.
  if (process.connected && !supervised) process.disconnect();
}
