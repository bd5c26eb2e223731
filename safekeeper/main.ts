import { Safekeeper, type PrimaryInfo, type SafekeeperConfig, type SafekeeperStatus } from './safekeeper.js';
import type { CompletedSegment } from './wal-writer.js';

/** Messages from the daemon to a safekeeper process. */
export type ToSafekeeper = { type: 'config'; config: SafekeeperConfig } | { type: 'primary'; primary: PrimaryInfo } | { type: 'stop' };

/** Messages from a safekeeper process to the daemon. */
export type FromSafekeeper =
  | { type: 'status'; status: SafekeeperStatus }
  | { type: 'segment'; segment: Omit<CompletedSegment, 'segno'> & { segno: string; branch: string } }
  | { type: 'log'; level: 'info' | 'warn' | 'error'; message: string };

/**
 * Entry point of a safekeeper process (`neon __safekeeper`), started by the daemon with an IPC channel: the
 * configuration (with the primary's password) arrives as the first message rather than on the command line,
 * and the process ends when the daemon goes away, so a killed daemon leaves no safekeeper behind.
 */
export async function runSafekeeper(): Promise<void> {
  const send = (message: FromSafekeeper) => {
    if (process.connected) process.send!(message);
  };
  const config = await new Promise<SafekeeperConfig>((resolve) => {
    process.once('message', (message: ToSafekeeper) => {
      if (message.type === 'config') resolve(message.config);
    });
  });
  const safekeeper = new Safekeeper(config, {
    status: (status) => send({ type: 'status', status }),
    segment: (segment) => send({ type: 'segment', segment: { ...segment, segno: segment.segno.toString() } }),
    log: (level, message) => send({ type: 'log', level, message }),
  });
  process.on('message', (message: ToSafekeeper) => {
    if (message.type === 'primary') safekeeper.setPrimary(message.primary);
    if (message.type === 'stop') void safekeeper.stop();
  });
  process.on('disconnect', () => void safekeeper.stop());
  process.on('SIGTERM', () => void safekeeper.stop());
  process.on('SIGINT', () => void safekeeper.stop());
  await safekeeper.run();
  process.exit(0);
}
