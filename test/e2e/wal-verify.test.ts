// The WAL decoder against real Postgres: a throwaway cluster per available version (embedded 17, Debian's 15 with
// 1 MiB segments), some SQL, then its pg_wal decoded, verified, and verified again with damage.
import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import pg from 'pg';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { formatLsn, type Lsn, parseLsn } from '../../core/wal.js';
import { freePort } from '../../lib/net.js';
import { embeddedBinaries, reachableBinaries } from '../../postgres/binaries.js';
import { asUser, chownTo, pgUserFor } from '../../postgres/user.js';
import { tmpDir } from '../../testkit/env.js';
import { changedPages } from '../../wal/changed-pages.js';
import { firstRecordAt, readRecords, WAL_PAGE_SIZE, type WalRecord } from '../../wal/records.js';
import { verifyWal, walFileSource } from '../../wal/verify.js';

const pgUser = pgUserFor();
const RM_HEAP_ID = 10;

interface Cluster {
  version: number;
  dir: string;
  data: string;
  binDir: string;
  client: pg.Client;
}

/** What the SQL left behind, for the assertions. */
interface Facts {
  before: Lsn;
  after: Lsn;
  upTo: Lsn;
  filenode: number;
  db: number;
  ctidBlock: number;
  truncatedNode: number;
}

const clusters: Cluster[] = [];

async function startCluster(binDir: string, initdbArgs: string[]): Promise<Cluster> {
  const dir = tmpDir('neon-walverify-');
  const data = path.join(dir, 'data');
  const socket = path.join(dir, 'sock');
  fs.mkdirSync(socket, { mode: 0o755 });
  await chownTo(pgUser, dir, true);
  const run = (bin: string, args: string[]) =>
    execa(path.join(binDir, bin), args, { ...asUser(pgUser), env: { LC_ALL: 'C' }, stdin: 'ignore' });
  await run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C', ...initdbArgs]);
  const port = await freePort();
  await run('pg_ctl', ['-D', data, '-l', path.join(dir, 'log'), '-w', '-o', `-p ${port} -k ${socket} -c listen_addresses=''`, 'start']);
  const cluster: Cluster = {
    version: 0,
    dir,
    data,
    binDir,
    client: new pg.Client({ host: socket, port, user: 'postgres', database: 'postgres' }),
  };
  clusters.push(cluster);
  await cluster.client.connect();
  cluster.version = (Number((await cluster.client.query('show server_version_num')).rows[0].server_version_num) / 10000) | 0;
  return cluster;
}

async function workload(c: pg.Client): Promise<Facts> {
  const lsn = async (fn: string) => parseLsn((await c.query(`select ${fn}() as l`)).rows[0].l);
  await c.query(`create table t (id int primary key, body text)`);
  await c.query(`insert into t select g, repeat('x', 100) from generate_series(1, 3000) g`);
  await c.query('checkpoint'); // the next change of each page carries a full-page image
  const before = await lsn('pg_current_wal_insert_lsn');
  const { rows } = await c.query(`update t set body = 'changed' where id = 1500 returning ctid::text`);
  const after = await lsn('pg_current_wal_insert_lsn');
  // After the checkpoint, so that its segment is still in pg_wal (with 1 MiB segments older ones are recycled).
  await c.query(`create table v (id int)`);
  await c.query(`insert into v select generate_series(1, 5000)`);
  await c.query(`delete from v`);
  await c.query(`vacuum v`); // truncates v to nothing: an XLOG_SMGR_TRUNCATE record
  await c.query(`update t set body = 'all' where id % 7 = 0`); // many full-page images, records across pages
  await c.query('select pg_switch_wal()');
  await c.query(`insert into t values (100000, 'after the switch')`);
  const [facts] = (
    await c.query(
      `select pg_relation_filenode('t') as filenode, pg_relation_filenode('v') as v,
              (select oid from pg_database where datname = current_database()) as db`,
    )
  ).rows;
  const upTo = await lsn('pg_current_wal_flush_lsn');
  const ctidBlock = Number(/^\((\d+),/.exec(rows[0].ctid)![1]);
  return { before, after, upTo, filenode: Number(facts.filenode), db: Number(facts.db), ctidBlock, truncatedNode: Number(facts.v) };
}

/** A copy of pg_wal's segments, safe to damage. */
function copyWal(cluster: Cluster): string {
  const copy = fs.mkdtempSync(path.join(cluster.dir, 'walcopy-'));
  for (const name of fs.readdirSync(path.join(cluster.data, 'pg_wal'))) {
    if (/^[0-9A-F]{24}$/.test(name)) fs.copyFileSync(path.join(cluster.data, 'pg_wal', name), path.join(copy, name));
  }
  return copy;
}

function flipByte(dir: string, lsn: Lsn, mask = 0xff): void {
  const source = walFileSource(dir);
  const segno = lsn / BigInt(source.segmentSize);
  const file = source.files.get(segno)!;
  const bytes = fs.readFileSync(file);
  bytes[Number(lsn % BigInt(source.segmentSize))] ^= mask;
  fs.writeFileSync(file, bytes);
}

async function check(cluster: Cluster, facts: Facts, segmentSize: number): Promise<void> {
  const wal = path.join(cluster.data, 'pg_wal');
  const source = walFileSource(wal);
  assert.is(source.segmentSize, segmentSize, 'segment size from the long header');

  // Decode everything up to the flush point.
  const records: WalRecord[] = [];
  const reader = readRecords(source, firstRecordAt(source, BigInt(source.first!) * BigInt(segmentSize)), { end: facts.upTo });
  let step = reader.next();
  for (; !step.done; step = reader.next()) records.push(step.value);
  assert.ok(records.length > 100, `${records.length} records`);
  assert.is(step.value.pgVersion, cluster.version, 'version from the page magic');
  for (let i = 1; i < records.length; i++) {
    assert.is(records[i].prev, records[i - 1].lsn, `xl_prev of the record at ${formatLsn(records[i].lsn)}`);
    assert.ok(records[i].lsn >= records[i - 1].endLsn);
  }
  assert.ok(
    records.some((r) => r.blocks.some((b) => b.hasImage)),
    'full-page images after the checkpoint',
  );
  await compareWithWaldump(cluster, records, facts.upTo);
  assert.ok(
    records.some((r) => r.lsn / BigInt(segmentSize) !== r.endLsn / BigInt(segmentSize) || r.totalLength > WAL_PAGE_SIZE),
    'records across pages',
  );

  // The UPDATE references t's relfilenode and the block of the updated row.
  const update = records.filter(
    (r) =>
      r.lsn >= facts.before &&
      r.lsn < facts.after &&
      r.rmid === RM_HEAP_ID &&
      r.blocks.some((b) => b.rel.rel === facts.filenode && b.block === facts.ctidBlock),
  );
  assert.is(update.length, 1, 'one heap record of the update touches the row’s block');
  const ref = update[0].blocks.find((b) => b.block === facts.ctidBlock)!;
  assert.is(ref.rel.db, facts.db);
  assert.is(ref.fork, 0);

  // verifyWal: all good up to the flush point.
  const good = await verifyWal(wal, { upTo: facts.upTo });
  assert.ok(good.ok, good.error?.message);
  assert.is(good.records, records.length);
  assert.ok(good.lastValidLsn <= facts.upTo && good.lastValidLsn >= facts.after);

  // Changed pages since the update began.
  const changes = await changedPages(wal, { from: update[0].lsn, upTo: facts.upTo });
  assert.ok(changes.forks.get(`${ref.rel.spc}/${facts.db}/${facts.filenode}/0`)?.blocks.has(facts.ctidBlock));
  const all = await changedPages(wal, { from: records[0].lsn, upTo: facts.upTo });
  assert.ok(
    all.truncated.some((t) => t.rel.rel === facts.truncatedNode && t.block === 0 && t.forks.includes(0)),
    'vacuum truncated v',
  );
  assert.ok(
    all.created.some((c) => c.rel.rel === facts.truncatedNode && c.fork === 0),
    'create table v',
  );

  // One flipped byte inside a record: a CRC error at that record, everything before it valid.
  const victim = records.find((r) => r.lsn > facts.after && r.totalLength > 40 && (r.lsn % 8192n) + BigInt(r.totalLength) < 8192n)!;
  const crcDir = copyWal(cluster);
  flipByte(crcDir, victim.lsn + BigInt(victim.totalLength) - 1n, 0x01);
  const crc = await verifyWal(crcDir, { upTo: facts.upTo });
  assert.not.ok(crc.ok);
  assert.is(crc.error?.reason, 'record-crc', crc.error?.message);
  assert.is(crc.error?.lsn, victim.lsn);
  assert.is(crc.lastValidLsn, records[records.indexOf(victim) - 1].endLsn);
  assert.is(crc.records, records.indexOf(victim));

  // A damaged page header (magic, then page address) on a page that a record starts on.
  const onPage = records.find((r) => r.lsn > facts.after && r.lsn % BigInt(segmentSize) > 8192n && r.lsn % 8192n > 100n)!;
  const page = onPage.lsn - (onPage.lsn % 8192n);
  for (const [offset, reason] of [
    [0n, 'page-magic'],
    [8n, 'page-addr'],
  ] as const) {
    const dir = copyWal(cluster);
    flipByte(dir, page + offset, 0x10);
    const bad = await verifyWal(dir, { upTo: facts.upTo });
    assert.is(bad.error?.reason, reason, bad.error?.message);
    assert.is(bad.error?.lsn, page);
    assert.ok(bad.lastValidLsn <= onPage.lsn);
  }

  // An all-zero tail before the flush point is an error; a flush point inside the last record is not.
  const zeroDir = copyWal(cluster);
  const last = records[records.length - 1];
  flipByte(zeroDir, last.lsn, last.totalLength & 0xff);
  for (let i = 1; i < 4; i++) flipByte(zeroDir, last.lsn + BigInt(i), (last.totalLength >>> (8 * i)) & 0xff);
  const zero = await verifyWal(zeroDir, { upTo: facts.upTo });
  assert.is(zero.error?.reason, 'record-length', zero.error?.message);
  const inside = await verifyWal(wal, { upTo: last.lsn + BigInt(last.totalLength) - 1n });
  assert.ok(inside.ok && inside.incomplete, inside.error?.message);
  assert.is(inside.lastValidLsn, records[records.length - 2].endLsn);
}

/** Where the cluster's own pg_waldump exists (Debian ships it, the embedded package does not): the same records and block references. */
async function compareWithWaldump(cluster: Cluster, records: WalRecord[], upTo: Lsn): Promise<void> {
  const waldump = path.join(cluster.binDir, 'pg_waldump');
  if (!fs.existsSync(waldump)) return;
  const { stdout } = await execa(
    waldump,
    ['--path', path.join(cluster.data, 'pg_wal'), '--start', formatLsn(records[0].lsn), '--end', formatLsn(upTo)],
    { reject: false },
  );
  const theirs = [...stdout.matchAll(/lsn: ([0-9A-F]+\/[0-9A-F]+)/g)].map((m) => parseLsn(m[1]));
  assert.equal(
    theirs.map(formatLsn),
    records.map((r) => formatLsn(r.lsn)),
    'the same records as pg_waldump',
  );
  const refs = [...stdout.matchAll(/blkref #(\d+): rel (\d+\/\d+\/\d+)(?: fork (\w+))? blk (\d+)/g)].map(
    (m) => `${m[1]} ${m[2]} ${m[3] ?? 'main'} ${m[4]}`,
  );
  const forks = ['main', 'fsm', 'vm', 'init'];
  const ours = records.flatMap((r) => r.blocks.map((b) => `${b.id} ${b.rel.spc}/${b.rel.db}/${b.rel.rel} ${forks[b.fork]} ${b.block}`));
  assert.equal(ours, refs, 'the same block references as pg_waldump');
}

const wal = suite('WAL decoding against real Postgres');

wal.after(async () => {
  for (const cluster of clusters) {
    await cluster.client.end().catch(() => {});
    await execa(path.join(cluster.binDir, 'pg_ctl'), ['-D', cluster.data, '-m', 'immediate', '-w', 'stop'], {
      ...asUser(pgUser),
      reject: false,
    });
    fs.rmSync(cluster.dir, { recursive: true, force: true });
  }
});

wal('Postgres 17 (embedded): decode, verify, detect damage', async () => {
  const embedded = await embeddedBinaries();
  if (!embedded) return console.log('  (embedded Postgres not installed: skipped)');
  const binaries = await reachableBinaries(embedded, pgUser);
  const cluster = await startCluster(binaries.binDir, []);
  await check(cluster, await workload(cluster.client), 16 * 1024 * 1024);
});

wal('Postgres 15 (system) with 1 MiB segments', async () => {
  const binDir = '/usr/lib/postgresql/15/bin';
  if (!fs.existsSync(path.join(binDir, 'initdb'))) return console.log('  (no Postgres 15 at /usr/lib/postgresql/15: skipped)');
  const cluster = await startCluster(binDir, ['--wal-segsize=1']);
  await check(cluster, await workload(cluster.client), 1024 * 1024);
});

wal.run();
