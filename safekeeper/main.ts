import { Safekeeper, type PrimaryInfo, type SafekeeperConfig, type SafekeeperStatus } from './safekeeper.js';
import type { CompletedSegment } from './wal-writer.js';

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
 * process ends when the daemon goes away, so a killed daemon leaves no safekeeper behind.
 */
export async function runSafekeeper(): Promise<void> {
  const send = (message: FromSafekeeper) => {
    if (process.connected) process.send!(message);
  };
  const streams = new Map<string, { safekeeper: Safekeeper; done: Promise<void> }>();
  let identity: { name: string; dir: string } | undefined;
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
    if (message.type === 'config') identity = { name: message.name, dir: message.dir };
    else if (message.type === 'attach') attach(message.stream);
    else if (message.type === 'detach') void detach(message.branch);
    else if (message.type === 'primary') streams.get(message.branch)?.safekeeper.setPrimary(message.primary);
    else if (message.type === 'stop') void stop();
  });
  process.on('disconnect', () => void stop());
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  await finished;
  process.exit(0);
}
