// bench/wal: what a synchronous standby costs a primary under pgbench's TPC-B-like load, in four configurations:
//   (a) no synchronous standby
//   (b) pg_receivewal --synchronous as the synchronous standby       synchronous_standby_names = 'ANY 1 (receivewal)'
//   (c) one neon safekeeper (bench/safekeeper-runner.ts)             'ANY 1 (sk1)'
//   (d) three neon safekeepers                                       'ANY 2 (sk1, sk2, sk3)'
//   (e) one neon safekeeper of another checkout (NEON_BENCH_BASELINE=<its bench/safekeeper-runner.ts>), 'ANY 1 (sk1)':
//       an A/B of two safekeeper versions interleaved in the same rounds (--configs bce)
// Each configuration gets a fresh cluster (initdb, pgbench -i -s 10, checkpoint), its receivers, and
// pgbench -c N -j N -T seconds -l. Prints TPS, p50/p99 latency (from the per-transaction logs), the TPS ratios
// c/b (target ≥ 1.0, issue 12) and d/b (target ≥ 0.8), each configuration's TPS ratio to plain (a), and the receivers'
// RSS and CPU, as µs of CPU per committed transaction (the safekeeper's beside pg_receivewal's). The primary is
// the system PostgreSQL in all four (pg_receivewal refuses to stream from a newer server than itself).
//
//   npm run bench:wal [-- --seconds 30] [--clients 4] [--scale 10] [--rounds 3] [--configs abcd]
//                      [--cpu-prof <dir>]   (a V8 CPU profile of each safekeeper process, for `node --cpu-prof`)
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildSync } from 'esbuild';
import pg from 'pg';
import { asUser, chownTo, isRoot, pgUserFor } from '../postgres/user.js';
import { freePort } from '../lib/net.js';
import { cleanup, tmpDir } from '../testkit/env.js';

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && Number(process.argv[i + 1]) > 0 ? Number(process.argv[i + 1]) : fallback;
};
const seconds = arg('seconds', 30);
const clients = arg('clients', 4);
const scale = arg('scale', 10);
const rounds = arg('rounds', 3);
const text = (name: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const cpuProfDir = text('cpu-prof') && path.resolve(text('cpu-prof')!);
const PASSWORD = 'secret';
const SETTINGS = `listen_addresses = '127.0.0.1'
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
fsync = on
synchronous_commit = on
shared_buffers = 128MB
`;
// NEON_BENCH_RUNNER: the runner of another checkout (an older safekeeper), to compare two versions.
const RUNNER_SOURCE = process.env.NEON_BENCH_RUNNER ?? path.join(path.dirname(fileURLToPath(import.meta.url)), 'safekeeper-runner.ts');
const BASELINE_SOURCE = process.env.NEON_BENCH_BASELINE && path.resolve(process.env.NEON_BENCH_BASELINE);
const pgUser = pgUserFor('postgres');

/** A bin folder of the system PostgreSQL with pg_receivewal and pgbench (installing it when root and missing). */
function systemBinDir(): string {
  const find = () =>
    (fs.existsSync('/usr/lib/postgresql') ? fs.readdirSync('/usr/lib/postgresql') : [])
      .sort((a, b) => Number(b) - Number(a))
      .map((version) => `/usr/lib/postgresql/${version}/bin`)
      .find((dir) => ['postgres', 'initdb', 'pg_ctl', 'pgbench', 'pg_receivewal'].every((b) => fs.existsSync(path.join(dir, b))));
  let dir = find();
  if (!dir && isRoot()) {
    console.error('no system PostgreSQL with pg_receivewal and pgbench; running apt-get install -y postgresql');
    spawnSync('apt-get', ['install', '-y', 'postgresql'], { stdio: 'inherit' });
    dir = find();
  }
  if (!dir) {
    console.error(
      'bench:wal needs the system PostgreSQL (/usr/lib/postgresql/<version>/bin with pg_receivewal and pgbench): apt-get install postgresql',
    );
    process.exit(1);
  }
  return dir;
}
const binDir = systemBinDir();
const bin = (name: string) => path.join(binDir, name);

function run(command: string, args: string[], options: { cwd?: string; asPg?: boolean } = {}): string {
  const env = { ...process.env, PGPASSWORD: PASSWORD };
  const result = spawnSync(command, args, { cwd: options.cwd, env, encoding: 'utf8', ...(options.asPg ? asUser(pgUser) : {}) });
  if (result.status !== 0) throw new Error(`${path.basename(command)} ${args.join(' ')} failed: ${result.stderr}${result.stdout}`);
  return result.stdout;
}

/** Resident set (kB) and CPU ticks (utime + stime, and stime alone; 1/100 s) of a running process. */
function procStats(pid: number): { rssKb: number; ticks: number; sysTicks: number } | undefined {
  try {
    const rss = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // from field 3 (state) on
    const [utime, stime] = [Number(fields[11]), Number(fields[12])]; // fields 14 and 15
    return { rssKb: Number(rss?.[1] ?? 0), ticks: utime + stime, sysTicks: stime };
  } catch {
    return undefined;
  }
}

const bundled = new Map<string, string>();
/**
 * The safekeeper runner bundled into one JavaScript file, as the product ships it (dist/): a receiver run
 * through a TypeScript loader would carry the loader's heap and threads and be measured with them.
 */
function runner(source = RUNNER_SOURCE): string {
  const done = bundled.get(source);
  if (done) return done;
  const dir = tmpDir('neon-bench-wal-runner-');
  teardowns.add(async () => fs.rmSync(dir, { recursive: true, force: true }));
  const outfile = path.join(dir, 'safekeeper-runner.mjs');
  buildSync({
    entryPoints: [source],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outfile,
    logLevel: 'warning',
  });
  bundled.set(source, outfile);
  return outfile;
}

interface Receiver {
  name: string;
  process: ChildProcess;
  log: string;
}
interface Result {
  tps: number;
  /** Transactions pgbench committed during the run. */
  transactions: number;
  p50: number;
  p99: number;
  receivers: { name: string; maxRssMb: number; cpuSeconds: number; sysSeconds: number }[];
}
type Kind = 'a' | 'b' | 'c' | 'd' | 'e';
const CONFIGS: Record<Kind, { label: string; standbys: string[]; quorum: number }> = {
  a: { label: '(a) no synchronous standby', standbys: [], quorum: 0 },
  b: { label: '(b) pg_receivewal --synchronous', standbys: ['receivewal'], quorum: 1 },
  c: { label: '(c) 1 neon safekeeper', standbys: ['sk1'], quorum: 1 },
  d: { label: '(d) 3 neon safekeepers, ANY 2', standbys: ['sk1', 'sk2', 'sk3'], quorum: 2 },
  e: { label: '(e) 1 neon safekeeper, baseline', standbys: ['sk1'], quorum: 1 },
};
const kinds = (['a', 'b', 'c', 'd', 'e'] as const).filter((k) => (text('configs') ?? 'abcd').includes(k));
if (!kinds.length) throw new Error('--configs takes letters among a, b, c, d and e (e.g. --configs abc)');
if (kinds.includes('e') && !BASELINE_SOURCE)
  throw new Error('--configs e needs NEON_BENCH_BASELINE=<another checkout>/bench/safekeeper-runner.ts (the safekeeper to compare with)');

function startReceiver(name: string, dir: string, port: number, source = RUNNER_SOURCE): Receiver {
  const folder = path.join(dir, name);
  fs.mkdirSync(folder);
  const log = path.join(dir, `${name}.log`);
  const out = fs.openSync(log, 'w');
  const stdio: ['ignore', number, number] = ['ignore', out, out];
  let child: ChildProcess;
  if (name === 'receivewal') {
    const args = ['-h', '127.0.0.1', '-p', String(port), '-U', 'repl', '-w', '-D', folder];
    args.push('--slot=receivewal', '--synchronous', '--no-loop');
    child = spawn(bin('pg_receivewal'), args, { stdio, env: { ...process.env, PGPASSWORD: PASSWORD, PGAPPNAME: name } });
  } else {
    const primary = { host: '127.0.0.1', port, user: 'repl', password: PASSWORD };
    const config = { name, branch: 'main', dir: folder, slot: `neon_${name}`, primary };
    const profile = cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`] : [];
    child = spawn(process.execPath, [...profile, runner(source), folder], {
      stdio,
      env: { ...process.env, NEON_BENCH_SAFEKEEPER: JSON.stringify(config) },
    });
  }
  fs.closeSync(out);
  return { name, process: child, log };
}

async function stopReceiver(receiver: Receiver): Promise<void> {
  const child = receiver.process;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  if (!(await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]))) {
    child.kill('SIGKILL');
    await exited;
  }
}

/** Poll pg_stat_replication until every receiver's row meets `condition`; one that died meanwhile fails it with its log. */
async function waitFor(client: pg.Client, receivers: Receiver[], condition: string, what: string): Promise<void> {
  const sql = `SELECT count(*) AS n FROM pg_stat_replication WHERE application_name = ANY($1) AND ${condition}`;
  const deadline = Date.now() + 120_000;
  for (;;) {
    const { rows } = await client.query(sql, [receivers.map((r) => r.name)]);
    if (Number(rows[0].n) === receivers.length) return;
    const dead = receivers.find((r) => r.process.exitCode !== null || r.process.signalCode !== null);
    if (dead) throw new Error(`${dead.name} exited while waiting for ${what}:\n${fs.readFileSync(dead.log, 'utf8').slice(-2000)}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

/** Run pgbench, sampling the receivers' RSS every 500 ms meanwhile. */
async function pgbench(dir: string, port: number, receivers: Receiver[]): Promise<Result> {
  const args = ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-c', String(clients), '-j', String(clients)];
  args.push('-T', String(seconds), '-l', `--log-prefix=${path.join(dir, 'txlog')}`, 'postgres');
  const pids = receivers.map((r) => r.process.pid!);
  const start = pids.map((pid) => procStats(pid));
  const maxRss = pids.map(() => 0);
  const sample = () => pids.forEach((pid, i) => (maxRss[i] = Math.max(maxRss[i], procStats(pid)?.rssKb ?? 0)));
  const timer = setInterval(sample, 500);
  const child = spawn(bin('pgbench'), args, { cwd: dir, env: { ...process.env, PGPASSWORD: PASSWORD } });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  clearInterval(timer);
  sample();
  const end = pids.map((pid) => procStats(pid));
  if (code !== 0) throw new Error(`pgbench failed (exit ${code}):\n${output}`);
  const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(output)?.[1]);
  const transactions = Number(/number of transactions actually processed: (\d+)/.exec(output)?.[1]);
  // Per-transaction logs: "client_id transaction_no time_us script_no epoch epoch_us"; one file per thread.
  const latencies: number[] = [];
  for (const file of fs.readdirSync(dir).filter((f) => f.startsWith('txlog.'))) {
    for (const line of fs.readFileSync(path.join(dir, file), 'utf8').split('\n')) {
      const us = Number(line.split(' ')[2]);
      if (line && Number.isFinite(us)) latencies.push(us / 1000);
    }
  }
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => latencies[Math.max(0, Math.ceil(p * latencies.length) - 1)] ?? NaN;
  return {
    tps,
    transactions,
    p50: pct(0.5),
    p99: pct(0.99),
    receivers: receivers.map((r, i) => ({
      name: r.name,
      maxRssMb: maxRss[i] / 1024,
      cpuSeconds: ((end[i]?.ticks ?? 0) - (start[i]?.ticks ?? 0)) / 100,
      sysSeconds: ((end[i]?.sysTicks ?? 0) - (start[i]?.sysTicks ?? 0)) / 100,
    })),
  };
}

/** Everything still to stop or remove, for the error path and Ctrl-C. */
const teardowns = new Set<() => Promise<void>>();

async function runConfiguration(kind: Kind): Promise<Result> {
  const { standbys, quorum } = CONFIGS[kind];
  const dir = tmpDir('neon-bench-wal-');
  const data = path.join(dir, 'data');
  const port = await freePort();
  const receivers: Receiver[] = [];
  let started = false;
  let done: Promise<void> | undefined;
  const teardown = () =>
    (done ??= (async () => {
      await Promise.all(receivers.map(stopReceiver));
      if (started) spawnSync(bin('pg_ctl'), ['stop', '-w', '-s', '-m', 'fast', '-D', data], asUser(pgUser));
      await cleanup(dir);
      teardowns.delete(teardown);
    })());
  teardowns.add(teardown);
  try {
    fs.writeFileSync(path.join(dir, 'pw'), `${PASSWORD}\n`);
    await chownTo(pgUser, dir, true);
    const initdbFlags = ['--auth-local=scram-sha-256', '--auth-host=scram-sha-256', '--encoding=UTF8', '--locale=C', '--no-instructions'];
    run(bin('initdb'), ['-D', data, '-U', 'postgres', `--pwfile=${path.join(dir, 'pw')}`, ...initdbFlags], { asPg: true });
    fs.appendFileSync(path.join(data, 'postgresql.conf'), `port = ${port}\n${SETTINGS}`);
    started = true;
    run(bin('pg_ctl'), ['start', '-w', '-s', '-D', data, '-l', path.join(dir, 'postgres.log')], { asPg: true });
    run(bin('pgbench'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-i', '-q', '-s', String(scale), 'postgres']);
    const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: PASSWORD, database: 'postgres' });
    await client.connect();
    try {
      await client.query(`CREATE ROLE repl REPLICATION LOGIN PASSWORD '${PASSWORD}'`);
      await client.query('CHECKPOINT');
      if (standbys.includes('receivewal')) await client.query(`SELECT pg_create_physical_replication_slot('receivewal', true)`);
      for (const name of standbys) receivers.push(startReceiver(name, dir, port, kind === 'e' ? BASELINE_SOURCE : undefined));
      await waitFor(client, receivers, `state = 'streaming'`, 'the receivers to stream');
      if (standbys.length) {
        await client.query(`ALTER SYSTEM SET synchronous_standby_names = 'ANY ${quorum} (${standbys.join(', ')})'`);
        await client.query('SELECT pg_reload_conf()');
        await waitFor(client, receivers, `sync_state IN ('sync', 'quorum')`, 'the receivers to become synchronous');
      }
    } finally {
      await client.end();
    }
    return await pgbench(dir, port, receivers);
  } finally {
    await teardown();
  }
}

process.on('SIGINT', () => {
  console.error('interrupted: stopping everything');
  void Promise.all([...teardowns].map((t) => t())).finally(() => process.exit(130));
});

const version = execFileSync(bin('postgres'), ['--version'], { encoding: 'utf8' }).trim();
const probe = tmpDir('neon-bench-wal-');
const disk = execFileSync('df', ['-h', probe], { encoding: 'utf8' }).trim().split('\n').pop()!.split(/\s+/);
fs.rmSync(probe, { recursive: true });
console.log(`# bench:wal — ${version} (system, ${binDir}) as the primary in all four configurations`);
console.log(`${seconds} s per run, ${clients} clients (-j ${clients}), scale ${scale}, ${rounds} round(s), medians across rounds;`);
console.log(
  `${execFileSync('nproc').toString().trim()} cores, node ${process.version}, temp disk ${disk[0]} (${disk[1]}, mounted on ${disk[5]})\n`,
);

const results: Record<Kind, Result[]> = { a: [], b: [], c: [], d: [], e: [] };
const loads: string[] = [];
const loadAverage = () => fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
for (let round = 1; round <= rounds; round++) {
  for (const kind of kinds) {
    process.stderr.write(`round ${round}/${rounds}: ${CONFIGS[kind].label}… `);
    const result = await runConfiguration(kind);
    results[kind].push(result);
    process.stderr.write(`${result.tps.toFixed(0)} TPS (load average ${loadAverage()})\n`);
  }
  loads.push(loadAverage());
}
await Promise.all([...teardowns].map((t) => t())); // the bundled runner

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};
/** Median over the rounds of a per-round ratio (each round's configurations ran back to back, under like load). */
const ratioOf = (kind: Kind, base: Kind) =>
  results[base].length ? median(results[kind].map((r, i) => r.tps / results[base][i].tps)) : NaN;
const fixed = (value: number, digits = 2) => (Number.isFinite(value) ? value.toFixed(digits) : '–');
const targets: Partial<Record<Kind, number>> = { c: 1.0, d: 0.8 };
console.log('| configuration | TPS | p50 ms | p99 ms | TPS ratio vs (a) | TPS ratio vs (b) | target |');
console.log('|---|---:|---:|---:|---:|---:|---|');
for (const kind of kinds) {
  const ratio = ratioOf(kind, 'b');
  const target = targets[kind];
  const verdict = target && Number.isFinite(ratio) ? `≥ ${target} ${ratio >= target ? '✓' : '✗'}` : '';
  const column = (pick: (r: Result) => number) => median(results[kind].map(pick));
  const cells = [column((r) => r.tps).toFixed(0), fixed(column((r) => r.p50)), fixed(column((r) => r.p99))];
  console.log(`| ${CONFIGS[kind].label} | ${cells.join(' | ')} | ${fixed(ratioOf(kind, 'a'))} | ${fixed(ratio)} | ${verdict} |`);
}
console.log('\nReceiver processes during the pgbench run (max RSS sampled every 500 ms; CPU = utime + stime from /proc):');
const cpuPerTx: Partial<Record<Kind, number>> = {};
for (const kind of kinds.filter((k) => k !== 'a')) {
  for (const [i, { name }] of results[kind][0].receivers.entries()) {
    const rss = median(results[kind].map((r) => r.receivers[i].maxRssMb));
    const cpu = median(results[kind].map((r) => r.receivers[i].cpuSeconds));
    const sys = median(results[kind].map((r) => r.receivers[i].sysSeconds));
    const us = median(results[kind].map((r) => (r.receivers[i].cpuSeconds / r.transactions) * 1e6));
    if (i === 0) cpuPerTx[kind] = us;
    console.log(
      `- ${CONFIGS[kind].label}, ${name}: max RSS ${rss.toFixed(1)} MB, CPU ${cpu.toFixed(2)} s (${sys.toFixed(2)} s of it in the kernel; ${((cpu / seconds) * 100).toFixed(1)} % of the run), ${us.toFixed(0)} µs per transaction`,
    );
  }
}
/** Median over the rounds of the ratio of CPU per transaction of the first receiver of `kind` to that of `base`. */
const cpuRatio = (kind: Kind, base: Kind) =>
  median(results[kind].map((r, i) => r.receivers[0].cpuSeconds / r.transactions / (results[base][i].receivers[0].cpuSeconds / results[base][i].transactions)));
if (cpuPerTx.b && cpuPerTx.c) {
  console.log(
    `\nCPU per transaction, 1 safekeeper vs pg_receivewal: ${cpuPerTx.c.toFixed(0)} vs ${cpuPerTx.b.toFixed(0)} µs (ratio ${cpuRatio('c', 'b').toFixed(2)}, median of per-round ratios)`,
  );
}
if (cpuPerTx.c && cpuPerTx.e) {
  console.log(
    `A/B, this safekeeper (c) vs the baseline (e): TPS ratio ${fixed(ratioOf('c', 'e'))}, CPU per transaction ${cpuPerTx.c.toFixed(0)} vs ${cpuPerTx.e.toFixed(0)} µs (ratio ${cpuRatio('c', 'e').toFixed(2)}); medians of per-round ratios`,
  );
}
console.log(`Load average (1/5/15 min) after each round: ${loads.join('; ')}`);
