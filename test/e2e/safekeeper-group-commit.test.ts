import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { parseLsn } from '../../core/wal.js';
import { firstRecordAt, readRecords } from '../../wal/records.js';
import { walFileSource } from '../../wal/verify.js';
import { cleanup, neonJson, tmpDir } from '../../testkit/env.js';
import { settlesWithin, waitFor } from '../../testkit/wait.js';

// The safekeeper writes the WAL of many commits with one write and one fdatasync, and answers once for all of
// them (group commit). That must never answer for a commit whose WAL is not yet in its files: under concurrent
// load, SIGKILL it and read the files it left, with the WAL decoder, before anything else can write there.

const RM_XACT_ID = 1;
const XLOG_XACT_OPMASK = 0x70;
const XLOG_XACT_COMMIT = 0x00;
const WRITERS = 8;

/** Transaction ids of the commit records in the WAL of folder `dir` from `start` on (up to where it ends). */
function committedXids(dir: string, start: bigint): { xids: Set<number>; tail: string } {
  const source = walFileSource(dir);
  const xids = new Set<number>();
  let tail = 'end of WAL';
  try {
    for (const record of readRecords(source, firstRecordAt(source, start - (start % 8192n)))) {
      if (record.rmid === RM_XACT_ID && (record.info & XLOG_XACT_OPMASK) === XLOG_XACT_COMMIT) xids.add(record.xid);
    }
  } catch (error) {
    // A record cut by the kill at the very end reads as damage: what matters is what comes before it.
    tail = (error as Error).message;
  }
  return { xids, tail };
}

const group = suite('group commit: every commit acknowledged under concurrent load is in the safekeeper files when it is killed');
let dir: string | undefined;
group.after(() => (dir ? cleanup(dir) : undefined));

group('SIGKILL mid-load: the WAL files hold the commit record of every acknowledged insert', async () => {
  const repo = (dir = tmpDir());
  const started = await neonJson(['start'], { cwd: repo });
  const safekeepers = () => neonJson(['safekeeper', 'list'], { cwd: repo });
  await waitFor('the safekeeper to connect', async () => (await safekeepers())[0]?.connected || undefined);
  const writers = await Promise.all(
    Array.from({ length: WRITERS }, async () => {
      const client = new pg.Client({ connectionString: started.connection_string });
      await client.connect();
      return client;
    }),
  );
  try {
    await writers[0].query('create table acks (id int primary key, writer int)');
    const start = parseLsn((await writers[0].query('select pg_current_wal_insert_lsn() as lsn')).rows[0].lsn);

    // Acknowledgements seen before the kill: JavaScript runs one thing at a time, so none is counted that came later.
    let killed = false;
    let stop = false;
    const acknowledged: { id: number; xid: number }[] = [];
    const load = writers.map(async (client, w) => {
      for (let i = 0; !stop; i++) {
        const id = w * 1_000_000 + i;
        const { rows } = await client.query('insert into acks values ($1, $2) returning xmin::text as xid', [id, w]);
        if (!killed) acknowledged.push({ id, xid: Number(rows[0].xid) });
      }
    });
    await waitFor('500 commits under load', async () => acknowledged.length >= 500 || undefined, 120_000);

    const [sk] = await safekeepers();
    const skWal = path.join(repo, '.neon', 'safekeepers', sk.name, 'wal', 'main');
    const copy = path.join(repo, 'killed-sk-wal');
    killed = true;
    process.kill(sk.pid, 'SIGKILL');
    // At once, before the daemon's restarted safekeeper writes there again.
    fs.cpSync(skWal, copy, { recursive: true });

    stop = true;
    // The commits in flight wait for the restarted safekeeper.
    assert.ok(await settlesWithin(Promise.all(load), 60_000), 'the load ends once the safekeeper is back');

    const { xids, tail } = committedXids(copy, start);
    const missing = acknowledged.filter((a) => !xids.has(a.xid));
    assert.ok(acknowledged.length >= 500, `${acknowledged.length} commits were acknowledged before the kill`);
    assert.equal(missing.slice(0, 10), [], `acknowledged commits missing from the killed safekeeper's WAL (decoding stopped at: ${tail})`);
    assert.is(new Set(acknowledged.map((a) => Math.floor(a.id / 1_000_000))).size, WRITERS, 'all writers committed concurrently');

    const { rows } = await writers[0].query('select count(*)::int as n from acks where id = any($1)', [acknowledged.map((a) => a.id)]);
    assert.is(rows[0].n, acknowledged.length, 'every acknowledged row is in the table');
    const [after] = await safekeepers();
    assert.is.not(after.pid, sk.pid, 'the daemon restarted the safekeeper');
  } finally {
    await Promise.all(writers.map((client) => client.end().catch(() => undefined)));
  }
});

group.run();
