// One neon safekeeper in a process of its own, for bench/wal.ts. The configuration (with the primary's password)
// comes as JSON in NEON_BENCH_SAFEKEEPER; its folder is also the first argument, so that cleanup() finds the
// process by its command line. Logs go to stderr; SIGTERM or SIGINT stops it cleanly.
//
//   NEON_BENCH_SAFEKEEPER='{"name":"sk1",…}' node --import tsx bench/safekeeper-runner.ts <dir>
import { Safekeeper, type SafekeeperConfig } from '../safekeeper/safekeeper.js';

const config = JSON.parse(process.env.NEON_BENCH_SAFEKEEPER ?? 'null') as SafekeeperConfig | null;
if (!config) throw new Error('NEON_BENCH_SAFEKEEPER is not set');
const safekeeper = new Safekeeper(config, {
  status: () => undefined,
  segment: () => undefined,
  log: (level, message) => process.stderr.write(`${new Date().toISOString()} ${level} ${message}\n`),
});
process.on('SIGTERM', () => void safekeeper.stop());
process.on('SIGINT', () => void safekeeper.stop());
await safekeeper.run();
process.exit(0);
