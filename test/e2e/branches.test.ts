import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { query } from '../../testkit/pg.js';
import { cleanup, neon, neonJson, processesOf, tmpDir } from '../../testkit/env.js';
import { waitFor } from '../../testkit/wait.js';

const ids = async (url: string) => (await query<{ id: number }>(url, 'select id from items order by id')).map((r) => r.id);

let dir = '';
let main = '';
const pgOf = async (name: string) => neonJson(['pg', 'show', '-n', name], { cwd: dir });

const branching = suite('branches: independent computes over one history');
branching.before(async () => {
  dir = tmpDir();
  main = (await neonJson(['start'], { cwd: dir })).connection_string;
  await query(main, 'create table items (id int primary key); insert into items select generate_series(1, 10)');
});
branching.after(() => cleanup(dir));

branching('two read-write computes on two branches diverge independently; the parent is unaffected', async () => {
  const a = await neonJson(['pg', 'create', '-n', 'feature-a'], { cwd: dir });
  const b = await neonJson(['pg', 'create', '-n', 'feature-b'], { cwd: dir });
  assert.is(a.branch, 'feature-a');
  assert.is(b.branch, 'feature-b');
  assert.is.not(a.port, b.port);
  assert.is.not(a.connection_string, b.connection_string, 'each compute has its own port and password');
  await query(a.connection_string, 'insert into items values (100)');
  await query(b.connection_string, 'delete from items where id <= 5');
  await query(main, 'insert into items values (200)');
  assert.equal(await ids(a.connection_string), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100]);
  assert.equal(await ids(b.connection_string), [6, 7, 8, 9, 10]);
  assert.equal(await ids(main), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 200]);
  const tree = await neon(['branch', 'list'], { cwd: dir });
  assert.match(tree.stdout, /^main\n├─ feature-a \(at [0-9A-F]+\/[0-9A-F]+\)\n└─ feature-b \(at [0-9A-F]+\/[0-9A-F]+\)$/);
  // Each branch's WAL is kept by the safekeepers, apart from the others.
  const [sk] = await neonJson(['safekeeper', 'list'], { cwd: dir });
  assert.equal(sk.streams.map((s: { branch: string }) => s.branch).sort(), ['feature-a', 'feature-b', 'main']);
  assert.ok(fs.existsSync(path.join(dir, '.neon', 'safekeepers', 'sk1', 'wal', 'feature-a')));
});

branching('a branch at a past LSN and one at a time show exactly the data of that moment', async () => {
  const [{ lsn }] = await query(main, 'select pg_current_wal_insert_lsn()::text as lsn');
  await sleep(100);
  const moment = new Date();
  await sleep(100);
  await query(main, 'insert into items values (300)');
  await neonJson(['branch', 'create', 'at-lsn', '--at', lsn], { cwd: dir });
  await neonJson(['branch', 'create', 'at-time', '--at', moment.toISOString()], { cwd: dir });
  const byLsn = await neonJson(['pg', 'create', '-n', 'lsn-pg', '--branch', 'at-lsn'], { cwd: dir });
  const byTime = await neonJson(['pg', 'create', '-n', 'time-pg', '--branch', 'at-time'], { cwd: dir });
  const before = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 200];
  assert.equal(await ids(byLsn.connection_string), before);
  assert.equal(await ids(byTime.connection_string), before);
  const branches = await neonJson(['branch', 'list'], { cwd: dir });
  assert.match(
    branches.find((b: { name: string }) => b.name === 'at-time').fork_lsn,
    /^[0-9A-F]+\/[0-9A-F]+$/,
    'a fork at a time learns its LSN',
  );
  for (const name of ['lsn-pg', 'time-pg']) await neonJson(['pg', 'destroy', '-n', name], { cwd: dir });
  for (const name of ['at-lsn', 'at-time']) await neonJson(['branch', 'delete', name], { cwd: dir });
});

branching('a replica follows its primary within a second, refuses writes, and promotes into a branch of its own', async () => {
  const replica = await neonJson(['pg', 'create', '-n', 'follower', '--branch', 'main', '--replica'], { cwd: dir });
  assert.is(replica.replica, true);
  await query(main, 'insert into items values (400)');
  const started = Date.now();
  await waitFor('the replica to see the insert', async () => (await ids(replica.connection_string)).includes(400) || undefined, 5000);
  assert.ok(Date.now() - started < 1500, `followed in ${Date.now() - started} ms`);
  const refused = await query(replica.connection_string, 'insert into items values (401)').then(
    () => '',
    (error: Error) => error.message,
  );
  assert.match(refused, /read-only transaction/);
  const promoted = await neonJson(['pg', 'promote', '-n', 'follower'], { cwd: dir });
  assert.is(promoted.forked, true, 'the primary still runs: the replica gets a new branch');
  assert.is(promoted.branch, 'follower');
  await query(promoted.connection_string, 'insert into items values (401)');
  await query(main, 'insert into items values (402)');
  assert.ok((await ids(promoted.connection_string)).includes(401));
  assert.not.ok((await ids(main)).includes(401), 'the original primary keeps its own branch');
  assert.ok((await ids(main)).includes(402), 'and still works');
});

branching('bad input gets clear errors and changes nothing', async () => {
  const fails = async (args: string[], pattern: RegExp) => {
    const result = await neon(args, { cwd: dir });
    assert.is(result.code, 1, `${args.join(' ')} should fail`);
    assert.match(result.stderr, pattern);
    assert.not.match(result.stderr, /\n\s+at /);
  };
  await fails(['pg', 'create', '-n', 'feature-a'], /a compute named "feature-a" already exists/);
  await fails(['branch', 'create', 'feature-a'], /a branch named "feature-a" already exists/);
  await fails(['pg', 'create', '-n', 'x', '--branch', 'nope'], /no branch named "nope"/);
  await fails(['pg', 'create', '-n', 'x', '--branch', 'main'], /branch main already has a primary compute \(main\)/);
  await fails(['pg', 'create', '-n', 'x', '--at', 'FFFF/0'], /LSN FFFF\/0 is in the future of branch main/);
  await fails(['pg', 'create', '-n', 'x', '--at', '2001-01-01T00:00:00Z'], /no base image of branch main at or before time 2001-01-01/);
  await fails(['pg', 'create', '-n', '../evil'], /"name" must be a compute name: 1-63 letters.*\(got "\.\.\/evil"\)/);
  await fails(['pg', 'create', '-n', 'x'.repeat(64)], /"name" must be a compute name/);
  await fails(['branch', 'create', 'a/b'], /"name" must be a branch name.*\(got "a\/b"\)/);
  await fails(['pg', 'promote', '-n', 'main'], /compute main is a primary: only a replica can be promoted/);
  await fails(['pg', 'create', '-n', 'x', '-s', 'elsewhere'], /no storage named "elsewhere"/);
  await fails(['branch', 'delete', 'feature-a'], /branch feature-a is used by compute\(s\) feature-a/);
  await fails(['branch', 'delete', 'main'], /main is the root branch/);
  const before = await neonJson(['pg', 'show', '-n', 'feature-a'], { cwd: dir });
  const again = await neonJson(['pg', 'start', '-n', 'feature-a'], { cwd: dir });
  assert.is(again.pid, before.pid, 'starting a running compute changes nothing');
  assert.not.ok(
    (await neonJson(['branch', 'list'], { cwd: dir })).some((b: { name: string }) => b.name === 'x'),
    'failed creates leave no branch',
  );
});

branching('ten computes up at once answer queries; destroying them leaves nothing behind', async () => {
  const names = Array.from({ length: 10 }, (_, i) => `many-${i}`);
  for (const name of names) await neonJson(['pg', 'create', '-n', name], { cwd: dir });
  const answers = await Promise.all(
    names.map(async (name) => (await query((await pgOf(name)).connection_string, 'select count(*)::int as n from items'))[0].n),
  );
  assert.ok(
    answers.every((n) => n > 0),
    `answers: ${answers}`,
  );
  const pids = await Promise.all(names.map(async (name) => (await pgOf(name)).pid as number));
  for (const name of names) await neonJson(['pg', 'destroy', '-n', name], { cwd: dir });
  for (const name of names) assert.not.ok(fs.existsSync(path.join(dir, '.neon', 'computes', name)));
  await waitFor('the destroyed computes to be gone', () => pids.every((pid) => !fs.existsSync(`/proc/${pid}`)) || undefined, 10_000);
  const list = await neonJson(['pg', 'list'], { cwd: dir });
  assert.not.ok(list.some((pg: { name: string }) => pg.name.startsWith('many-')));
  for (const name of names) await neonJson(['branch', 'delete', name], { cwd: dir });
});

branching('neon stop stops every compute; neon start brings back the ones that were running', async () => {
  await neonJson(['pg', 'stop', '-n', 'feature-b'], { cwd: dir });
  assert.is((await neon(['stop'], { cwd: dir })).code, 0);
  assert.equal(processesOf(dir), []);
  await neonJson(['start'], { cwd: dir });
  const list = await neonJson(['pg', 'list'], { cwd: dir });
  const state = Object.fromEntries(list.map((pg: { name: string; state: string }) => [pg.name, pg.state]));
  assert.equal(state, { main: 'running', 'feature-a': 'running', 'feature-b': 'stopped', follower: 'running' });
  assert.equal(await ids((await pgOf('feature-a')).connection_string), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100]);
});

branching.run();
