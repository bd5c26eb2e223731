// A compute starts on its restored data directory before the files reach the disk (as `cp -a` + `pg_ctl start`
// would), marked `neon.unsynced` with the boot id until the daemon has flushed them. Flushed, the mark goes. A
// directory still marked by an earlier boot (the machine went down first) cannot be trusted, whatever Postgres
// thinks of it: the daemon makes it again from the image and the WAL, and every committed row is there.
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { UNSYNCED } from '../../pageserver/unsynced.js';
import { cleanup, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { waitFor } from '../../testkit/wait.js';

const test = suite('restored data directories reach the disk, or are made again after a reboot');
let dir = '';
const cwd = () => ({ cwd: dir });
const pgdata = (name: string) => path.join(dir, '.neon', 'computes', name, 'pgdata');
const marker = (name: string) => path.join(pgdata(name), UNSYNCED);
const urlOf = async (name: string): Promise<string> =>
  (await neonJson<{ name: string; connection_string: string }[]>(['pg', 'list'], cwd())).find((c) => c.name === name)!.connection_string;
const totals = async (url: string) =>
  (await query<{ n: number; s: number }>(url, 'select count(*)::int as n, coalesce(sum(v), 0)::int as s from t'))[0];

test.before(async () => {
  dir = tmpDir();
});
test.after(async () => {
  await cleanup(dir);
});

test('a new compute’s files are flushed while it runs; after a reboot before that, it is made again', async () => {
  const main = (await neonJson(['start'], cwd())).connection_string;
  await query(main, 'create table t (id int primary key, v int); insert into t select g, g % 7 from generate_series(1, 2000) g');
  await neonJson(['snapshot', 'create', 'A'], cwd());
  await query(main, 'insert into t select g, 1 from generate_series(2001, 2500) g');

  const b1 = (await neonJson(['pg', 'create', '-n', 'b1'], cwd())).connection_string;
  await neonJson(['pg', 'create', '-n', 's1', '--read-only', '--at', 'A'], cwd());
  for (const name of ['b1', 's1']) {
    await waitFor(`${name}'s restored files flushed (its mark gone)`, () => !fs.existsSync(marker(name)), 60_000);
  }
  const log = fs.readFileSync(path.join(dir, '.neon', 'logs', 'daemon.log'), 'utf8');
  assert.match(log, /compute b1: its restored files are on disk/);

  // Rows committed on the new branch are in its safekeepers' WAL.
  await query(b1, 'update t set v = v + 100 where id % 10 = 0; insert into t select g, 3 from generate_series(2501, 3000) g');
  const before = { b1: await totals(b1), s1: await totals(await urlOf('s1')) };
  assert.is(before.s1.n, 2000, 'the static compute shows snapshot A');
  const [{ file }] = await query<{ file: string }>(b1, "select pg_relation_filepath('t') as file");
  await neonJson(['stop'], cwd());

  // As after a crash of the machine before the flush: both still marked, from another boot, and the table's
  // pages never reached the disk (Postgres, which shut down cleanly, would read the damage as it is).
  for (const name of ['b1', 's1']) {
    fs.writeFileSync(marker(name), '00000000-0000-0000-0000-000000000000\n');
    fs.truncateSync(path.join(pgdata(name), file), 0);
  }
  await neonJson(['start'], cwd());
  assert.equal(await totals(await urlOf('b1')), before.b1, 'b1 made again holds every committed row');
  assert.equal(await totals(await urlOf('s1')), before.s1, 's1 made again at snapshot A');
  const after = fs.readFileSync(path.join(dir, '.neon', 'logs', 'daemon.log'), 'utf8');
  assert.match(after, /compute b1: its data directory was restored before the machine last went down/);
  assert.is(fs.existsSync(`${pgdata('b1')}.lost`), false, 'the untrusted directory is gone');
  await waitFor('b1 made again flushed', () => !fs.existsSync(marker('b1')), 60_000);
  // It writes on as the primary of its branch.
  await query(await urlOf('b1'), 'insert into t values (3001, 0)');
  assert.is((await totals(await urlOf('b1'))).n, before.b1.n + 1);
});

test.run();
