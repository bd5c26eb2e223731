import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { parseLsn, parseSegmentName, segmentName, segmentOf, segmentStart } from '../../core/wal.js';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { settlesWithin, waitFor } from '../../testkit/wait.js';

const SEGMENT = 16 * 1024 * 1024;

/** A running repository with `count` safekeepers and a client on its main compute. */
interface Repo {
  dir: string;
  url: string;
  client: pg.Client;
}

async function startRepo(count: number): Promise<Repo> {
  const dir = tmpDir();
  if (count !== 1) fs.writeFileSync(path.join(dir, 'neon.config.json'), JSON.stringify({ safekeepers: count }));
  const started = await neonJson(['start'], { cwd: dir });
  await waitFor(`${count} safekeeper(s) connected`, async () => {
    const list = await neonJson(['safekeeper', 'list'], { cwd: dir });
    return list.length === count && list.every((sk: { connected: boolean }) => sk.connected);
  });
  const client = new pg.Client({ connectionString: started.connection_string });
  await client.connect();
  return { dir, url: started.connection_string, client };
}

async function stopRepo(repo: Repo | undefined): Promise<void> {
  if (!repo) return;
  await repo.client.end().catch(() => undefined);
  await cleanup(repo.dir);
}

const safekeepers = (repo: Repo) => neonJson(['safekeeper', 'list'], { cwd: repo.dir });
const pgWal = (repo: Repo) => path.join(repo.dir, '.neon', 'computes', 'main', 'pgdata', 'pg_wal');
const skWal = (repo: Repo, name: string) => path.join(repo.dir, '.neon', 'safekeepers', name, 'wal', 'main');

/** Bytes [from, to) of the WAL as stored in folder `dir` (finished segments or `.partial` ones). */
function walBytes(dir: string, timeline: number, from: bigint, to: bigint): Buffer {
  const parts: Buffer[] = [];
  for (let segno = segmentOf(from, SEGMENT); segmentStart(segno, SEGMENT) < to; segno++) {
    const name = segmentName(timeline, segno, SEGMENT);
    const file = [name, `${name}.partial`].map((f) => path.join(dir, f)).find((f) => fs.existsSync(f));
    assert.ok(file, `segment ${name} is missing in ${dir}`);
    const start = segmentStart(segno, SEGMENT);
    const lo = Number((from > start ? from : start) - start);
    const hi = Number((to < start + BigInt(SEGMENT) ? to : start + BigInt(SEGMENT)) - start);
    parts.push(fs.readFileSync(file!).subarray(lo, hi));
  }
  return Buffer.concat(parts);
}

async function insertLsn(client: pg.Client): Promise<bigint> {
  return parseLsn((await client.query('select pg_current_wal_insert_lsn() as lsn')).rows[0].lsn);
}

const durability = suite('one safekeeper: a commit returns only once the WAL is on its disk');
let one: Repo | undefined;
durability.before(async () => {
  one = await startRepo(1);
});
durability.after(() => stopRepo(one));

durability('the WAL of a returned COMMIT is in the safekeeper, byte for byte as in the primary', async () => {
  const { client } = one!;
  await client.query('create table t (id int primary key, body text)');
  const first = await insertLsn(client);
  await client.query('begin');
  await client.query("insert into t select g, repeat('x', 200) from generate_series(1, 5000) g");
  const beforeCommit = await insertLsn(client);
  await client.query('commit');
  // Read the safekeeper's file right away: nothing may still be on its way.
  const ours = walBytes(skWal(one!, 'sk1'), 1, first, beforeCommit);
  const theirs = walBytes(pgWal(one!), 1, first, beforeCommit);
  assert.ok(ours.length > 1_000_000, 'the transaction wrote over a megabyte of WAL');
  assert.ok(ours.equals(theirs), 'the safekeeper holds exactly the primary WAL up to the commit');
});

durability('with the safekeeper frozen (SIGSTOP) a commit waits, and returns once it runs again', async () => {
  const [sk] = await safekeepers(one!);
  process.kill(sk.pid, 'SIGSTOP');
  try {
    const commit = one!.client.query('insert into t values (100001, $1)', ['while frozen']);
    assert.not.ok(await settlesWithin(commit, 1500), 'the commit must wait for the safekeeper');
    process.kill(sk.pid, 'SIGCONT');
    assert.ok(await settlesWithin(commit, 5000), 'the commit returns once the safekeeper answers');
  } finally {
    process.kill(sk.pid, 'SIGCONT');
  }
});

durability('with the safekeeper killed (SIGKILL) a commit waits until the daemon has restarted it', async () => {
  const [sk] = await safekeepers(one!);
  process.kill(sk.pid, 'SIGKILL');
  const commit = one!.client.query('insert into t values (100002, $1)', ['while killed']);
  assert.not.ok(await settlesWithin(commit, 500), 'no safekeeper, no commit');
  assert.ok(await settlesWithin(commit, 15_000), 'the restarted safekeeper acknowledges it');
  const [after] = await safekeepers(one!);
  assert.is.not(after.pid, sk.pid);
  assert.is(after.restarts, 1);
  assert.equal((await one!.client.query('select body from t where id = 100002')).rows, [{ body: 'while killed' }]);
});

durability('killed in the middle of a segment under load, it resumes and its WAL is intact and continuous', async () => {
  const { client } = one!;
  const start = await insertLsn(client);
  let stop = false;
  const load = (async () => {
    for (let i = 0; !stop; i++)
      await client.query("insert into t select 200000 + g + $1 * 1000, repeat('y', 300) from generate_series(1, 1000) g", [i]);
  })();
  await new Promise((r) => setTimeout(r, 1500)); // well into a segment: the load writes several MB a second
  const [sk] = await safekeepers(one!);
  process.kill(sk.pid, 'SIGKILL');
  await new Promise((r) => setTimeout(r, 3000));
  // On a busy machine the load may be slower than planned: keep it going until it has crossed a segment boundary.
  await waitFor(
    'the load to cross a segment boundary',
    async () => (await insertLsn(client)) - start > BigInt(SEGMENT) || undefined,
    120_000,
  );
  stop = true;
  await load;
  const end = await insertLsn(client);
  await client.query('select 1'); // nothing pending
  await waitFor('the safekeeper to catch up', async () => {
    const [now] = await safekeepers(one!);
    return now.flush_lsn && parseLsn(now.flush_lsn) >= end ? now : undefined;
  });
  // Every segment from the first to the last is there, and the bytes equal the primary's.
  const names = fs
    .readdirSync(skWal(one!, 'sk1'))
    .map((f) => parseSegmentName(f.replace('.partial', ''), SEGMENT))
    .filter(Boolean);
  const numbers = names.map((n) => Number(n!.segno)).sort((a, b) => a - b);
  assert.equal(
    numbers,
    Array.from({ length: numbers.length }, (_, i) => numbers[0] + i),
    'no gap between segments',
  );
  assert.ok(
    walBytes(skWal(one!, 'sk1'), 1, start, end).equals(walBytes(pgWal(one!), 1, start, end)),
    'the resumed WAL equals the primary WAL',
  );
  assert.ok(end - start > BigInt(SEGMENT), 'the load crossed at least one segment boundary');
});

const quorum = suite('three safekeepers: a commit needs any two');
let three: Repo | undefined;
quorum.before(async () => {
  three = await startRepo(3);
});
quorum.after(() => stopRepo(three));

quorum('losing one keeps writes going, losing two blocks them, one back resumes them, nothing acknowledged is lost', async () => {
  const repo = three!;
  const status = await neonJson(['status'], { cwd: repo.dir });
  assert.equal(
    status.safekeepers.map((sk: { name: string }) => sk.name),
    ['sk1', 'sk2', 'sk3'],
  );
  assert.is((await repo.client.query('show synchronous_standby_names')).rows[0].synchronous_standby_names, 'ANY 2 (sk1, sk2, sk3)');
  await repo.client.query('create table acks (id int primary key)');
  const writer = new pg.Client({ connectionString: repo.url });
  await writer.connect();
  const acknowledged: number[] = [];
  let stop = false;
  const load = (async () => {
    for (let id = 1; !stop; id++) {
      await writer.query('insert into acks values ($1)', [id]);
      acknowledged.push(id);
    }
  })();
  const progress = async (ms: number) => {
    const before = acknowledged.length;
    await new Promise((r) => setTimeout(r, ms));
    return acknowledged.length - before;
  };
  const [sk1, sk2] = await safekeepers(repo);
  // Kill for real, then tell the daemon not to bring it back, so that the loss lasts.
  process.kill(sk1.pid, 'SIGKILL');
  await neonJson(['safekeeper', 'stop', '-n', 'sk1'], { cwd: repo.dir });
  assert.ok((await progress(1500)) > 10, 'with two of three, commits continue');
  process.kill(sk2.pid, 'SIGKILL');
  await neonJson(['safekeeper', 'stop', '-n', 'sk2'], { cwd: repo.dir });
  await progress(300); // the commit in flight when sk2 died may still have made it
  assert.is(await progress(2000), 0, 'with one of three, commits wait');
  await neonJson(['safekeeper', 'start', '-n', 'sk1'], { cwd: repo.dir });
  assert.ok((await progress(3000)) > 10, 'with sk1 back, commits resume');
  stop = true;
  await load;
  await writer.end();
  const { rows } = await repo.client.query('select count(*)::int as n, max(id) as top from acks');
  assert.is(rows[0].n, acknowledged.length, 'every acknowledged insert is there');
  assert.is(rows[0].top, acknowledged[acknowledged.length - 1]);
  await neonJson(['safekeeper', 'start', '-n', 'sk2'], { cwd: repo.dir });
});

const faults = suite('faults: the safekeeper logs, reports, retries; the daemon carries on');
let repo: Repo | undefined;
faults.before(async () => {
  repo = await startRepo(1);
});
faults.after(() => stopRepo(repo));

faults('primary not reachable: reported while it is down, streaming again once it is back', async () => {
  await repo!.client.end();
  await neonJson(['pg', 'stop', '-n', 'main'], { cwd: repo!.dir });
  const down = await waitFor('the safekeeper to notice', async () => {
    const [sk] = await safekeepers(repo!);
    return !sk.connected && sk.error ? sk : undefined;
  });
  assert.match(down.error, /not reachable|closed/);
  await neonJson(['pg', 'start', '-n', 'main'], { cwd: repo!.dir });
  await waitFor('the safekeeper to reconnect', async () => (await safekeepers(repo!))[0].connected || undefined);
  repo!.client = new pg.Client({ connectionString: repo!.url });
  await repo!.client.connect();
  await repo!.client.query('create table after_restart (x int); insert into after_restart values (1)');
});

faults('a password the user changes does not lock the safekeeper out: it logs in as neon_internal', async () => {
  const password = decodeURIComponent(new URL(repo!.url).password);
  await repo!.client.query("alter user postgres password 'not-the-one-neon-knows'");
  try {
    await neonJson(['safekeeper', 'stop', '-n', 'sk1'], { cwd: repo!.dir });
    await neonJson(['safekeeper', 'start', '-n', 'sk1'], { cwd: repo!.dir });
    await waitFor('the safekeeper to get in', async () => (await safekeepers(repo!))[0].connected || undefined, 20_000);
    assert.ok(await settlesWithin(repo!.client.query('insert into after_restart values (3)'), 30_000), 'commits flow');
  } finally {
    await repo!.client.query(`alter user postgres password '${password.replace(/'/g, "''")}'`);
  }
});

faults('slot dropped behind its back: created again on the next connection, and commits flow', async () => {
  await neonJson(['safekeeper', 'stop', '-n', 'sk1'], { cwd: repo!.dir });
  await repo!.client.query("select pg_drop_replication_slot('neon_sk1')");
  await neonJson(['safekeeper', 'start', '-n', 'sk1'], { cwd: repo!.dir });
  await waitFor('the safekeeper to connect', async () => (await safekeepers(repo!))[0].connected || undefined);
  const { rows } = await repo!.client.query("select slot_type, active from pg_replication_slots where slot_name = 'neon_sk1'");
  assert.equal(rows, [{ slot_type: 'physical', active: true }]);
  assert.ok(await settlesWithin(repo!.client.query('insert into after_restart values (2)'), 5000));
  assert.match(fs.readFileSync(path.join(repo!.dir, '.neon', 'logs', 'daemon.log'), 'utf8'), /created replication slot neon_sk1/);
});

faults('a timeline switch (the primary is promoted) is followed: history fetched, WAL on the new timeline', async () => {
  await repo!.client.end();
  const dataDir = path.join(repo!.dir, '.neon', 'computes', 'main', 'pgdata');
  await neonJson(['pg', 'stop', '-n', 'main'], { cwd: repo!.dir });
  fs.writeFileSync(path.join(dataDir, 'standby.signal'), '');
  await neonJson(['pg', 'start', '-n', 'main'], { cwd: repo!.dir });
  repo!.client = new pg.Client({ connectionString: repo!.url });
  await repo!.client.connect();
  assert.is((await repo!.client.query('select pg_is_in_recovery() as r')).rows[0].r, true);
  await repo!.client.query('select pg_promote()');
  const commit = repo!.client.query('insert into after_restart values (3)');
  assert.ok(await settlesWithin(commit, 15_000), 'synchronous commit works on the new timeline');
  const sk = await waitFor('the safekeeper on timeline 2', async () => {
    const [now] = await safekeepers(repo!);
    return now.timeline === 2 && now.connected ? now : undefined;
  });
  assert.ok(fs.existsSync(path.join(skWal(repo!, 'sk1'), '00000002.history')), 'the history file is kept');
  const lsn = await insertLsn(repo!.client);
  await waitFor('the safekeeper flush on timeline 2', async () => parseLsn((await safekeepers(repo!))[0].flush_lsn) >= lsn || undefined);
  const name = segmentName(2, segmentOf(lsn, SEGMENT), SEGMENT);
  assert.ok(fs.existsSync(path.join(skWal(repo!, 'sk1'), `${name}.partial`)), `segment ${name} of timeline 2 is being written`);
  assert.is(sk.error, null);
});

durability.run();
quorum.run();
faults.run();
