// bench/wal-verify: how fast the WAL decoder checks real WAL, one core. Makes ~256 MiB of WAL with the embedded
// Postgres 17 (a bulk load, then many single-row updates: large records with full-page images and many small
// ones), or takes a folder of segments; then times verifyWal (page headers, xl_prev, CRC-32C, block headers)
// and changedPages (the same walk, collecting block references) over all of it. Prints the median of 3 runs in
// MiB/s of WAL, by wall clock and by the process's CPU time (the latter is steadier on a busy machine).
//
//   npm run bench:wal-verify [-- --wal DIR] [--runs 3] [--keep]
import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import pg from 'pg';
import { freePort } from '../lib/net.js';
import { embeddedBinaries, reachableBinaries } from '../postgres/binaries.js';
import { asUser, chownTo, pgUserFor } from '../postgres/user.js';
import { cleanup, tmpDir } from '../testkit/env.js';
import { changedPages } from '../wal/changed-pages.js';
import { verifyWal, walFileSource } from '../wal/verify.js';

const option = (name: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const runs = Number(option('runs') ?? 3);
const pgUser = pgUserFor();

/** A throwaway Postgres 17 cluster; `pg_wal` gets ~256 MiB of WAL, copied out (finished segments only). */
async function makeWal(dir: string): Promise<string> {
  const embedded = await embeddedBinaries();
  if (!embedded) throw new Error('bench:wal-verify needs the embedded Postgres (npm install), or --wal DIR');
  const { binDir } = await reachableBinaries(embedded, pgUser);
  const data = path.join(dir, 'data');
  await chownTo(pgUser, dir, true);
  const run = (bin: string, args: string[]) =>
    execa(path.join(binDir, bin), args, { ...asUser(pgUser), env: { LC_ALL: 'C' }, stdin: 'ignore' });
  await run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C']);
  const port = await freePort();
  // Large max_wal_size and wal_keep_size: no segment is recycled while the workload runs.
  const settings = `-p ${port} -k ${dir} -c listen_addresses='' -c fsync=off -c max_wal_size=4GB -c wal_keep_size=4GB -c checkpoint_timeout=1h`;
  await run('pg_ctl', ['-D', data, '-l', path.join(dir, 'log'), '-w', '-o', settings, 'start']);
  const client = new pg.Client({ host: dir, port, user: 'postgres', database: 'postgres' });
  try {
    await client.connect();
    await client.query(`create table accounts (aid int primary key, bid int, abalance int, filler char(84))`);
    await client.query(`insert into accounts select g, g / 100000, 0, '' from generate_series(1, 600000) g`);
    await client.query('checkpoint'); // the next change of each page carries a full-page image
    await client.query(`create table history (aid int, delta int, mtime timestamp, filler char(22))`);
    for (let j = 0; j < 30; j++) {
      await client.query(`do $$ begin for i in 1..5000 loop
        update accounts set abalance = abalance + 1 where aid = ((i * 7919 + ${j} * 104729) % 599999) + 1;
        insert into history values (i, 1, now(), '');
      end loop; end $$`);
    }
    const { rows } = await client.query(`select pg_walfile_name(pg_switch_wal()) as last`);
    const out = path.join(dir, 'wal');
    fs.mkdirSync(out);
    const walDir = path.join(data, 'pg_wal');
    for (const name of fs.readdirSync(walDir)) {
      if (/^[0-9A-F]{24}$/.test(name) && name <= rows[0].last) fs.copyFileSync(path.join(walDir, name), path.join(out, name));
    }
    return out;
  } finally {
    await client.end().catch(() => {});
    await run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']).catch(() => {});
  }
}

/** Median wall and CPU milliseconds of `runs` calls. */
async function time(fn: () => Promise<void>): Promise<{ wall: number; cpu: number }> {
  const walls: number[] = [];
  const cpus: number[] = [];
  for (let i = 0; i < runs; i++) {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await fn();
    walls.push(performance.now() - t0);
    const cpu = process.cpuUsage(cpu0);
    cpus.push((cpu.user + cpu.system) / 1000);
  }
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  return { wall: median(walls), cpu: median(cpus) };
}

const given = option('wal');
const scratch = given ? undefined : tmpDir('neon-bench-walverify-');
try {
  const dir = given ?? (await makeWal(scratch!));
  const source = walFileSource(dir);
  if (source.first === undefined) throw new Error(`no WAL segments in ${dir}`);
  const size = BigInt(source.segmentSize);
  const upTo = (source.last! + 1n) * size;
  const mib = Number(upTo - source.first * size) / 1048576;
  const probe = await verifyWal(dir, { upTo });
  if (!probe.ok) throw new Error(`the WAL in ${dir} does not verify: ${probe.error?.message}`);
  console.log(`${mib.toFixed(0)} MiB of WAL, ${probe.records} records, ${source.files.size} segments (${dir})`);
  const rate = (ms: number) => `${(mib / (ms / 1000)).toFixed(0).padStart(5)} MiB/s`;
  const report = (name: string, t: { wall: number; cpu: number }) =>
    console.log(`${name.padEnd(13)} ${rate(t.wall)} wall (${t.wall.toFixed(0)} ms)  ${rate(t.cpu)} CPU   median of ${runs}`);
  report(
    'verify',
    await time(async () => {
      const result = await verifyWal(dir, { upTo });
      if (!result.ok) throw result.error;
    }),
  );
  report(
    'changedPages',
    await time(async () => {
      await changedPages(dir, { from: probe.firstLsn!, upTo });
    }),
  );
} finally {
  if (scratch && !process.argv.includes('--keep')) await cleanup(scratch);
}
