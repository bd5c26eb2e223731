// neon checkout back and forth: the right rows every time, the data directory left kept (and reused when it is still
// its branch's tip, never when someone wrote on that branch since), and the replaced directories removed.
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { query } from '../../testkit/pg.js';
import { cleanup, neonJson, tmpDir } from '../../testkit/env.js';
import { waitFor } from '../../testkit/wait.js';

/** Background images off, so that every image in these tests is one the test asked for. */
const QUIET = JSON.stringify({ pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 } });

const test = suite('checkout back and forth');
let dir = '';
const cwd = () => ({ cwd: dir });
const mainUrl = async () => (await neonJson(['pg', 'show', '-n', 'main'], cwd())).connection_string as string;
const rows = async () => Number((await query(await mainUrl(), 'select count(*)::int as n from items'))[0].n);
const home = () => path.join(dir, '.neon', 'computes', 'main');
const kept = () => (fs.existsSync(path.join(home(), 'kept')) ? fs.readdirSync(path.join(home(), 'kept')).sort() : []);

/** The main compute's last start, from its log: did it replay WAL (a restore), or start as it was left? */
function lastStartRecovered(): boolean {
  const log = fs.readFileSync(path.join(dir, '.neon', 'logs', 'compute-main.log'), 'utf8');
  return /starting (point-in-time|archive) recovery/.test(log.slice(log.lastIndexOf('starting PostgreSQL')));
}

/** After a checkout: nothing half-done is left beside the data directory, and the trash empties by itself. */
async function noLeftovers(): Promise<void> {
  for (const name of ['pgdata.old', 'pgdata.next', 'restore-wal']) assert.not.ok(fs.existsSync(path.join(home(), name)), `no ${name}`);
  const trash = path.join(dir, '.neon', 'trash');
  await waitFor('the replaced data directory to be removed', () => !fs.existsSync(trash) || fs.readdirSync(trash).length === 0, 60_000);
  assert.ok(kept().length <= 2, `at most two kept states (${kept().join(', ')})`);
}

test.before(async () => {
  dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'neon.config.json'), QUIET);
  const url = (await neonJson(['start'], cwd())).connection_string;
  await query(url, "create table items (id int primary key, body text); insert into items select g, 'a' from generate_series(1, 1000) g");
  await waitFor('the first base image', async () => (await neonJson(['image', 'list'], cwd())).length > 0, 120_000);
  await neonJson(['snapshot', 'create', 'A'], cwd());
  await query(url, "insert into items select g, 'b' from generate_series(1001, 2000) g");
  // An image after A: A is reached from an older image, whose cached copy a checkout may take.
  await neonJson(['image', 'create'], cwd());
});
test.after(() => cleanup(dir));

test('A, back to the tip, back to the branch made at A, A again: the right rows each time', async () => {
  const toA = await neonJson(['checkout', 'A'], cwd());
  assert.is(toA.continued, false);
  assert.is(await rows(), 1000, 'at A: the rows of A');
  assert.equal(kept(), ['main'], 'the state of main that was left is kept');
  await query(await mainUrl(), "insert into items values (5001, 'on A')");
  await noLeftovers();

  const toTip = await neonJson(['checkout', toA.left], cwd());
  assert.is(toTip.continued, true);
  assert.is(toTip.branch, 'main');
  assert.is(await rows(), 2000, 'back at the tip of main: all its rows');
  assert.not.ok(lastStartRecovered(), 'the kept data directory started as it was left: no restore, no replay');
  assert.equal(kept(), [toA.branch], 'main’s kept state is in use again; the branch made at A is kept now');
  await query(await mainUrl(), "insert into items values (5002, 'main goes on')");
  await noLeftovers();

  const toBranch = await neonJson(['checkout', toTip.left], cwd());
  assert.is(toBranch.branch, toA.branch);
  assert.is(await rows(), 1001, 'back on the branch made at A, with the row written there');
  assert.not.ok(lastStartRecovered(), 'that branch’s kept state was reused too');
  await noLeftovers();

  const again = await neonJson(['checkout', 'A'], cwd());
  assert.is(again.continued, false);
  assert.is(await rows(), 1000, 'at A again: a new branch with the rows of A');
  assert.ok(lastStartRecovered(), 'a new branch at A is restored and replayed');
  assert.equal(kept(), [toA.branch, 'main'].sort(), 'the two most recently left states are kept');
  await noLeftovers();

  const home2 = await neonJson(['checkout', toBranch.left], cwd());
  assert.is(home2.branch, 'main');
  assert.is(await rows(), 2001, 'main with the row written after coming back to it');
  await query(await mainUrl(), "insert into items values (5003, 'still a primary')");
  assert.is(await rows(), 2002);
  await noLeftovers();
});

test('a kept state is not used once another primary wrote on its branch: the checkout restores the branch’s real tip', async () => {
  const away = await neonJson(['checkout', 'A'], cwd());
  assert.ok(kept().includes('main'));
  const other = await neonJson(['pg', 'create', '-n', 'writer', '--branch', 'main'], cwd());
  await query(other.connection_string, "insert into items values (7001, 'written by another primary of main')");
  await neonJson(['pg', 'destroy', '-n', 'writer'], cwd());
  const back = await neonJson(['checkout', away.left], cwd());
  assert.is(back.branch, 'main');
  const [row] = await query(await mainUrl(), 'select count(*)::int as n from items where id = 7001');
  assert.is(Number(row.n), 1, 'the row the other primary wrote on main is there');
  assert.ok(lastStartRecovered(), 'restored from history, not from the stale kept state');
  await noLeftovers();
});

test.run();
