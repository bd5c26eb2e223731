import { format } from 'node:util';

/** A logger for one component; lines go to the daemon's log file (its stdout) with a time and the component. */
export interface Logger {
  info(message: string, ...args: unknown[]): void;
  warn(message: string, ...args: unknown[]): void;
  error(message: string, ...args: unknown[]): void;
  /** A logger whose lines carry `component` (e.g. `compute main`). */
  child(component: string): Logger;
}

/** Create a logger writing to `write` (default: stdout, which the daemon's log file receives). */
export function createLogger(component = 'neon', write: (line: string) => void = (line) => process.stdout.write(line)): Logger {
  const emit = (level: string, message: string, args: unknown[]) =>
    write(`${new Date().toISOString()} ${level.padEnd(5)} [${component}] ${format(message, ...args)}\n`);
  return {
    info: (message, ...args) => emit('info', message, args),
    warn: (message, ...args) => emit('warn', message, args),
    error: (message, ...args) => emit('error', message, args),
    child: (name) => createLogger(name, write),
  };
}

/** A logger that drops everything (for the CLI, whose user reads its output instead). */
export const silentLogger: Logger = { info() {}, warn() {}, error() {}, child: () => silentLogger };
