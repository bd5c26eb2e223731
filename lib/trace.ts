import fs from 'node:fs';

/**
 * Start-up tracing: with `NEON_TRACE=<file>` in the environment, every process of the product (the CLI, the
 * daemon, its watchdog, each safekeeper) appends `<epoch ms> <pid> <role> <step>` lines to that file, so that one
 * `neon start` can be laid out step by step across processes (`npm run bench:startup -- --trace` prints it).
 * Off, it costs one environment read: not even the clock is looked at (node:perf_hooks costs a CLI call ~20 ms).
 */
const file = process.env.NEON_TRACE;

/** Note that `step` happened now in this process; `origin` notes when the process itself was started instead. */
export function trace(role: string, step: string, origin = false): void {
  if (!file) return;
  const at = origin ? performance.timeOrigin : performance.timeOrigin + performance.now();
  try {
    fs.appendFileSync(file, `${at.toFixed(1)} ${process.pid} ${role} ${step}\n`);
  } catch {
    // A trace that cannot be written must not change what the product does.
  }
}
