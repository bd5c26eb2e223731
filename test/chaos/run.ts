// `npm run chaos [-- --duration 300 --safekeepers 1,3 --recover]`: the chaos suite at length (CI runs a short
// version as test/e2e/chaos.test.ts). Prints the summary table of each run; exits 1 when any check failed.
import { parseArgs } from 'node:util';
import type { FaultKind } from '../../testkit/chaos/faults.js';
import { formatReport, runChaos } from '../../testkit/chaos/run.js';

const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '300' },
    safekeepers: { type: 'string', default: '1,3' },
    recover: { type: 'boolean', default: true },
    quiet: { type: 'boolean', default: false },
  },
});

const FAULTS: FaultKind[] = [
  'kill-primary',
  'snapshot',
  'kill-safekeeper',
  'image',
  'stop-safekeeper',
  'branch',
  'kill-daemon',
  'concurrent-rest',
  'storage-unwritable',
];

let failed = false;
for (const safekeepers of values.safekeepers.split(',').map(Number)) {
  const report = await runChaos({
    durationMs: Number(values.duration) * 1000,
    safekeepers,
    faults: FAULTS,
    snapshotChecks: 5,
    recoverFromStorage: values.recover,
    log: values.quiet ? undefined : (line) => console.log(`  ${line}`),
  });
  console.log(`\n${formatReport(report)}\n`);
  failed ||= report.failures.length > 0 || report.orphans > 0;
}
process.exitCode = failed ? 1 : 0;
