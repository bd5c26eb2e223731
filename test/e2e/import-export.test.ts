import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { suite } from 'uvu';
import { pgUserFor } from '../../postgres/user.js';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';

// Seed 003, scenarios 3 and 4, with Debian's PostgreSQL 15: a PGDATA made by its initdb/pg_ctl is imported by
// `neon init --snapshot_path`, runs under neon, and comes back out as pgdata (vanilla pg_ctl runs it), as a tar
// backup (pg_verifybackup accepts it) and as a WAL-G backup (imported again by neon init). Bad input changes nothing.

const PG15 = '/usr/lib/postgresql/15/bin';
const pgUser = pgUserFor();
const flow = suite('import and export with Debian PostgreSQL 15');

const root = tmpDir('neon-import-export-');
// The vanilla clusters' logs and sockets go beside their data directories, as the Postgres user.
if (pgUser) fs.chownSync(root, pgUser.uid, pgUser.gid);
const repo = path.join(root, 'repo');
const vanillaRunning: string[] = [];
/** What every check compares: the rows of t, in order, hashed. */
const CHECKSUM = "select count(*)::int as n, md5(string_agg(x::text || ':' || y, ',' order by x)) as sum from t";
let expected = { n: 0, sum: '' };
let connection = '';

const asPg = pgUser ? { uid: pgUser.uid, gid: pgUser.gid } : {};
const pgBin = (name: string, args: string[]) => execa(path.join(PG15, name), args, { ...asPg, env: { LC_ALL: 'C', LANG: 'C' } });

const freePort = () =>
  new Promise<number>((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });

function chownR(target: string): void {
  if (!pgUser) return;
  fs.lchownSync(target, pgUser.uid, pgUser.gid);
  if (fs.lstatSync(target).isDirectory()) for (const name of fs.readdirSync(target)) chownR(path.join(target, name));
}

/** Start a data directory with Debian's pg_ctl (as the Postgres user) on a free port; returns its URL. */
async function vanillaStart(dataDir: string): Promise<string> {
  chownR(dataDir);
  fs.chmodSync(dataDir, 0o700);
  const port = await freePort();
  await pgBin('pg_ctl', ['-D', dataDir, '-w', '-l', `${dataDir}.log`, '-o', `-p ${port} -k ${path.dirname(dataDir)} -c listen_addresses=127.0.0.1`, 'start']);
  vanillaRunning.push(dataDir);
  return `postgresql://alice@127.0.0.1:${port}/postgres`;
}

async function vanillaStop(dataDir: string): Promise<void> {
  await pgBin('pg_ctl', ['-D', dataDir, '-w', '-m', 'fast', 'stop']);
  vanillaRunning.splice(vanillaRunning.indexOf(dataDir), 1);
}

/** What a failed command must leave alone: the repository's state, history and computes. */
function repositoryState(): string {
  const read = (rel: string) => fs.readFileSync(path.join(repo, rel), 'utf8');
  return JSON.stringify([read('state.json'), read('pageserver/history.json'), fs.readdirSync(path.join(repo, 'computes')).sort()]);
}

flow.after(async () => {
  for (const dir of [...vanillaRunning]) await vanillaStop(dir).catch(() => undefined);
  await neon(['stop', '--repo', repo], { cwd: root });
  await neon(['stop', '--repo', path.join(root, 'walg-repo')], { cwd: root });
  await cleanup(root);
});

flow('a PGDATA made and stopped by Debian initdb/pg_ctl is imported by neon init and runs under neon start', async () => {
  const src = path.join(root, 'src');
  fs.mkdirSync(src, { mode: 0o700 });
  chownR(src);
  await pgBin('initdb', ['-D', src, '-U', 'alice', '--auth=trust', '--data-checksums']);
  const url = await vanillaStart(src);
  await query(url, "create table t as select x, repeat('v', x % 50) as y from generate_series(1, 20000) x");
  [expected] = await query(url, CHECKSUM);
  await vanillaStop(src);

  const init = await neonJson(['init', '--repo', repo, '--snapshot_path', src, '--snapshot_format', 'pgdata', '--pg-version', '15'], { cwd: root });
  assert.equal(init.user, 'alice', 'the login is the cluster’s own superuser');
  assert.match(init.postgres.fullVersion ?? init.postgres.full_version, /^15\./);
  assert.ok(!fs.existsSync(path.join(root, `.repo-import-${process.pid}`)), 'no staging folder is left');
  const config = fs.readFileSync(path.join(repo, 'config.json'), 'utf8');
  assert.doesNotMatch(config, /snapshot_path|snapshotPath/, 'snapshot_path is one-time: not saved');
  const started = await neon(['start', '--repo', repo], { cwd: root });
  assert.equal(started.code, 0, started.stderr);
  // The port moves at start when another server holds the default: ask the running compute.
  connection = (await neonJson(['pg', 'show', '-n', 'main', '--repo', repo], { cwd: root })).connection_string;
  assert.equal(new URL(connection).password, new URL(init.connection).password, 'init printed the password the compute answers to');
  assert.deepEqual((await query(connection, CHECKSUM))[0], expected, 'every row of the imported cluster is there');
  await query(connection, "insert into t select x, 'after import' from generate_series(20001, 21000) x");
  [expected] = await query(connection, CHECKSUM);
});

flow('export pgdata: vanilla pg_ctl of the same major runs it with every row, no neon settings left', async () => {
  const out = path.join(root, 'out-pgdata');
  const done = await neonJson(['export', '--repo', repo, '--snapshot_path', out, '--snapshot_format', 'pgdata'], { cwd: root });
  assert.equal(done.snapshot_format, 'pgdata');
  assert.ok(!fs.existsSync(path.join(out, 'neon.conf')));
  assert.doesNotMatch(fs.readFileSync(path.join(out, 'postgresql.conf'), 'utf8'), /neon\.conf/);
  assert.doesNotMatch(fs.readFileSync(path.join(out, 'pg_hba.conf'), 'utf8'), /neon_internal/);
  const url = await vanillaStart(out);
  assert.deepEqual((await query(url, CHECKSUM))[0], expected);
  assert.equal((await query(url, 'select pg_is_in_recovery() as r'))[0].r, false, 'recovery is done: a primary');
  await vanillaStop(out);
});

flow('export tar of a snapshot: pg_verifybackup accepts it and the extracted backup starts', async () => {
  await neonJson(['snapshot', 'create', 'before-delete', '--repo', repo], { cwd: root });
  await query(connection, 'delete from t where x > 20000');
  const out = path.join(root, 'out-tar');
  const done = await neonJson(['export', '--repo', repo, '--snapshot_path', out, '--snapshot_format', 'tar', '--snapshot', 'before-delete'], { cwd: root });
  assert.match(done.label, /before-delete/);
  const extracted = path.join(root, 'extracted');
  fs.mkdirSync(path.join(extracted, 'pg_wal'), { recursive: true });
  await execa('tar', ['-xf', path.join(out, 'base.tar'), '-C', extracted]);
  await execa('tar', ['-xf', path.join(out, 'pg_wal.tar'), '-C', path.join(extracted, 'pg_wal')]);
  fs.copyFileSync(path.join(out, 'backup_manifest'), path.join(extracted, 'backup_manifest'));
  chownR(extracted);
  fs.chmodSync(extracted, 0o700);
  const verified = await pgBin('pg_verifybackup', [extracted]);
  assert.match(verified.stdout, /backup successfully verified/);
  const url = await vanillaStart(extracted);
  assert.deepEqual((await query(url, CHECKSUM))[0], expected, 'the snapshot, not the present');
  await vanillaStop(extracted);
});

flow('export walg → neon init --snapshot_format walg: the same rows in a second repository', async () => {
  const out = path.join(root, 'out-walg');
  await neonJson(['export', '--repo', repo, '--snapshot_path', out, '--snapshot_format', 'walg', '--snapshot', 'before-delete'], { cwd: root });
  assert.ok(fs.readdirSync(path.join(out, 'basebackups_005')).some((name) => name.endsWith('_backup_stop_sentinel.json')));
  const second = path.join(root, 'walg-repo');
  const init = await neonJson(['init', '--repo', second, '--snapshot_path', out, '--snapshot_format', 'walg'], { cwd: root });
  assert.match(init.postgres.fullVersion ?? init.postgres.full_version, /^15\./, 'the backup’s major version is chosen');
  const started = await neon(['start', '--repo', second], { cwd: root });
  assert.equal(started.code, 0, started.stderr);
  const url = (await neonJson(['pg', 'show', '-n', 'main', '--repo', second], { cwd: root })).connection_string;
  const [row] = await query(url, CHECKSUM);
  await neon(['stop', '--repo', second], { cwd: root });
  assert.deepEqual(row, expected);
});

flow('bad input: one clear error, nothing written, the repository as it was', async () => {
  const before = repositoryState();
  const foreign = path.join(root, 'foreign');
  fs.mkdirSync(foreign, { mode: 0o700 });
  chownR(foreign);
  await pgBin('initdb', ['-D', foreign, '-U', 'alice', '--auth=trust']);
  const other = await neon(['import', '--repo', repo, '--snapshot_path', foreign, '--snapshot_format', 'pgdata'], { cwd: root });
  assert.equal(other.code, 1);
  assert.match(other.stderr, /system identifier .* neon init --snapshot_path/);
  assert.equal(repositoryState(), before, 'a refused import changes no state, history or compute');

  const noRepo = path.join(root, 'never');
  const notPgdata = path.join(root, 'not-pgdata');
  fs.mkdirSync(notPgdata);
  fs.writeFileSync(path.join(notPgdata, 'README'), 'hello');
  const cases: [string[], RegExp][] = [
    [['--snapshot_path', notPgdata, '--snapshot_format', 'pgdata'], /PG_VERSION is missing/],
    [['--snapshot_path', foreign, '--snapshot_format', 'pgdata', '--pg-version', '17'], /PostgreSQL 15 cluster, not 17/],
    [['--snapshot_path', foreign, '--snapshot_format', 'zip'], /snapshot format "zip"/],
    [['--snapshot_path', path.join(root, 'missing'), '--snapshot_format', 'pgdata'], /does not exist/],
    [['--snapshot_format', 'pgdata'], /--snapshot_path is needed/],
  ];
  for (const [args, message] of cases) {
    const result = await neon(['init', '--repo', noRepo, ...args], { cwd: root });
    assert.equal(result.code, 1, args.join(' '));
    assert.match(result.stderr, message);
    assert.equal(result.stderr.trim().split('\n').filter((l) => l.startsWith('neon:')).length, 1, 'one line');
    assert.ok(!fs.existsSync(noRepo), `nothing written for ${args.join(' ')}`);
  }
  assert.deepEqual(fs.readdirSync(root).filter((n) => n.includes('-import-')), [], 'no staging folder is left');
  assert.deepEqual((await query(connection, 'select 1 as one'))[0], { one: 1 }, 'the repository still runs');
});

flow.run();
