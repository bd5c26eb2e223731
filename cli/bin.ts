#!/usr/bin/env node
// The `neon` (and `neon-local`) command. Kept tiny: every process of the product starts here (the CLI, the
// daemon, its watchdog, each safekeeper), so it only looks at argv and imports what that process needs. The
// command table (main.ts, cac) is not loaded by the daemon or the safekeepers; the daemon's modules are not
// loaded by the CLI. Measured with bench/startup.ts.
import module from 'node:module';
import { fileURLToPath } from 'node:url';
import { trace } from '../lib/trace.js';

// Node ≥ 22.1 keeps compiled code on disk between runs; Node 20 has no such API, and a cache that cannot be
// written (read-only temp dir, another user's folder) only costs the compile it would have saved.
try {
  (module as { enableCompileCache?: () => unknown }).enableCompileCache?.();
} catch {
  // Not worth failing a command for.
}

const script = fileURLToPath(import.meta.url);
const role = process.argv[2];
const roleName = role === '__daemon' ? 'daemon' : role === '__watchdog' ? 'watchdog' : role === '__safekeeper' ? 'safekeeper' : 'cli';
trace(roleName, 'node process started', true);
trace(roleName, 'entry running');
if (role === '__daemon') {
  const { runDaemon } = await import('../daemon/main.js');
  await runDaemon(process.argv[process.argv.indexOf('--repo') + 1], script);
} else if (role === '__watchdog') {
  const { runWatchdog } = await import('../daemon/watchdog.js');
  await runWatchdog(process.argv[process.argv.indexOf('--repo') + 1], script);
} else if (role === '__safekeeper') {
  const { runSafekeeper } = await import('../safekeeper/main.js');
  await runSafekeeper();
} else {
  // `neon start`, `neon pg list`, `neon status` and the other one-call commands skip the command table (cli/fast.ts).
  const { fastCommand, runFast } = await import('./fast.js');
  const fast = fastCommand(process.argv);
  if (fast) await runFast(fast, process.argv, script);
  else await (await import('./main.js')).main(process.argv, script);
}
