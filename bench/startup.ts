// bench/startup: time from a clean folder to the first successful query.
//   neon:     neon init && neon start            then, after neon stop:  neon start
//   postgres: initdb && pg_ctl start -w          then, after pg_ctl stop: pg_ctl start -w
// Same binaries (the embedded PostgreSQL), same initdb flags and server settings, same user. Prints medians.
//
//   npm run bench:startup [-- --runs 7]
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { embeddedBinaries } from '../postgres/binaries.js';
import { INITDB_FLAGS } from '../postgres/initdb.js';
import { asUser, chownTo, pgUserFor } from '../postgres/user.js';
import { freePort } from '../lib/net.js';
import { CLI, cleanup, tmpDir } from '../testkit/env.js';

const runs = Number(process.argv[process.argv.indexOf('--runs') + 1]) || 5;
const binaries = (await embeddedBinaries())!;
const pgUser = pgUserFor('postgres');

async function firstQuery(connectionString: string): Promise<void> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  await client.query('select 1');
  await client.end();
}

function run(command: string, args: string[], options: { cwd?: string; asPg?: boolean } = {}): string {
  const result = spawnSync(command, args, { cwd: options.cwd, encoding: 'utf8', ...(options.asPg ? asUser(pgUser) : {}) });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed: ${result.stderr}`);
  return result.stdout;
}

async function neonRound(): Promise<[number, number]> {
  const dir = tmpDir('neon-bench-');
  try {
    let t0 = performance.now();
    run(process.execPath, [CLI, 'init'], { cwd: dir });
    const out = JSON.parse(run(process.execPath, [CLI, 'start', '--json'], { cwd: dir }));
    await firstQuery(out.connection_string);
    const first = performance.now() - t0;
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

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const results = { neon: [[], []] as number[][], postgres: [[], []] as number[][] };
for (let i = 0; i < runs; i++) {
  // Alternate so that drift in machine load hits both sides alike.
  for (const [name, round] of [
    ['postgres', postgresRound],
    ['neon', neonRound],
  ] as const) {
    const [first, restart] = await round();
    results[name][0].push(first);
    results[name][1].push(restart);
  }
  process.stderr.write(`run ${i + 1}/${runs} done\n`);
}

const rows = [
  ['first start (clean folder → first query)', median(results.neon[0]), median(results.postgres[0]), 1.5],
  ['restart (existing repository → first query)', median(results.neon[1]), median(results.postgres[1]), 2.0],
] as const;
console.log(
  `PostgreSQL ${binaries.fullVersion} (embedded), ${runs} runs, medians; node ${process.version}; ${execFileSync('nproc').toString().trim()} cores`,
);
console.log('| measure | neon (ms) | initdb + pg_ctl (ms) | ratio | target |');
console.log('|---|---:|---:|---:|---:|');
for (const [label, ours, theirs, target] of rows) {
  const ratio = ours / theirs;
  console.log(
    `| ${label} | ${ours.toFixed(0)} | ${theirs.toFixed(0)} | ${ratio.toFixed(2)} | ≤ ${target} ${ratio <= target ? '✓' : '✗'} |`,
  );
}
