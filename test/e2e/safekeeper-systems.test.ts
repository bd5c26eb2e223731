import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import pg from 'pg';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { freePort } from '../../lib/net.js';
import { embeddedBinaries, reachableBinaries } from '../../postgres/binaries.js';
import { asUser, chownTo, pgUserFor } from '../../postgres/user.js';
import { Safekeeper, type SafekeeperStatus } from '../../safekeeper/safekeeper.js';
import { cleanup, tmpDir } from '../../testkit/env.js';
import { waitFor } from '../../testkit/wait.js';

// A safekeeper folder keeps the WAL of several branches, and each branch's WAL must come from one database
// system: `system.json` records, per branch, the system its WAL is of. Two real clusters (two initdb runs, so two
// system identifiers) stream into one safekeeper folder: the second cluster is refused on the first one's branch,
// with an error naming both systems and the branch, and nothing of it lands there; on a branch of its own it is
// accepted.

const pgUser = pgUserFor();

interface Cluster {
  dir: string;
  data: string;
  socket: string;
  port: number;
  binDir: string;
  systemId: string;
}

const dirs: string[] = [];
const clusters: Cluster[] = [];

async function binDir(): Promise<string | undefined> {
  const embedded = await embeddedBinaries();
  if (embedded) return (await reachableBinaries(embedded, pgUser)).binDir;
  const system = '/usr/lib/postgresql/15/bin';
  return fs.existsSync(path.join(system, 'initdb')) ? system : undefined;
}

async function startCluster(bin: string): Promise<Cluster> {
  const dir = tmpDir('neon-sk-systems-');
  dirs.push(dir);
  const data = path.join(dir, 'data');
  const socket = path.join(dir, 'sock');
  fs.mkdirSync(socket, { mode: 0o755 });
  await chownTo(pgUser, dir, true);
  const run = (name: string, args: string[]) => execa(path.join(bin, name), args, { ...asUser(pgUser), env: { LC_ALL: 'C' }, stdin: 'ignore' });
  await run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C']);
  const port = await freePort();
  await run('pg_ctl', ['-D', data, '-l', path.join(dir, 'log'), '-w', '-o', `-p ${port} -k ${socket} -c listen_addresses=''`, 'start']);
  const client = new pg.Client({ host: socket, port, user: 'postgres', database: 'postgres' });
  await client.connect();
  const { rows } = await client.query('select system_identifier::text as id from pg_control_system()');
  await client.end();
  const cluster = { dir, data, socket, port, binDir: bin, systemId: rows[0].id as string };
  clusters.push(cluster);
  return cluster;
}

/** A safekeeper of folder `skDir` streaming `branch` from `cluster`, in this process, with what it reported. */
function streamFrom(skDir: string, branch: string, cluster: Cluster) {
  const seen = { status: undefined as SafekeeperStatus | undefined, logs: [] as string[] };
  const safekeeper = new Safekeeper(
    { name: 'sk1', branch, dir: skDir, slot: 'neon_sk1', primary: { host: cluster.socket, port: cluster.port, user: 'postgres' } },
    {
      status: (status) => (seen.status = status),
      segment: () => undefined,
      log: (_level, message) => seen.logs.push(message),
    },
  );
  const done = safekeeper.run();
  const stop = async () => {
    await safekeeper.stop();
    await done;
  };
  return { safekeeper, seen, stop };
}

/** Until the stream has written WAL into its branch folder (a `.partial` segment) and heard from the primary. */
async function streaming(stream: ReturnType<typeof streamFrom>, walDir: string, what: string): Promise<void> {
  await waitFor(
    what,
    () => !!stream.seen.status?.primaryLsn && fs.existsSync(walDir) && fs.readdirSync(walDir).some((f) => f.endsWith('.partial')),
    60_000,
  );
}

const readSystem = (skDir: string) =>
  JSON.parse(fs.readFileSync(path.join(skDir, 'system.json'), 'utf8')) as { systemId: string; branches: Record<string, string> };

/** Every file of a folder with its size and modification time: unchanged means nothing was written there. */
function listing(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .sort()
    .map((name) => {
      const stat = fs.statSync(path.join(dir, name));
      return `${name} ${stat.size} ${stat.mtimeMs}`;
    });
}

const systems = suite('safekeeper: one database system per branch (system.json)');

systems.after(async () => {
  for (const cluster of clusters) {
    await execa(path.join(cluster.binDir, 'pg_ctl'), ['-D', cluster.data, '-m', 'immediate', '-w', 'stop'], { ...asUser(pgUser), reject: false });
  }
  for (const dir of dirs) await cleanup(dir);
});

systems('another system is refused on a branch recorded with one, and accepted on a branch of its own', async () => {
  const bin = await binDir();
  if (!bin) return console.log('  (no embedded Postgres and no Postgres 15 at /usr/lib/postgresql/15: skipped)');
  const [a, b] = [await startCluster(bin), await startCluster(bin)];
  assert.is.not(a.systemId, b.systemId, 'two initdb runs make two systems');
  const skDir = tmpDir('neon-sk-systems-sk-');
  dirs.push(skDir);
  const mainWal = path.join(skDir, 'wal', 'main');

  // main streams from A: recorded as A's.
  const first = streamFrom(skDir, 'main', a);
  await streaming(first, mainWal, 'main to stream from A');
  await first.stop();
  assert.equal(readSystem(skDir).branches, { main: a.systemId });
  const before = listing(mainWal);
  assert.ok(before.some((line) => line.includes('.partial')), `main holds A's WAL: ${before.join(', ')}`);

  // B on main: refused, with a line naming both systems and the branch; main's files are left as they were.
  const refused = streamFrom(skDir, 'main', b);
  const error = await waitFor('B to be refused on main', () => refused.seen.status?.error ?? undefined, 60_000);
  await refused.stop();
  assert.match(error, 'refusing to mix');
  assert.ok(error.includes(a.systemId) && error.includes(b.systemId) && error.includes('main'), error);
  assert.not.ok(error.includes('\n'), 'one line');
  assert.is(refused.seen.status?.flushLsn ?? null, null, 'nothing of B was acknowledged');
  assert.equal(listing(mainWal), before, "main's WAL files are untouched");
  assert.equal(readSystem(skDir).branches, { main: a.systemId });

  // B on a branch of its own, in the same folder: accepted, and recorded beside main's.
  const other = streamFrom(skDir, 'other', b);
  await streaming(other, path.join(skDir, 'wal', 'other'), 'other to stream from B');
  await other.stop();
  assert.is(other.seen.status?.error ?? null, null);
  assert.equal(readSystem(skDir).branches, { main: a.systemId, other: b.systemId });
  assert.ok(listing(path.join(skDir, 'wal', 'other')).some((line) => line.includes('.partial')), "other holds B's WAL");
  assert.is(readSystem(skDir).systemId, a.systemId, 'the first system stays the folder-wide one');

  // A again on main: still accepted after the refusal.
  const again = streamFrom(skDir, 'main', a);
  await streaming(again, mainWal, 'main to stream from A again');
  await again.stop();
  assert.is(again.seen.status?.error ?? null, null);
});

systems('a branch recorded before the per-branch map holds WAL of the first system: another one is refused there', async () => {
  const bin = await binDir();
  if (!bin) return console.log('  (no embedded Postgres and no Postgres 15 at /usr/lib/postgresql/15: skipped)');
  const [a, b] = clusters.length >= 2 ? clusters : [await startCluster(bin), await startCluster(bin)];
  const skDir = tmpDir('neon-sk-systems-sk-');
  dirs.push(skDir);
  const first = streamFrom(skDir, 'main', a);
  await streaming(first, path.join(skDir, 'wal', 'main'), 'main to stream from A');
  await first.stop();
  // As an older safekeeper left it: the folder's system and segment size, no branches.
  const { systemId, segmentSize } = readSystem(skDir) as unknown as { systemId: string; segmentSize: number };
  fs.writeFileSync(path.join(skDir, 'system.json'), JSON.stringify({ systemId, segmentSize }) + '\n');

  const refused = streamFrom(skDir, 'main', b);
  const error = await waitFor('B to be refused on main', () => refused.seen.status?.error ?? undefined, 60_000);
  await refused.stop();
  assert.match(error, 'refusing to mix');
  assert.ok(error.includes(a.systemId) && error.includes(b.systemId), error);
});

systems.run();
