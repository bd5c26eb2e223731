// A transaction that has written its commit record but still waits for the safekeepers' acknowledgement
// (synchronous replication) is listed as running in the running-xacts record of a checkpoint made meanwhile. A
// hot standby that starts its snapshots from that record counts every transaction from it on as not finished
// until it replays a later commit or abort, so a read-only compute at a point soon after an image started at such
// a checkpoint did not see that transaction's table ("relation does not exist"): seen in pageserver.test.ts
// under load, when the test's CREATE TABLE was waiting for its acknowledgement while the first image started.
// Here the wait is made certain by stopping the safekeeper (SIGSTOP) until the image's checkpoint is made.
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { parseLsn } from '../../core/wal.js';
import { query } from '../../testkit/pg.js';
import { cleanup, neonJson, tmpDir } from '../../testkit/env.js';
import { signal } from '../../lib/proc.js';
import { waitFor } from '../../testkit/wait.js';

/** Background images off: the images here are the ones the test takes. */
const QUIET = JSON.stringify({ pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 } });

const test = suite('a commit acknowledged while an image starts is seen at every point after the image');
let dir = '';
let main = '';
test.before(async () => {
  dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'neon.config.json'), QUIET);
  main = (await neonJson(['start'], { cwd: dir })).connection_string;
  await waitFor('the first base image', async () => (await neonJson(['image', 'list'], { cwd: dir })).length > 0, 120_000);
});
test.after(() => cleanup(dir));

const redo = async () => (await query(main, 'select redo_lsn::text as lsn from pg_control_checkpoint()'))[0].lsn as string;

/**
 * Create `table` (one row) in a transaction whose commit waits for the stopped safekeeper while `neon image create`
 * makes its checkpoint (pg_backup_start's, or the incremental's); then resume the safekeeper. Answers the image taken.
 */
async function commitAcrossImageStart(table: string): Promise<{ kind: string; end_lsn: string }> {
  const status = await neonJson<{ components: { kind: string; pid: number | null }[] }>(['status'], { cwd: dir });
  const sk = status.components.find((c) => c.kind === 'safekeeper' && c.pid)!;
  const redoBefore = await redo();
  signal(sk.pid!, 'SIGSTOP');
  let creating: Promise<unknown> | undefined;
  let imaging: Promise<{ kind: string; end_lsn: string }> | undefined;
  try {
    creating = query(main, `create table ${table} (id int); insert into ${table} values (1)`);
    await waitFor('the commit waiting for the safekeeper', async () => {
      const [row] = await query(main, "select count(*)::int as n from pg_stat_activity where wait_event = 'SyncRep'");
      return row.n > 0;
    }, 30_000);
    imaging = neonJson(['image', 'create'], { cwd: dir });
    await waitFor("the image's checkpoint", async () => (await redo()) !== redoBefore, 60_000);
  } finally {
    signal(sk.pid!, 'SIGCONT');
  }
  await creating;
  return imaging!;
}

/** Row count of `table` on a read-only compute at `at` (a snapshot name or an LSN). */
async function countAt(at: string, table: string): Promise<number> {
  const made = await neonJson(['pg', 'create', '-n', 'reader', '--at', at, '--read-only'], { cwd: dir });
  try {
    return Number((await query(made.connection_string, `select count(*)::int as n from ${table}`))[0].n);
  } finally {
    await neonJson(['pg', 'destroy', '-n', 'reader'], { cwd: dir });
  }
}

/** Row count of `table` on a read-only compute at a snapshot made right after the image. */
async function countAtSnapshotAfter(table: string): Promise<number> {
  await neonJson(['snapshot', 'create', `after-${table}`], { cwd: dir });
  return countAt(`after-${table}`, table);
}

test('a full image', async () => {
  // More WAL than half the database since the last image: the next image is a full one.
  await query(main, "create table filler (id int, body text) with (autovacuum_enabled = off); insert into filler select g, repeat('x', 200) from generate_series(1, 100000) g");
  const image = await commitAcrossImageStart('during_full');
  assert.is(image.kind, 'online', 'a full image was taken');
  assert.is(await countAtSnapshotAfter('during_full'), 1);
});

test('an incremental image', async () => {
  const image = await commitAcrossImageStart('during_incremental');
  assert.is(image.kind, 'incremental', 'an incremental image was taken');
  assert.is(await countAtSnapshotAfter('during_incremental'), 1);
  // Right after the incremental's checkpoint record, before the commit that follows it: a point the image must
  // not serve (the previous one does).
  await query(main, 'create extension if not exists pg_walinspect');
  const [checkpoint] = await query(
    main,
    'select end_lsn::text as lsn from pg_get_wal_record_info((select checkpoint_lsn from pg_control_checkpoint()))',
  );
  assert.ok(parseLsn(checkpoint.lsn) < parseLsn(image.end_lsn), 'the image serves points from past its checkpoint');
  assert.is(await countAt(checkpoint.lsn, 'during_incremental'), 1);
});

test.run();
