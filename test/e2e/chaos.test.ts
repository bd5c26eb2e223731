import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { formatReport, runChaos } from '../../testkit/chaos/run.js';

// A short chaos run (issue 9): a ledger workload on two branches while every kind of fault is injected once or
// twice. The long run is `npm run chaos`.

const chaos = suite('chaos: acknowledged commits survive every fault, snapshots stay prefixes, nothing is left running');

chaos('every fault kind once, one safekeeper', async () => {
  const faults = ['kill-primary', 'snapshot', 'kill-safekeeper', 'concurrent-rest', 'stop-safekeeper', 'image', 'kill-daemon', 'branch', 'storage-unwritable'] as const;
  const report = await runChaos({
    durationMs: 20_000,
    minFaults: faults.length,
    safekeepers: 1,
    intervalMs: 2000,
    faults: [...faults],
    snapshotChecks: 2,
    log: (line) => console.log(`  ${line}`),
  });
  console.log(`\n${formatReport(report)}`);
  assert.ok(report.acknowledged > 0, 'the workload committed');
  assert.is(Object.values(report.faults).reduce((a, b) => a + b, 0) + Object.values(report.skipped).reduce((a, b) => a + b, 0), faults.length);
  assert.is(report.lost, 0, 'no acknowledged id lost');
  assert.is(report.duplicated, 0, 'no id stored twice');
  assert.equal(report.failures, []);
  assert.ok(report.verifyOk, 'neon verify is clean');
  assert.is(report.orphans, 0, 'nothing left running after neon stop');
});

chaos.run();
