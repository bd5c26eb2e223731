// bench/image: what base images cost, against the tools users would pick, in the same runs.
//   1. full base image (neon image create after pgbench -i) vs pgBackRest full (lz4) and pg_basebackup -Ft
//   2. incremental image after 1% of pgbench_accounts' rows changed: time and stored bytes vs pgBackRest block incr
//   3. GET /status latency (p50, p99, max) while the full image is taken
//   4. the daemon's RSS after the full image
// PostgreSQL 15 on both sides (neon init --pg-version 15; the system's pg_basebackup and pgBackRest).
//
//   npm run bench:image [-- --scales 64] [--runs 3] [--keep-logs DIR] [--trace] [--neon-only]
// --trace prints the daemon's image steps (NEON_TRACE, see lib/trace.ts) with the ms each took; --neon-only skips
// the peers (for a quick look at neon's own figures: no ratios then). NEON_BENCH_PROFILE=<dir> writes a CPU profile
// of the daemon during each full image there (see cpu-profile.cjs).
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { freePort } from '../lib/net.js';
import { CLI, cleanup, neon, neonJson, tmpDir } from '../testkit/env.js';
import * as lib from './lib-snapshot.js';
import { MB, PlainCluster, bin, median, run, timed } from './lib-snapshot.js';

const scales = lib.listArg('scales', [64]);
const runs = lib.listArg('runs', [3])[0];
const keepLogs = process.argv.includes('--keep-logs') ? process.argv[process.argv.indexOf('--keep-logs') + 1] : undefined;
const tracing = process.argv.includes('--trace');
const neonOnly = process.argv.includes('--neon-only');

if (!fs.existsSync(bin('pg_basebackup')) || !fs.existsSync(CLI)) {
  console.error(`bench:image needs the system PostgreSQL 15 (${lib.PG_BIN}) and the built CLI (npm run build)`);
  process.exit(1);
}
const pgbrVersion = lib.pgBackRestVersion();
const live = new Set<string>();
process.on('SIGINT', () => void Promise.all([...live].map((dir) => cleanup(dir))).finally(() => process.exit(130)));

type Metrics = Record<string, number>;

/** RSS of a process in bytes, from /proc. */
function rssOf(pid: number): number {
  const line = fs
    .readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'));
  return Number(/(\d+)/.exec(line ?? '')?.[1] ?? NaN) * 1024;
}

/** Poll GET /status every 20 ms until `stop` resolves; returns the latencies in ms. */
async function pollStatus(repo: string, stop: Promise<unknown>): Promise<number[]> {
  const { port } = JSON.parse(fs.readFileSync(path.join(repo, 'daemon.json'), 'utf8'));
  const token = fs.readFileSync(path.join(repo, 'token'), 'utf8').trim();
  let done = false;
  void stop.finally(() => (done = true));
  const latencies: number[] = [];
  while (!done) {
    const started = performance.now();
    const ok = await fetch(`http://127.0.0.1:${port}/status`, { headers: { authorization: `Bearer ${token}` } }).then(
      (r) => r.text().then(() => r.ok),
      (error: Error) => (console.error(`GET /status failed: ${error.message} (${(error.cause as Error)?.message})`), false),
    );
    // A failed call counts as an infinitely slow one: it shows in p99 and max.
    latencies.push(ok ? performance.now() - started : Infinity);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return latencies;
}

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
};

async function neonRun(scale: number): Promise<Metrics> {
  const dir = tmpDir('neon-bench-image-');
  live.add(dir);
  const cwd = { cwd: dir };
  const repo = path.join(dir, '.neon');
  const m: Metrics = {};
  const traceFile = path.join(dir, 'trace');
  if (tracing) process.env.NEON_TRACE = traceFile; // inherited by the daemon that neon start spawns
  Object.assign(process.env, lib.profileEnv());
  try {
    const { url, dbBytes } = await lib.loadedNeon(dir, scale);
    m.dbBytes = dbBytes;
    const daemonPid = Number(fs.readFileSync(path.join(repo, 'daemon.pid'), 'utf8'));
    const taking = lib.profiled(daemonPid, () => timed(() => neonJson(['image', 'create'], cwd)));
    const latencies = await pollStatus(repo, taking);
    const [fullMs, full] = await taking;
    Object.assign(m, { fullMs, fullNew: full.new_bytes, fullRaw: full.raw_bytes, fullKind: full.kind === 'online' ? 1 : 0 });
    Object.assign(m, { statusP50: percentile(latencies, 50), statusP99: percentile(latencies, 99), statusMax: Math.max(...latencies) });
    m.rss = rssOf(daemonPid);
    await lib.changeOnePercent(url, scale);
    const [incrMs, incr] = await timed(() => neonJson(['image', 'create'], cwd));
    const { changed } = await lib.newChunks(repo);
    Object.assign(m, { incrMs, incrNew: incr.new_bytes, incrKind: incr.kind === 'incremental' ? 1 : 0, changedBytes: changed * 8192 });
    m.rssAfter = rssOf(daemonPid);
    await neon(['stop'], cwd);
    if (tracing) printTrace(traceFile);
    return m;
  } finally {
    await lib.finishRun(dir, repo, scale, keepLogs);
    live.delete(dir);
  }
}

/** The daemon's image steps from a NEON_TRACE file: each with the ms until the next step. */
function printTrace(file: string): void {
  const steps = fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .map((line) => /^(\S+) \d+ image (.*)$/.exec(line))
    .filter((match) => match !== null)
    .map((match) => ({ at: Number(match[1]), step: match[2] }));
  steps.forEach(({ at, step }, i) => {
    const next = steps[i + 1];
    const took = next && !step.endsWith('stored') ? `${(next.at - at).toFixed(0).padStart(6)} ms` : '         ';
    console.error(`  ${took}  ${step}`);
  });
}

async function peerRun(scale: number): Promise<Metrics> {
  if (neonOnly) return {};
  const dir = tmpDir('neon-bench-image-peer-');
  live.add(dir);
  const cluster = new PlainCluster(dir, await freePort());
  const m: Metrics = {};
  try {
    const { url } = await lib.loadedCluster(cluster, scale);
    const tarDir = path.join(dir, 'tar');
    const connect = ['-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'postgres', '-w', '-c', 'fast'];
    [m.tarMs] = await timed(() => run(bin('pg_basebackup'), ['-Ft', '-D', tarDir, ...connect], { asPg: true }));
    fs.rmSync(tarDir, { recursive: true });
    if (pgbrVersion) {
      cluster.stop();
      const { config, repo, pgbr } = await lib.pgBackRestStanza(cluster);
      fs.appendFileSync(
        path.join(cluster.data, 'postgresql.conf'),
        `archive_mode = on\narchive_command = 'pgbackrest --config=${config} --stanza=bench archive-push %p'\n`,
      );
      cluster.start();
      pgbr('stanza-create');
      [m.pgbrFullMs] = await timed(() => pgbr('--type=full', 'backup'));
      const fullBytes = lib.duBytes(path.join(repo, 'backup'));
      m.pgbrFullBytes = fullBytes;
      await lib.changeOnePercent(url, scale);
      [m.pgbrIncrMs] = await timed(() => pgbr('--type=incr', 'backup'));
      m.pgbrIncrBytes = lib.duBytes(path.join(repo, 'backup')) - fullBytes;
    }
    return m;
  } finally {
    cluster.stop();
    await cleanup(dir);
    live.delete(dir);
  }
}

const sec = (ms: number) => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(2)} s` : '–');
const mb = (bytes: number) => (Number.isFinite(bytes) ? `${(bytes / MB).toFixed(2)} MB` : '–');
const x = (ratio: number) => (Number.isFinite(ratio) ? `${ratio.toFixed(2)}×` : '–');

for (const scale of scales) {
  const ratios: Metrics[] = [];
  const neonRuns: Metrics[] = [];
  const peerRuns: Metrics[] = [];
  for (let i = 0; i < runs; i++) {
    const n = await neonRun(scale);
    const p = await peerRun(scale);
    neonRuns.push(n);
    peerRuns.push(p);
    ratios.push({
      fullVsPgbr: n.fullMs / p.pgbrFullMs,
      fullVsTar: n.fullMs / p.tarMs,
      incrVsPgbr: n.incrMs / p.pgbrIncrMs,
      incrBytesVsPgbr: n.incrNew / p.pgbrIncrBytes,
    });
    console.error(`scale ${scale} run ${i + 1}/${runs}: ${JSON.stringify({ ...n, ...p })}`);
  }
  const n = (key: string) => median(neonRuns.map((r) => r[key]));
  const p = (key: string) => median(peerRuns.map((r) => r[key]));
  const r = (key: string) => median(ratios.map((q) => q[key]));
  console.log(`\n### bench:image, pgbench scale ${scale} (${mb(n('dbBytes'))}), ${runs} runs, medians; ${lib.machine()}`);
  console.log(`pgBackRest: ${pgbrVersion ?? 'not installed'}\n`);
  console.log('| what | neon | peer | ratio (median of per-run ratios) |\n|---|---|---|---|');
  console.log(`| full image | ${sec(n('fullMs'))} | pgBackRest full ${sec(p('pgbrFullMs'))} | ${x(r('fullVsPgbr'))} |`);
  console.log(`| full image | ${sec(n('fullMs'))} | pg_basebackup -Ft ${sec(p('tarMs'))} | ${x(r('fullVsTar'))} |`);
  console.log(
    `| incremental after 1% changed: time | ${sec(n('incrMs'))} | pgBackRest incr ${sec(p('pgbrIncrMs'))} | ${x(r('incrVsPgbr'))} |`,
  );
  console.log(
    `| incremental after 1% changed: stored | ${mb(n('incrNew'))} (${mb(n('changedBytes'))} of new pages) | pgBackRest incr ${mb(p('pgbrIncrBytes'))} | ${x(r('incrBytesVsPgbr'))} |`,
  );
  console.log(
    `| GET /status during the full image | p50 ${n('statusP50').toFixed(1)} ms, p99 ${n('statusP99').toFixed(1)} ms, max ${n('statusMax').toFixed(0)} ms | – | – |`,
  );
  console.log(`| daemon RSS after the full image / after the incremental | ${mb(n('rss'))} / ${mb(n('rssAfter'))} | – | – |`);
  console.log(`| kinds taken (1 = as expected) | full online ${n('fullKind')}, incremental ${n('incrKind')} | | |`);
}
