// bench/memory: the daemon's memory as the database grows (issue 12: "memory that does not grow with the database").
// For pgbench scales 8 and 64 (~100 MB, ~1 GB; 640 ≈ 10 GB with --large), in a fresh repository:
//   1. pgbench -i, then `neon image create` (a full base image): daemon VmRSS and VmHWM (peak) right after it, and
//      VmRSS 20 s later (the hashing workers end after 15 s idle: what stays is the daemon's own)
//   2. `neon stop` + `neon start`: VmRSS after the restart (the chunk index is opened)
//   3. `neon image create` again (every page is looked up in the chunk index): VmRSS and VmHWM after it
// Figures come from /proc/<daemon pid>/status. With --baseline DIR (a checkout of an earlier commit with its
// dist/ built), the same runs are made with that neon in the same session and the ratio is printed.
// PostgreSQL 15 (neon init --pg-version 15).
//
//   npm run bench:memory [-- --scales 8,64] [--runs 3] [--large] [--baseline DIR]
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CLI, cleanup, tmpDir } from '../testkit/env.js';
import * as lib from './lib-snapshot.js';
import { MB, median } from './lib-snapshot.js';

const large = process.argv.includes('--large');
const scales = lib.listArg('scales', large ? [8, 64, 640] : [8, 64]);
const runs = lib.listArg('runs', [1])[0];
const arg = (name: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined);
const baseline = arg('--baseline');

if (!fs.existsSync(lib.bin('pgbench')) || !fs.existsSync(CLI)) {
  console.error(`bench:memory needs the system PostgreSQL 15 (${lib.PG_BIN}) and the built CLI (npm run build)`);
  process.exit(1);
}
if (baseline && !fs.existsSync(path.join(baseline, 'dist/cli/bin.js'))) {
  console.error(`--baseline ${baseline}: no dist/cli/bin.js there (build that checkout first)`);
  process.exit(1);
}
const live = new Set<string>();
process.on('SIGINT', () => void Promise.all([...live].map((dir) => cleanup(dir))).finally(() => process.exit(130)));

/** Run `neon …args --json` of the neon whose CLI is `cli`; returns the parsed output. */
function neonAt(cli: string, args: string[], cwd: string): any {
  const out = execFileSync(process.execPath, [cli, ...args, '--json'], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, NEON_REPO_DIR: '' },
    maxBuffer: 64 * MB,
  });
  return JSON.parse(out);
}

/** VmRSS and VmHWM of `pid`, in bytes. */
function memory(pid: number): { rss: number; hwm: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(/(\d+) kB/.exec(status.split('\n').find((l) => l.startsWith(`${field}:`)) ?? '')?.[1]) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

const load = () => os.loadavg()[0];
type Metrics = Record<string, number>;

/** One run of the three steps with the neon whose CLI is `cli`. */
async function measure(cli: string, scale: number): Promise<Metrics> {
  const dir = tmpDir('neon-bench-memory-');
  live.add(dir);
  const m: Metrics = {};
  try {
    fs.writeFileSync(path.join(dir, 'neon.config.json'), lib.QUIET_CONFIG);
    neonAt(cli, ['init', '--pg-version', '15'], dir);
    const url = neonAt(cli, ['start'], dir).connection_string as string;
    lib.pgbenchInit(url, scale);
    await lib.query(url, 'checkpoint');
    m.dbBytes = await lib.dbSize(url);
    const pid = () => neonAt(cli, ['status'], dir).daemon.pid as number;
    neonAt(cli, ['image', 'create'], dir);
    const first = memory(pid());
    m.rssImage = first.rss;
    m.hwmImage = first.hwm;
    m.load1 = load();
    await new Promise((resolve) => setTimeout(resolve, 20_000));
    m.rssSettled = memory(pid()).rss;
    neonAt(cli, ['stop'], dir);
    // The compute may come back on another port (its old one taken meanwhile): use the address start reports.
    await lib.firstQuery(neonAt(cli, ['start'], dir).connection_string as string);
    m.rssRestart = memory(pid()).rss;
    neonAt(cli, ['image', 'create'], dir);
    const again = memory(pid());
    m.rssImage2 = again.rss;
    m.hwmImage2 = again.hwm;
    m.chunkIndexBytes = fileSize(path.join(dir, '.neon', 'pageserver', 'chunks', 'chunks.midx'));
    m.load2 = load();
    neonAt(cli, ['stop'], dir);
  } finally {
    await cleanup(dir);
    live.delete(dir);
  }
  return m;
}

function fileSize(file: string): number {
  return fs.existsSync(file) ? fs.statSync(file).size : 0;
}

const mb = (bytes: number) => (Number.isFinite(bytes) ? `${(bytes / MB).toFixed(0)} MB` : '–');
const sides: [string, string][] = [['this', CLI]];
if (baseline) sides.push(['baseline', path.join(baseline, 'dist/cli/bin.js')]);

console.log(`bench:memory on ${lib.machine()}; ${runs} run(s) per scale${runs < 3 ? ' (fewer than 3: single figures, not medians)' : ''}`);
const results = new Map<string, Metrics[]>();
for (const scale of scales) {
  for (let r = 0; r < runs; r++) {
    // Alternate which side goes first, so that neither always runs on a warmer page cache.
    const order = r % 2 ? [...sides].reverse() : sides;
    for (const [side, cli] of order) {
      const m = await measure(cli, scale);
      const key = `${side}/${scale}`;
      results.set(key, [...(results.get(key) ?? []), m]);
      console.log(
        `  ${side} scale ${scale} run ${r + 1}: db ${mb(m.dbBytes)}, after image ${mb(m.rssImage)} (peak ${mb(m.hwmImage)}, ` +
          `20 s later ${mb(m.rssSettled)}), ` +
          `after restart ${mb(m.rssRestart)}, after a 2nd image ${mb(m.rssImage2)} (peak ${mb(m.hwmImage2)}); ` +
          `index file ${mb(m.chunkIndexBytes)}; load ${m.load1.toFixed(1)}/${m.load2.toFixed(1)}`,
      );
    }
  }
}

const med = (key: string, field: string) => median((results.get(key) ?? []).map((m) => m[field]));
const ratio = (a: number, b: number) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}×` : '–');
console.log('');
console.log(
  '| scale (db size) | daemon RSS after image (peak; 20 s later) | after restart | after a 2nd image (peak) | ' +
    'baseline: after image / restart / 2nd image | ratio after image / after restart | load avg |',
);
console.log('|---|---|---|---|---|---|---|');
for (const scale of scales) {
  const t = `this/${scale}`;
  const b = `baseline/${scale}`;
  const base = baseline ? `${mb(med(b, 'rssImage'))} / ${mb(med(b, 'rssRestart'))} / ${mb(med(b, 'rssImage2'))}` : '–';
  console.log(
    `| ${scale} (${mb(med(t, 'dbBytes'))}) | ${mb(med(t, 'rssImage'))} (${mb(med(t, 'hwmImage'))}; ${mb(med(t, 'rssSettled'))}) | ` +
      `${mb(med(t, 'rssRestart'))} | ${mb(med(t, 'rssImage2'))} (${mb(med(t, 'hwmImage2'))}) | ${base} | ` +
      `${ratio(med(t, 'rssImage'), med(b, 'rssImage'))} / ${ratio(med(t, 'rssRestart'), med(b, 'rssRestart'))} | ${med(t, 'load1').toFixed(1)} |`,
  );
}
