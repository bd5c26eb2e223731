// bench/startup: how long neon takes to be useful, beside plain PostgreSQL and a plain REST call.
//   first start: neon init && neon start → first query   vs  initdb && pg_ctl start -w → first query
//   restart:     neon start of an existing repository    vs  pg_ctl start -w of an existing data directory
//   CLI call:    neon pg list                            vs  the same REST call (GET /pgs) with curl
// Same binaries (the embedded PostgreSQL), same initdb flags and server settings, same user. Rounds alternate
// neon and postgres so that drift in machine load hits both alike; ratios are medians of per-round ratios.
// The CLI row is measured with the environment as it is and, when NODE_EXTRA_CA_CERTS is set (it makes every
// Node start parse a CA bundle), without it too.
//
//   npm run bench:startup [-- --runs 7] [-- --calls 7] [-- --cli path/to/bin.js] [-- --no-first] [-- --trace]
// --trace prints where the time of `neon start` goes instead (per step, across processes; see lib/trace.ts).
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { embeddedBinaries } from '../postgres/binaries.js';
import { INITDB_FLAGS } from '../postgres/initdb.js';
import { asUser, chownTo, pgUserFor } from '../postgres/user.js';
import { freePort } from '../lib/net.js';
import { CLI as BUILT_CLI, cleanup, tmpDir } from '../testkit/env.js';

const argValue = (name: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined);
const runs = Number(argValue('--runs')) || 5;
const calls = Number(argValue('--calls')) || 7;
const CLI = path.resolve(argValue('--cli') ?? BUILT_CLI);
const withFirst = !process.argv.includes('--no-first');
const binaries = (await embeddedBinaries())!;
const pgUser = pgUserFor('postgres');
const CA_VAR = 'NODE_EXTRA_CA_CERTS';
const hasCurl = spawnSync('curl', ['--version']).status === 0;

async function firstQuery(connectionString: string): Promise<void> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  await client.query('select 1');
  await client.end();
}

function run(command: string, args: string[], options: { cwd?: string; asPg?: boolean; env?: NodeJS.ProcessEnv } = {}): string {
  const result = spawnSync(command, args, {
    cwd: options.cwd,
    env: options.env,
    encoding: 'utf8',
    ...(options.asPg ? asUser(pgUser) : {}),
  });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed: ${result.stderr}`);
  return result.stdout;
}

function timed(fn: () => unknown): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

const withoutCa = (): NodeJS.ProcessEnv => {
  const env = { ...process.env };
  delete env[CA_VAR];
  return env;
};

const hasTime = spawnSync('/usr/bin/time', ['true']).status === 0;

/**
 * CPU time (user + system) of one command, from /usr/bin/time: unlike its wall time it barely moves with the
 * machine's load, so it compares builds on a busy machine. Undefined without /usr/bin/time.
 */
function cpuMs(command: string, args: string[], cwd: string): number | undefined {
  if (!hasTime) return undefined;
  const result = spawnSync('/usr/bin/time', ['-f', '%U %S', command, ...args], { cwd, encoding: 'utf8' });
  const [user, system] = result.stderr.trim().split('\n').pop()!.split(' ').map(Number);
  return result.status === 0 ? (user + system) * 1000 : undefined;
}

/** CLI calls against a running daemon: `neon pg list` (with and without the CA bundle) and curl, interleaved. */
function cliCalls(dir: string, into: Record<'cli' | 'cliNoCa' | 'rest' | 'cpu', number[]>): void {
  const repo = path.join(dir, '.neon');
  const { port } = JSON.parse(fs.readFileSync(path.join(repo, 'daemon.json'), 'utf8')) as { port: number };
  const token = fs.readFileSync(path.join(repo, 'token'), 'utf8').trim();
  const curl = ['-sf', '-o', '/dev/null', '-H', `authorization: Bearer ${token}`, `http://127.0.0.1:${port}/pgs`];
  for (let i = 0; i < calls; i++) {
    into.cli.push(timed(() => run(process.execPath, [CLI, 'pg', 'list'], { cwd: dir })));
    const cpu = cpuMs(process.execPath, [CLI, 'pg', 'list'], dir);
    if (cpu !== undefined) into.cpu.push(cpu);
    if (process.env[CA_VAR]) into.cliNoCa.push(timed(() => run(process.execPath, [CLI, 'pg', 'list'], { cwd: dir, env: withoutCa() })));
    if (hasCurl) into.rest.push(timed(() => run('curl', curl)));
  }
}

async function neonRound(cli: Record<'cli' | 'cliNoCa' | 'rest' | 'cpu', number[]>): Promise<[number, number]> {
  const dir = tmpDir('neon-bench-');
  try {
    let t0 = performance.now();
    run(process.execPath, [CLI, 'init'], { cwd: dir });
    const out = JSON.parse(run(process.execPath, [CLI, 'start', '--json'], { cwd: dir }));
    await firstQuery(out.connection_string);
    const first = performance.now() - t0;
    cliCalls(dir, cli);
    run(process.execPath, [CLI, 'stop'], { cwd: dir });
    t0 = performance.now();
    const again = JSON.parse(run(process.execPath, [CLI, 'start', '--json'], { cwd: dir }));
    await firstQuery(again.connection_string);
    const restart = performance.now() - t0;
    run(process.execPath, [CLI, 'stop'], { cwd: dir });
    return [first, restart];
  } finally {
    await cleanup(dir);
  }
}

async function postgresRound(): Promise<[number, number]> {
  const dir = tmpDir('pg-bench-');
  const data = path.join(dir, 'data');
  const pwfile = path.join(dir, 'pw');
  const port = await freePort();
  fs.writeFileSync(pwfile, 'secret\n');
  await chownTo(pgUser, dir, true);
  const bin = (name: string) => path.join(binaries.binDir, name);
  const options = `-c port=${port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c wal_level=replica -c max_wal_senders=16 -c max_replication_slots=16 -c shared_buffers=128MB`;
  const url = `postgresql://postgres:secret@127.0.0.1:${port}/postgres`;
  try {
    let t0 = performance.now();
    run(bin('initdb'), ['-D', data, '-U', 'postgres', `--pwfile=${pwfile}`, ...INITDB_FLAGS], { asPg: true });
    run(bin('pg_ctl'), ['start', '-w', '-s', '-D', data, '-l', path.join(dir, 'log'), '-o', options], { asPg: true });
    await firstQuery(url);
    const first = performance.now() - t0;
    run(bin('pg_ctl'), ['stop', '-w', '-s', '-m', 'fast', '-D', data], { asPg: true });
    t0 = performance.now();
    run(bin('pg_ctl'), ['start', '-w', '-s', '-D', data, '-l', path.join(dir, 'log'), '-o', options], { asPg: true });
    await firstQuery(url);
    const restart = performance.now() - t0;
    run(bin('pg_ctl'), ['stop', '-w', '-s', '-m', 'fast', '-D', data], { asPg: true });
    return [first, restart];
  } finally {
    await cleanup(dir);
  }
}

/**
 * --trace: where the time of `neon start` (existing repository → first query) goes, step by step across the
 * processes (NEON_TRACE, see lib/trace.ts), as milliseconds since the CLI was started; medians over the runs.
 */
async function traceRestarts(count: number): Promise<void> {
  const dir = tmpDir('neon-trace-');
  const steps = new Map<string, number[]>();
  const note = (step: string, ms: number) => steps.set(step, [...(steps.get(step) ?? []), ms]);
  try {
    run(process.execPath, [CLI, 'init'], { cwd: dir });
    run(process.execPath, [CLI, 'start'], { cwd: dir });
    run(process.execPath, [CLI, 'stop'], { cwd: dir });
    for (let i = 0; i < count; i++) {
      const file = path.join(dir, `trace-${i}`);
      const daemonLog = path.join(dir, '.neon/logs/daemon.log');
      const logStart = fs.existsSync(daemonLog) ? fs.statSync(daemonLog).size : 0;
      const t0 = performance.timeOrigin + performance.now();
      const out = JSON.parse(run(process.execPath, [CLI, 'start', '--json'], { cwd: dir, env: { ...process.env, NEON_TRACE: file } }));
      const printed = performance.timeOrigin + performance.now();
      await firstQuery(out.connection_string);
      const queried = performance.timeOrigin + performance.now();
      // A commit returns once the safekeepers have it (synchronous_standby_names): when writes can begin.
      const writer = new pg.Client({ connectionString: out.connection_string });
      await writer.connect();
      await writer.query('create table if not exists bench_startup (at timestamptz); insert into bench_startup values (now())');
      await writer.end();
      const committed = performance.timeOrigin + performance.now();
      const seen = new Map<string, number>();
      for (const line of fs.readFileSync(file, 'utf8').trim().split('\n')) {
        const [at, , role, ...step] = line.split(' ');
        const key = `${role}: ${step.join(' ')}`;
        if (!seen.has(key)) seen.set(key, Number(at) - t0);
      }
      // The safekeepers' first streaming line, from the daemon's log (ISO times, ms precision).
      const log = fs.readFileSync(daemonLog, 'utf8').slice(logStart);
      const streaming = [...log.matchAll(/^(\S+) .*: streaming from/gm)].map((m) => Date.parse(m[1]) - t0);
      for (const [key, ms] of seen) note(key, ms);
      note('bench: neon start exited, JSON parsed', printed - t0);
      note('bench: first query answered', queried - t0);
      note('bench: first commit acknowledged (after the first query)', committed - t0);
      if (streaming.length) note('daemon log: first safekeeper streaming', Math.min(...streaming));
      run(process.execPath, [CLI, 'stop'], { cwd: dir });
    }
  } finally {
    await cleanup(dir);
  }
  console.log(`\`neon start\` of an existing repository, ${count} runs, ms since the CLI was spawned (medians); load ${loadavg()}`);
  const rows = [...steps].map(([step, values]) => [median(values), step] as const).sort((a, b) => a[0] - b[0]);
  for (const [ms, step] of rows) console.log(`${ms.toFixed(0).padStart(6)}  ${step}`);
}

const loadavg = () => fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const ratios = (ours: number[], theirs: number[]) => ours.map((value, i) => value / theirs[i]);
if (process.argv.includes('--trace')) {
  await traceRestarts(runs);
  process.exit(0);
}
const neon = { first: [] as number[], restart: [] as number[] };
const postgres = { first: [] as number[], restart: [] as number[] };
const cli = { cli: [] as number[], cliNoCa: [] as number[], rest: [] as number[], cpu: [] as number[] };
for (let i = 0; i < runs; i++) {
  const [pgFirst, pgRestart] = await postgresRound();
  const [neonFirst, neonRestart] = await neonRound(cli);
  postgres.first.push(pgFirst);
  postgres.restart.push(pgRestart);
  neon.first.push(neonFirst);
  neon.restart.push(neonRestart);
  process.stderr.write(`run ${i + 1}/${runs} done\n`);
}

console.log(
  `PostgreSQL ${binaries.fullVersion} (embedded), ${runs} runs, medians; node ${process.version}; ${execFileSync('nproc').toString().trim()} cores; load ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}; CLI ${path.relative(process.cwd(), CLI)}`,
);
console.log('| measure | neon (ms) | peer (ms) | ratio (median per run) | target |');
console.log('|---|---:|---:|---:|---:|');
const row = (label: string, ours: number[], theirs: number[], target: number) => {
  const ratio = median(ratios(ours, theirs));
  console.log(
    `| ${label} | ${median(ours).toFixed(0)} | ${median(theirs).toFixed(0)} | ${ratio.toFixed(2)} | ≤ ${target}× ${ratio <= target ? '✓' : '✗'} |`,
  );
};
if (withFirst) row('first start (clean folder → first query) vs initdb + pg_ctl start', neon.first, postgres.first, 1.5);
row('`neon start` of an existing repository → first query vs `pg_ctl start`', neon.restart, postgres.restart, 1.5);
const cliRow = (label: string, values: number[]) => {
  if (!values.length) return;
  const rest = cli.rest.length ? `${median(cli.rest).toFixed(0)}` : '-';
  const ratio = cli.rest.length ? median(ratios(values, cli.rest)).toFixed(1) : '-';
  const ms = median(values);
  console.log(`| ${label} | ${ms.toFixed(0)} | ${rest} | ${ratio} | ≤ 150 ms ${ms <= 150 ? '✓' : '✗'} |`);
};
cliRow(`\`neon pg list\` vs curl GET /pgs (${cli.cli.length} calls${process.env[CA_VAR] ? `, ${CA_VAR} set` : ''})`, cli.cli);
cliRow(`\`neon pg list\` vs curl GET /pgs (${cli.cliNoCa.length} calls, without ${CA_VAR})`, cli.cliNoCa);
if (cli.cpu.length) console.log(`\`neon pg list\` CPU time (user + system, ${cli.cpu.length} calls): median ${median(cli.cpu).toFixed(0)} ms`);
