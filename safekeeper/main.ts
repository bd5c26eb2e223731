import fs from 'node:fs';
import path from 'node:path';
import { cmdlineOf, isAlive, signal, waitGone } from '../lib/proc.js';
import { Safekeeper, type PrimaryInfo, type SafekeeperConfig, type SafekeeperStatus } from './safekeeper.js';
import type { CompletedSegment } from './wal-writer.js';
import { trace } from '../lib/trace.js';

/** One WAL stream a safekeeper keeps: the WAL of a branch, from that branch's primary. */
export type StreamConfig = Omit<SafekeeperConfig, 'name' | 'dir'>;

/** Messages from the daemon to a safekeeper process. */
export type ToSafekeeper =
  | { type: 'config'; name: string; dir: string }
  | { type: 'attach'; stream: StreamConfig }
  | { type: 'detach'; branch: string }
  | { type: 'primary'; branch: string; primary: PrimaryInfo }
  | { type: 'stop' };

/** Messages from a safekeeper process to the daemon. */
export type FromSafekeeper =
  | { type: 'status'; branch: string; status: SafekeeperStatus }
  | { type: 'segment'; segment: Omit<CompletedSegment, 'segno'> & { segno: string; branch: string } }
  | { type: 'log'; level: 'info' | 'warn' | 'error'; message: string };

/**
 * Entry point of a safekeeper process (`neon __safekeeper`), started by the daemon with an IPC channel. One process
 * keeps the WAL of every branch that has a primary (a stream each, its own folder and replication slot). The
 * configuration, with the primaries' passwords, arrives as messages rather than on the command line, and the
 * process outlives a daemon that dies (its primary's commits keep flowing while the watchdog starts the next
 * daemon), for {@link ORPHAN_MS} at most; the next daemon's safekeeper of the same name takes over from it (see
 * {@link takeOver}), so there is never more than one writer in a safekeeper's folder.
 */
export async function runSafekeeper(): Promise<void> {
  trace('safekeeper', 'modules loaded');
  const send = (message: FromSafekeeper) => {
    if (process.connected) process.send!(message);
  };
  const streams = new Map<string, { safekeeper: Safekeeper; done: Promise<void> }>();
  let identity: { name: string; dir: string } | undefined;
  let ready: Promise<void> = Promise.resolve();
  let stopping = false;
  let allStopped: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => (allStopped = resolve));

  const attach = (stream: StreamConfig) => {
    if (!identity || stopping) return;
    const existing = streams.get(stream.branch);
    if (existing) return existing.safekeeper.setPrimary(stream.primary);
    const safekeeper = new Safekeeper(
      { ...stream, name: identity.name, dir: identity.dir },
      {
        status: (status) => send({ type: 'status', branch: stream.branch, status }),
        segment: (segment) => send({ type: 'segment', segment: { ...segment, segno: segment.segno.toString() } }),
        log: (level, message) => send({ type: 'log', level, message: `[${stream.branch}] ${message}` }),
      },
    );
    streams.set(stream.branch, { safekeeper, done: safekeeper.run() });
  };
  const detach = async (branch: string) => {
    const stream = streams.get(branch);
    if (!stream) return;
    streams.delete(branch);
    await stream.safekeeper.stop();
    await stream.done;
  };
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await Promise.all([...streams.keys()].map(detach));
    allStopped();
  };

  process.on('message', (message: ToSafekeeper) => {
    if (message.type === 'config') {
      identity = { name: message.name, dir: message.dir };
      ready = takeOver(message.dir);
    } else if (message.type === 'attach') void ready.then(() => attach(message.stream));
    else if (message.type === 'detach') void ready.then(() => detach(message.branch));
    else if (message.type === 'primary') void ready.then(() => streams.get(message.branch)?.safekeeper.setPrimary(message.primary));
    else if (message.type === 'stop') void ready.then(stop);
  });
  process.on('disconnect', () => {
    // The daemon died (it stops us with a message when it stops): keep streaming until its successor takes over.
    if (stopping) return;
    console.error(
      `${new Date().toISOString()} the daemon is gone: streaming on for up to ${ORPHAN_MS / 1000}s until the next one takes over`,
    );
    setTimeout(() => void stop(), ORPHAN_MS).unref();
  });
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  await finished;
  process.exit(0);
}

/** How long a safekeeper streams on without a daemon (the watchdog starts the next one within seconds). */
const ORPHAN_MS = 60_000;

/**
 * Become the one safekeeper process of `dir`: one left by a daemon that died is asked to stop (it flushes and
 * ends its streams), and waited for, before this one writes; then this process's pid is recorded there.
 */
async function takeOver(dir: string): Promise<void> {
  const pidFile = path.join(dir, 'safekeeper.pid');
  let previous = 0;
  try {
    previous = Number(fs.readFileSync(pidFile, 'utf8').trim());
  } catch {
    // the first safekeeper process of this folder
  }
  if (previous && previous !== process.pid && isAlive(previous) && cmdlineOf(previous)?.includes('__safekeeper')) {
    signal(previous, 'SIGTERM');
    if (!(await waitGone([previous], 15_000))) {
      signal(previous, 'SIGKILL');
      await waitGone([previous], 5_000);
    }
  }
  fs.writeFileSync(pidFile, `${process.pid}\n`);
}
