import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { isRoot, pgUserFor } from '../../postgres/user.js';
import { query } from '../../testkit/pg.js';
import { cleanup, neon, processesOf, tmpDir, type RunOptions } from '../../testkit/env.js';

/** Who runs the CLI: this process's user, and when that is root (Postgres then runs as `postgres`) also a normal user. */
function runners(): { label: string; uid?: number; gid?: number }[] {
  const list: { label: string; uid?: number; gid?: number }[] = [{ label: isRoot() ? 'as root' : 'as a normal user' }];
  const user = isRoot() ? pgUserFor('postgres') : undefined;
  if (user) list.push({ label: `as the normal user ${user.name}`, uid: user.uid, gid: user.gid });
  return list;
}

/** The connection string `neon start` prints for the user to copy. */
function printedConnectionString(stdout: string): string {
  const match = /psql "(postgresql:\/\/[^"]+)"/.exec(stdout);
  assert.ok(match, `neon start printed no connection string:\n${stdout}`);
  return match![1];
}

for (const runner of runners()) {
  const e2e = suite(`end to end, ${runner.label}`);
  let dir = '';
  let run: RunOptions;

  e2e.before(() => {
    dir = tmpDir();
    if (runner.uid !== undefined) fs.chownSync(dir, runner.uid, runner.gid!);
    run = { cwd: dir, uid: runner.uid, gid: runner.gid, env: { HOME: dir } };
  });
  e2e.after(() => cleanup(dir));

  e2e('init → start → query → stop → start → the data is still there → stop, and nothing is left running', async () => {
    const init = await neon(['init'], run);
    assert.is(init.code, 0, init.stderr);
    assert.match(init.stdout, /Initialised a neon repository/);
    const token = fs.statSync(path.join(dir, '.neon', 'token'));
    assert.is(token.mode & 0o777, 0o600, 'the API token is readable by its owner only');

    const first = await neon(['start'], run);
    assert.is(first.code, 0, first.stderr);
    const url = printedConnectionString(first.stdout);
    assert.match(url, /^postgresql:\/\/postgres:[^@]+@127\.0\.0\.1:\d+\/postgres$/);
    await query(url, 'create table notes (id int primary key, body text)');
    await query(url, "insert into notes select g, 'note ' || g from generate_series(1, 1000) g");
    assert.is((await query<{ data_checksums: string }>(url, 'show data_checksums'))[0].data_checksums, 'on');
    const wrong = url.replace(/(postgres:)[^@]+@/, '$1wrong-password@');
    const refused = await query(wrong, 'select 1').then(
      () => false,
      (error: Error) => /password authentication failed/.test(error.message),
    );
    assert.ok(refused, 'a wrong password is refused');

    const status = await neon(['status'], run);
    assert.match(status.stdout, /compute\s+main\s+running\s+\d+\s+\d+/);

    const stop = await neon(['stop'], run);
    assert.is(stop.code, 0, stop.stderr);
    assert.equal(processesOf(dir), [], 'no daemon or Postgres process survives neon stop');

    const second = await neon(['start'], run);
    assert.is(second.code, 0, second.stderr);
    const again = printedConnectionString(second.stdout);
    const rows = await query<{ n: string; s: string }>(
      again,
      "select count(*) as n, sum(id)::text as s from notes where body like 'note %'",
    );
    assert.equal(rows, [{ n: '1000', s: '500500' }]);

    assert.is((await neon(['stop'], run)).code, 0);
    assert.equal(processesOf(dir), [], 'no daemon or Postgres process survives the second stop');
  });

  e2e.run();
}
