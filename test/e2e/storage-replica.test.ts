import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { eventually, settlesWithin } from '../../testkit/wait.js';

/*
 * Two repositories on one machine standing in for two machines: A writes to its storage_dest (a folder), B
 * attaches that folder as a storage and runs computes over it. B never talks to A's Postgres: everything goes
 * through the storage, as it would between two laptops sharing a bucket.
 */

interface Ctx {
  root: string;
  a: string;
  b: string;
  dest: string;
  aUrl: string;
  env: Record<string, string>;
}

const ctx = {} as Ctx;
const test = suite<Ctx>('computes over another repository\'s storage: replica, read-only, login', ctx);
const json = (cwd: string, args: string[]) => neonJson(args, { cwd, env: ctx.env });

const count = async (url: string) => (await query<{ n: number }>(url, 'select count(*)::int as n from t'))[0].n;

test.before(async (c) => {
  c.root = tmpDir('neon-storage-replica-');
  c.a = path.join(c.root, 'a');
  c.b = path.join(c.root, 'b');
  c.dest = path.join(c.root, 'a-dest');
  fs.mkdirSync(c.a, { mode: 0o755 });
  fs.mkdirSync(c.b, { mode: 0o755 });
  c.env = { NEON_PORT: '0' };
  const started = await json(c.a, ['start', '--storage_dest', c.dest]);
  c.aUrl = started.connection_string;
  await query(c.aUrl, 'create table t as select g as id from generate_series(1, 1000) g');
  await json(c.a, ['snapshot', 'create', 'first']);
  // A's background sync pushes the snapshot's history and a base image: B can start from it once both are there.
  await eventually(
    "A's storage holds the snapshot and an image",
    async () => {
      const history = fs.readFileSync(path.join(c.dest, 'history.json'), 'utf8');
      const images = fs.readdirSync(path.join(c.dest, 'images', 'main'));
      return history.includes('"first"') && images.length > 0;
    },
    (ok) => ok,
  );
  await json(c.b, ['start']);
  await json(c.b, ['storage', 'attach', '-n', 'a', '--type', 'native', '--path', c.dest]);
});

test.after(async (c) => {
  await cleanup(c.root);
});

test('pg create -s then pg start --replica: a standby that follows A through its storage and refuses writes', async (c) => {
  const created = await json(c.b, ['pg', 'create', '-n', 'r', '-s', 'a']);
  assert.is(created.replica, false, 'pg create alone makes a primary, as before');
  const standby = await json(c.b, ['pg', 'start', '-n', 'r', '--replica']);
  assert.is(standby.replica, true);
  assert.is(standby.state, 'running');
  assert.is(await count(standby.connection_string), 1000, "B's replica sees A's rows, logging in with the printed string");

  await query(c.aUrl, 'insert into t select g from generate_series(1001, 1500) g');
  await eventually("B's replica sees A's new rows", () => count(standby.connection_string), (n) => n === 1500);

  const refused = await query(standby.connection_string, 'insert into t values (0)').then(
    () => undefined,
    (error: Error) => error.message,
  );
  assert.match(refused ?? 'accepted', /read-only transaction/);
  const shown = await json(c.b, ['pg', 'show', '-n', 'r']);
  assert.is(shown.replica, true);
});

test('pg create -s --replica makes the standby at once; it keeps following after pg stop / pg start', async (c) => {
  const standby = await json(c.b, ['pg', 'create', '-n', 'r2', '-s', 'a', '--replica']);
  assert.is(standby.replica, true);
  await query(c.aUrl, 'insert into t select g from generate_series(1501, 1600) g');
  await eventually('the new standby catches up', () => count(standby.connection_string), (n) => n === 1600);
  await json(c.b, ['pg', 'stop', '-n', 'r2']);
  await query(c.aUrl, 'insert into t select g from generate_series(1601, 1700) g');
  const again = await json(c.b, ['pg', 'start', '-n', 'r2', '--replica']);
  await eventually('after a restart it follows again', () => count(again.connection_string), (n) => n === 1700);
});

test("a read-only compute over A's snapshot answers to B's password", async (c) => {
  const frozen = await json(c.b, ['pg', 'create', '-n', 'frozen', '-s', 'a', '--read-only', '--at', 'first']);
  assert.is(frozen.read_only, true);
  assert.is(await count(frozen.connection_string), 1000);
  const main = await json(c.b, ['pg', 'show', '-n', 'main']);
  const password = (s: string) => decodeURIComponent(new URL(s).password);
  assert.is(password(frozen.connection_string), password(main.connection_string), "B's password");
  const wrong = new URL(frozen.connection_string);
  wrong.password = 'not-the-password';
  const denied = await query(wrong.toString(), 'select 1').then(
    () => 'logged in',
    (error: Error) => error.message,
  );
  assert.match(denied, /authentication failed/);
});

test("a primary over A's storage commits (its WAL goes to B's safekeepers, on a branch of its own) and keeps it across a restart", async (c) => {
  const primary = await json(c.b, ['pg', 'create', '-n', 'w', '-s', 'a', '--at', 'first']);
  assert.is(primary.replica, false);
  // A commit used to wait forever: B's safekeepers refused a primary of another database system.
  const insert = query(primary.connection_string, 'insert into t select g from generate_series(5001, 5100) g');
  assert.ok(await settlesWithin(insert, 120_000), 'the commit is acknowledged (not still waiting after 120 s)');
  await json(c.b, ['pg', 'stop', '-n', 'w']);
  const again = await json(c.b, ['pg', 'start', '-n', 'w']);
  assert.is(await count(again.connection_string), 1100, "A's 1000 rows and B's 100");
  const verified = await json(c.b, ['verify']);
  assert.ok(verified.ok, JSON.stringify(verified.problems));
  await json(c.b, ['pg', 'destroy', '-n', 'w']);
  await json(c.b, ['branch', 'delete', 'w']);
});

test('neon verify checks the pulled WAL: a damaged byte there is found, naming the pulled branch', async (c) => {
  // The branch r was a primary on before it became a standby.
  await json(c.b, ['branch', 'delete', 'r']);
  const clean = await json(c.b, ['verify']);
  assert.ok(clean.ok, JSON.stringify(clean.problems));
  // A finishes its segment: the standby's follower keeps the finished copy with the pulled branch.
  await query(c.aUrl, 'select pg_switch_wal()');
  const dir = path.join(c.b, '.neon', 'pulled', 'wal', 'pulled.first');
  const finished = await eventually(
    'the follower keeps the finished segment',
    async () => fs.readdirSync(dir).filter((f) => /^[0-9A-F]{24}$/.test(f)),
    (files) => files.length > 0,
  );
  const file = path.join(dir, finished[0]);
  const bytes = fs.readFileSync(file);
  bytes[40_000] ^= 0xff;
  fs.writeFileSync(file, bytes);
  const damaged = await neon(['verify', '--json'], { cwd: c.b, env: c.env });
  assert.is.not(damaged.code, 0);
  assert.match(damaged.stdout + damaged.stderr, new RegExp(`pulled\\.first/${finished[0]}`));
});

test('branch delete of a pulled branch: refused while used, then it goes, and gc frees what only it used', async (c) => {
  const used = await neon(['branch', 'delete', 'pulled.first'], { cwd: c.b, env: c.env });
  assert.is.not(used.code, 0);
  assert.match(used.stderr, /is used by compute\(s\) .*r2|child branch/);
  for (const name of ['r', 'r2', 'frozen']) await json(c.b, ['pg', 'destroy', '-n', name]);
  await json(c.b, ['branch', 'create', 'kid', '--parent', 'pulled.first', '--at', 'first']);
  const child = await neon(['branch', 'delete', 'pulled.first'], { cwd: c.b, env: c.env });
  assert.match(child.stderr, /has child branch\(es\) kid: delete them first/);
  await json(c.b, ['branch', 'delete', 'kid']);
  await json(c.b, ['branch', 'delete', 'pulled.first']);
  const branches = (await json(c.b, ['branch', 'list'])).map((b: { name: string }) => b.name);
  assert.equal(branches, ['main']);
  const snapshots = (await json(c.b, ['snapshot', 'list'])).map((s: { name: string }) => s.name);
  assert.not.ok(snapshots.includes('first'), 'the pulled snapshot went with its branch');
  assert.not.ok(fs.existsSync(path.join(c.b, '.neon', 'pulled', 'wal', 'pulled.first')), 'its pulled WAL is gone');
  const gc = await json(c.b, ['gc']);
  assert.ok(gc.freed_bytes > 0, `gc freed the chunks only A's image used: ${JSON.stringify(gc)}`);
  const verified = await json(c.b, ['verify']);
  assert.ok(verified.ok, JSON.stringify(verified.problems));
  assert.ok(fs.existsSync(path.join(c.dest, 'history.json')), "A's storage is untouched");
  // It can be pulled again: the storage still holds it.
  const again = await json(c.b, ['pg', 'create', '-n', 'again', '-s', 'a', '--read-only', '--at', 'first']);
  assert.is(await count(again.connection_string), 1000);
});

test.run();
