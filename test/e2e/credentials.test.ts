import pg from 'pg';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { settlesWithin, waitFor } from '../../testkit/wait.js';

// Internal connections (daemon, safekeepers, replicas) do not depend on the users' passwords, and the users'
// credentials stay what they were across branch, promote and a safekeeper restart.

let dir = '';
const run = (args: string[]) => neonJson(args, { cwd: dir });
const pgOf = (name: string) => run(['pg', 'show', '-n', name]);

/** A commit on a fresh connection, given up (reported as hung) after `ms`. */
async function commitWithin(url: string, statement: string, ms = 60_000): Promise<boolean> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => undefined);
  await client.connect();
  try {
    const done = client.query(statement);
    done.catch(() => undefined);
    return await settlesWithin(done, ms);
  } finally {
    void client.end().catch(() => undefined);
  }
}

async function killSafekeeper(name: string): Promise<void> {
  const before = (await run(['safekeeper', 'list'])).find((sk: { name: string }) => sk.name === name);
  process.kill(before.pid, 'SIGKILL');
  await waitFor(
    `safekeeper ${name} back and streaming`,
    async () => {
      const sk = (await run(['safekeeper', 'list'])).find((s: { name: string }) => s.name === name);
      return sk.pid && sk.pid !== before.pid && sk.state === 'running';
    },
    60_000,
  );
}

const credentials = suite('internal connections do not depend on user passwords');
credentials.before(async () => {
  dir = tmpDir();
  await run(['start']);
});
credentials.after(() => cleanup(dir));

credentials('a pg-created primary keeps committing after its safekeeper restarts', async () => {
  const feat = await run(['pg', 'create', '-n', 'feat']);
  await query(feat.connection_string, 'create table t (id int primary key)');
  await query(feat.connection_string, 'insert into t values (1)');
  await killSafekeeper('sk1');
  assert.ok(await commitWithin(feat.connection_string, 'insert into t values (2)'), 'the commit returned (it hung in SyncRep before)');
  assert.equal((await query(feat.connection_string, 'select count(*)::int as n from t'))[0].n, 2);
});

credentials('a password the user changes does not cut the safekeepers off', async () => {
  const main = await pgOf('main');
  const url = new URL(main.connection_string);
  await query(main.connection_string, `alter role ${url.username} password 'changed-by-the-user'`);
  url.password = 'changed-by-the-user';
  await query(url.toString(), 'create table u (id int)');
  await killSafekeeper('sk1');
  assert.ok(await commitWithin(url.toString(), 'insert into u values (1)'), 'the commit returned after the safekeeper restart');
  // Put it back: the connection strings neon prints use the password it knows.
  await query(url.toString(), `alter role ${url.username} password '${decodeURIComponent(new URL(main.connection_string).password)}'`);
});

credentials('a primary created on an existing branch starts, with the login of its branch', async () => {
  const first = await pgOf('feat');
  await run(['pg', 'destroy', '-n', 'feat']);
  const created = neon(['pg', 'create', '-n', 'feat2', '--branch', 'feat', '--json'], { cwd: dir });
  assert.ok(await settlesWithin(created, 180_000), 'pg create returned (it waited for 30 minutes before)');
  const result = await created;
  assert.is(result.code, 0, result.stderr);
  const feat2 = JSON.parse(result.stdout);
  assert.equal((await query(feat2.connection_string, 'select count(*)::int as n from t'))[0].n, 2);
  assert.is(new URL(feat2.connection_string).password, new URL(first.connection_string).password, 'same password as the branch had');
  // Operations that waited behind the stuck start before work now.
  assert.ok(await settlesWithin(run(['snapshot', 'create', 'after-feat2']), 120_000), 'a snapshot is taken');
});

credentials('promote keeps the connection string working', async () => {
  const main = await pgOf('main');
  await query(main.connection_string, 'create table p (id int)');
  await query(main.connection_string, 'insert into p values (1)');
  const replica = await run(['pg', 'create', '-n', 'r', '--replica']);
  await waitFor(
    'the replica to see the row',
    async () => (await query(replica.connection_string, 'select count(*)::int as n from p'))[0]?.n === 1,
  );
  const promoted = await run(['pg', 'promote', '-n', 'r']);
  assert.is(promoted.connection_string, replica.connection_string, 'pg promote prints the same connection string');
  assert.is(new URL(promoted.connection_string).password, new URL(main.connection_string).password, 'the branch keeps its parent login');
  assert.ok(
    await commitWithin(replica.connection_string, 'insert into p values (2)'),
    'the old connection string writes on the promoted compute',
  );
  assert.equal((await query(replica.connection_string, 'select count(*)::int as n from p'))[0].n, 2);
});

credentials('a stalled synchronous stream is a problem in neon status, not healthy', async () => {
  const main = await pgOf('main');
  await run(['safekeeper', 'stop', '-n', 'sk1']);
  const client = new pg.Client({ connectionString: main.connection_string });
  client.on('error', () => undefined);
  await client.connect();
  const pending = client.query('insert into p values (3)');
  pending.catch(() => undefined);
  const status = await waitFor(
    'a problem about main in GET /status',
    async () => {
      const s = await run(['status']);
      return (
        s.problems.some((p: { component: string; message: string }) => p.component === 'compute main' && /safekeeper/.test(p.message)) && s
      );
    },
    60_000,
  );
  assert.ok(status.problems.length > 0);
  const human = await neon(['status'], { cwd: dir });
  assert.match(human.stdout, /PROBLEM compute main: .*waiting for the safekeepers/);
  assert.not.match(human.stdout, /healthy/);
  // `neon start` on the running repository repairs it and says so.
  const start = await neon(['start'], { cwd: dir });
  assert.is(start.code, 0, start.stderr);
  assert.match(start.stdout, /Repaired safekeeper sk1: started/);
  assert.ok(await settlesWithin(pending, 60_000), 'the waiting commit returned once the safekeeper was back');
  await client.end();
  await waitFor('no problems', async () => (await run(['status'])).problems.length === 0, 60_000);
  assert.match((await neon(['status'], { cwd: dir })).stdout, /healthy: no problems/);
});

credentials('a repository made before neon_internal gets the role on its next start', async () => {
  const main = await pgOf('main');
  // As an older repository: the cluster has no internal role (dropped here, by its owner).
  await query(main.connection_string, 'set synchronous_commit = local; drop role neon_internal');
  await neon(['stop'], { cwd: dir });
  const started = await neon(['start', '--json'], { cwd: dir });
  assert.is(started.code, 0, started.stderr);
  const roles = await query(main.connection_string, "select rolreplication from pg_roles where rolname = 'neon_internal'");
  assert.equal(roles.length, 1, 'the role is back');
  await waitFor('sk1 streaming', async () => (await run(['safekeeper', 'list']))[0].connected, 60_000);
  assert.ok(await commitWithin(main.connection_string, 'insert into p values (4)'), 'commits go through the safekeepers again');
});

credentials.run();
