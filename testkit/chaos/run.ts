import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isAlive, signal } from '../../lib/proc.js';
import { cleanup, neon, neonJson, processesOf, tmpDir } from '../env.js';
import { query } from '../pg.js';
import { waitFor } from '../wait.js';
import { ChaosFailure, inject, type FaultKind, type Target } from './faults.js';
import { audit, createLedger, isPrefix, LedgerWriter, readLedger, type LedgerResult } from './ledger.js';

// One chaos run: a repository with a ledger workload on main and on a second branch, faults injected on a
// schedule for a fixed time, then recovery and the checks of issue 9: every acknowledged id present exactly
// once, every snapshot a prefix of the final ledger, `neon verify` clean, nothing left running after stop.

export interface ChaosOptions {
  durationMs: number;
  safekeepers: number;
  faults: FaultKind[];
  /** Time between faults (ms). */
  intervalMs?: number;
  /** Go on past the duration until this many faults were tried (a short run still tries every kind). */
  minFaults?: number;
  /** At most this many snapshots are materialised to check their ledger (each costs a compute start). */
  snapshotChecks?: number;
  /** End by deleting .neon and starting again from storage_dest alone; reports what that lost. */
  recoverFromStorage?: boolean;
  log?: (line: string) => void;
}

export interface ChaosReport {
  durationS: number;
  safekeepers: number;
  faults: Record<string, number>;
  skipped: Record<string, number>;
  acknowledged: number;
  uncertain: number;
  lost: number;
  duplicated: number;
  /** Longest gap between acknowledged commits on main after a fault of each kind (s). */
  unavailableS: Record<string, number>;
  snapshotsChecked: number;
  snapshotProblems: string[];
  verifyOk: boolean;
  orphans: number;
  /** With recoverFromStorage: acknowledged ids on main missing after recovery from storage_dest alone. */
  lostAfterStorageRecovery?: number;
  failures: string[];
}

const mainUrl = (dir: string) => neonJson(['pg', 'show', '-n', 'main'], { cwd: dir }).then((pg) => pg.connection_string as string);

/** Run the chaos schedule and check everything; the repository folder is removed afterwards. */
export async function runChaos(options: ChaosOptions): Promise<ChaosReport> {
  const log = options.log ?? (() => undefined);
  const dir = tmpDir('neon-chaos-');
  const storage = path.join(dir, 'storage');
  fs.writeFileSync(path.join(dir, 'neon.config.json'), JSON.stringify({ safekeepers: options.safekeepers }));
  const target: Target = { dir, storage, sideCompute: 'side' };
  const report: ChaosReport = {
    durationS: options.durationMs / 1000,
    safekeepers: options.safekeepers,
    faults: {},
    skipped: {},
    acknowledged: 0,
    uncertain: 0,
    lost: 0,
    duplicated: 0,
    unavailableS: {},
    snapshotsChecked: 0,
    snapshotProblems: [],
    verifyOk: false,
    orphans: 0,
    failures: [],
  };
  try {
    const started = await neonJson(['start', `--storage_dest=${storage}`], { cwd: dir });
    const urls = { main: started.connection_string as string, side: '' };
    await createLedger(urls.main);
    urls.side = (await neonJson(['pg', 'create', '-n', 'side'], { cwd: dir })).connection_string;
    const writers = [new LedgerWriter(() => urls.main, 'main-1').start(), new LedgerWriter(() => urls.main, 'main-2').start()];
    const side = new LedgerWriter(() => urls.side, 'side-1').start();
    const injected: { kind: FaultKind; at: number }[] = [];
    const snapshots: string[] = [];
    const deadline = Date.now() + options.durationMs;
    for (let i = 1; Date.now() < deadline || i <= (options.minFaults ?? 0); i++) {
      await sleep(options.intervalMs ?? 3000);
      const kind = options.faults[(i - 1) % options.faults.length];
      const at = Date.now();
      try {
        const what = await inject(kind, target, i);
        injected.push({ kind, at });
        report.faults[kind] = (report.faults[kind] ?? 0) + 1;
        if (kind === 'snapshot') snapshots.push(`chaos-${i}`);
        log(`fault ${i}: ${what}`);
      } catch (error) {
        if (error instanceof ChaosFailure) report.failures.push(error.message);
        report.skipped[kind] = (report.skipped[kind] ?? 0) + 1;
        log(`fault ${i} (${kind}) not injected: ${(error as Error).message.split('\n')[0]}`);
      }
      // A user who finds neon down runs `neon start`; it must repair what failed.
      if (!daemonAlive(dir)) {
        const start = await neon(['start'], { cwd: dir });
        log(`neon start (daemon was down): exit ${start.code} ${start.stderr.trim()}`);
      }
    }
    await recover(dir, target);
    // Writes must work again on both branches before the writers stop.
    await waitFor('writes on main after the faults', () => query(urls.main, 'select 1').then(() => true), 120_000);
    await sleep(2000);
    const results = [...(await Promise.all(writers.map((w) => w.stop()))), await side.stop()];
    await checkLedgers(report, results, urls, dir);
    report.unavailableS = unavailability(injected, results.filter((r) => r.client.startsWith('main')));
    await checkSnapshots(report, snapshots.slice(-(options.snapshotChecks ?? 3)), results, dir, urls.main);
    const verify = await neon(['verify'], { cwd: dir });
    report.verifyOk = verify.code === 0;
    if (!report.verifyOk) report.failures.push(`neon verify: ${verify.stdout}${verify.stderr}`.trim());
    if (options.recoverFromStorage) report.lostAfterStorageRecovery = await lossAfterStorageRecovery(dir, storage, results);
    await neon(['stop'], { cwd: dir });
    await sleep(1000);
    report.orphans = processesOf(dir).filter(isAlive).length;
    return report;
  } finally {
    // CHAOS_KEEP=1 keeps the folder (logs in .neon/logs) of a failed run for a look.
    if (process.env.CHAOS_KEEP === '1') log(`kept ${dir}`);
    else await cleanup(dir);
  }
}

function daemonAlive(dir: string): boolean {
  try {
    return isAlive(Number(fs.readFileSync(path.join(dir, '.neon', 'daemon.pid'), 'utf8').trim()));
  } catch {
    return false;
  }
}

/** After the faults: `neon start` repairs what failed; the second branch's compute is started if it stopped. */
async function recover(dir: string, target: Target): Promise<void> {
  const start = await neon(['start'], { cwd: dir });
  if (start.code !== 0) throw new Error(`neon start after the faults failed: ${start.stderr.trim()}`);
  await waitFor('the side compute', async () => {
    const pg = await neonJson(['pg', 'show', '-n', target.sideCompute], { cwd: dir });
    if (pg.state !== 'running') await neon(['pg', 'start', '-n', target.sideCompute], { cwd: dir });
    return pg.state === 'running';
  }, 120_000);
}

async function checkLedgers(report: ChaosReport, results: LedgerResult[], urls: { main: string; side: string }, dir: string) {
  for (const result of results) {
    const stored = await readLedger(result.client.startsWith('main') ? await mainUrl(dir) : urls.side, result.client);
    const { lost, duplicated } = audit(result, stored);
    report.acknowledged += result.acknowledged.length;
    report.uncertain += result.uncertain.length;
    report.lost += lost.length;
    report.duplicated += duplicated.length;
    if (lost.length) report.failures.push(`${result.client}: ${lost.length} acknowledged id(s) lost (first ${lost[0]})`);
    if (duplicated.length) report.failures.push(`${result.client}: ${duplicated.length} id(s) stored twice`);
  }
}

/**
 * Per fault kind, the longest gap between consecutive acknowledged commits on main in the window from the fault
 * until the next one (the fault takes effect a moment after it is sent, so the gap can start after `at`).
 */
function unavailability(injected: { kind: FaultKind; at: number }[], results: LedgerResult[]): Record<string, number> {
  const times = results.flatMap((r) => r.commitTimes).sort((a, b) => a - b);
  const out: Record<string, number> = {};
  injected.forEach(({ kind, at }, i) => {
    const until = injected[i + 1]?.at ?? Infinity;
    let longest = 0;
    for (let j = 1; j < times.length; j++) {
      if (times[j] > at && times[j - 1] < until) longest = Math.max(longest, times[j] - Math.max(times[j - 1], at));
    }
    out[kind] = Math.max(out[kind] ?? 0, Math.round(longest / 100) / 10);
  });
  return out;
}

async function checkSnapshots(report: ChaosReport, snapshots: string[], results: LedgerResult[], dir: string, url: string) {
  for (const [i, snapshot] of snapshots.entries()) {
    const name = `check-${i}`;
    const made = await neon(['pg', 'create', '-n', name, '--at', snapshot, '--read-only', '--json'], { cwd: dir });
    if (made.code !== 0) {
      report.snapshotProblems.push(`${snapshot}: ${made.stderr.trim()}`);
      continue;
    }
    const at = JSON.parse(made.stdout).connection_string as string;
    for (const result of results.filter((r) => r.client.startsWith('main'))) {
      const problem = isPrefix(result, await readLedger(at, result.client), await readLedger(url, result.client));
      if (problem) report.snapshotProblems.push(`${snapshot} (${result.client}): ${problem}`);
    }
    report.snapshotsChecked++;
    await neon(['pg', 'destroy', '-n', name], { cwd: dir });
  }
  report.failures.push(...report.snapshotProblems);
}

/** SIGKILL everything, delete .neon, start from storage_dest alone: how many acknowledged ids on main are gone. */
async function lossAfterStorageRecovery(dir: string, storage: string, results: LedgerResult[]): Promise<number> {
  for (const pid of processesOf(path.join(dir, '.neon'))) signal(pid, 'SIGKILL');
  await sleep(1000);
  fs.rmSync(path.join(dir, '.neon'), { recursive: true, force: true });
  const started = await neonJson(['start', `--storage_dest=${storage}`], { cwd: dir });
  let lost = 0;
  for (const result of results.filter((r) => r.client.startsWith('main'))) {
    lost += audit(result, await readLedger(started.connection_string, result.client)).lost.length;
  }
  return lost;
}

/** The summary table of a run, as printed by `npm run chaos` and kept in the README's Reliability section. */
export function formatReport(report: ChaosReport): string {
  const kinds = Object.keys({ ...report.faults, ...report.skipped });
  const lines = [
    `duration ${report.durationS} s, ${report.safekeepers} safekeeper(s)`,
    `acknowledged ${report.acknowledged}, uncertain ${report.uncertain}, lost ${report.lost}, duplicated ${report.duplicated}`,
    `snapshots checked ${report.snapshotsChecked}, neon verify ${report.verifyOk ? 'clean' : 'FAILED'}, orphans after stop ${report.orphans}`,
    ...(report.lostAfterStorageRecovery === undefined ? [] : [`lost after recovery from storage_dest alone: ${report.lostAfterStorageRecovery}`]),
    '',
    '| fault | injected | not injected | longest write gap on main (s) |',
    '|---|---:|---:|---:|',
    ...kinds.map((k) => `| ${k} | ${report.faults[k] ?? 0} | ${report.skipped[k] ?? 0} | ${report.unavailableS[k] ?? '-'} |`),
  ];
  return lines.concat(report.failures.length ? ['', 'FAILURES:', ...report.failures.map((f) => `- ${f}`)] : []).join('\n');
}
