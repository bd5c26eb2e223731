// One flipped byte in a safekeeper's WAL (issue 9 item 2). Before: `neon verify` checked local WAL by size and said
// OK, and a compute created at a later point came up with fewer rows (Postgres' recovery takes the damage for the
// end of WAL). Now verify names the file and LSN, a create that cannot reach its target fails, and a damaged copy
// is repaired from a good one (the offloaded segment here; another safekeeper in verify-repair.test.ts).
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { formatLsn, type Lsn, parseLsn, segmentName, walObjectKey } from '../../core/wal.js';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { waitFor } from '../../testkit/wait.js';
import { flipHeapRecord } from '../../testkit/wal-damage.js';

const SEGMENT = 16 * 1024 * 1024;
/** No background images: the WAL from the first image on is what recovery replays. */
const QUIET = { pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 } };

interface Damaged {
  /** The file flipped, its segment name, and the LSN of the record hit. */
  file: string;
  name: string;
  lsn: Lsn;
  /** A point after the damage, with every row committed before it. */
  later: Lsn;
  laterTime: Date;
  rows: number;
}

const urlOf = async (dir: string, name: string) => (await neonJson(['pg', 'show', '-n', name], { cwd: dir })).connection_string as string;
const count = async (url: string) => Number((await query(url, 'select count(*) as n from items'))[0].n);

/** A repository with 2000 rows, a snapshot, 3000 more rows, and the point after them. */
async function prepare(
  dir: string,
  config: object,
  init: string[] = [],
): Promise<{ main: string; snapshot: Lsn; later: Lsn; laterTime: Date }> {
  fs.writeFileSync(path.join(dir, 'neon.config.json'), JSON.stringify({ ...QUIET, ...config }));
  if (init.length) assert.is((await neon(['init', ...init], { cwd: dir })).code, 0);
  const main = (await neonJson(['start'], { cwd: dir })).connection_string as string;
  await query(
    main,
    "create table items (id int primary key, body text); insert into items select g, 'a' || g from generate_series(1, 2000) g",
  );
  const snapshot = parseLsn((await neonJson(['snapshot', 'create', 'before'], { cwd: dir })).lsn);
  await query(main, "insert into items select g, repeat('b', 200) from generate_series(2001, 5000) g");
  const later = parseLsn((await query(main, 'select pg_current_wal_insert_lsn()::text as l'))[0].l);
  await new Promise((resolve) => setTimeout(resolve, 50));
  const laterTime = new Date();
  await new Promise((resolve) => setTimeout(resolve, 50));
  await query(main, 'create table marker ()'); // a synchronous commit after `later`: the safekeepers hold it all
  return { main, snapshot, later, laterTime };
}

const alone = suite('one safekeeper, no other copy: damage is reported and a later point fails to be created');
let dir = '';
let damaged: Damaged;
alone.before(async () => {
  dir = tmpDir();
  const { snapshot, later, laterTime } = await prepare(dir, {});
  damaged = { ...(await flipHeapRecord(dir, snapshot + 65537n, later)), later, laterTime, rows: 5000 };
});
alone.after(() => cleanup(dir));

alone('neon verify exits 1 and names the file and the LSN', async () => {
  const result = await neon(['verify', '--json'], { cwd: dir });
  assert.is(result.code, 1, `verify fails: ${result.stdout}`);
  const report = JSON.parse(result.stdout);
  const problem = report.problems.find((p: any) => p.what === 'wal');
  assert.ok(problem, JSON.stringify(report.problems));
  assert.ok(problem.detail.includes(damaged.file), `names the file: ${problem.detail}`);
  assert.ok(problem.detail.includes(formatLsn(damaged.lsn)), `names the LSN ${formatLsn(damaged.lsn)}: ${problem.detail}`);
  assert.match(problem.detail, /CRC/);
  assert.match(problem.detail, /no good copy/);
  assert.ok(fs.existsSync(damaged.file), 'the damaged file stays where it is');
});

alone('a compute at a later LSN fails clearly, leaving nothing behind', async () => {
  const result = await neon(['pg', 'create', '-n', 'x', '--at', formatLsn(damaged.later)], { cwd: dir });
  assert.is.not(result.code, 0, `create fails instead of coming up with fewer rows: ${result.stdout}`);
  assert.match(result.stderr, /damaged/);
  assert.ok(result.stderr.includes(damaged.name), `names the WAL file: ${result.stderr}`);
  assert.ok(result.stderr.includes(formatLsn(damaged.lsn)), `names the LSN: ${result.stderr}`);
  const computes = await neonJson(['pg', 'list'], { cwd: dir });
  assert.not.ok(
    computes.some((c: any) => c.name === 'x'),
    'no half-made compute',
  );
  const branches = await neonJson(['branch', 'list'], { cwd: dir });
  assert.not.ok(
    branches.some((b: any) => b.name === 'x'),
    'no branch left over',
  );
  assert.not.ok(fs.existsSync(path.join(dir, '.neon', 'computes', 'x', 'pgdata')), 'no data directory left over');
});

alone('a compute at a later time fails too (it used to recover "to the end instead", short of rows)', async () => {
  const result = await neon(['pg', 'create', '-n', 'y', '--at', damaged.laterTime.toISOString()], { cwd: dir });
  assert.is.not(result.code, 0, `create fails: ${result.stdout}`);
  assert.ok(result.stderr.includes(damaged.name), result.stderr);
});

alone('a point before the damage is still reachable', async () => {
  await neonJson(['pg', 'create', '-n', 'early', '--at', 'before'], { cwd: dir });
  assert.is(await count(await urlOf(dir, 'early')), 2000);
});

alone.run();

const offloaded = suite('one safekeeper and storage_dest: a damaged finished segment is repaired from the offloaded one');
let odir = '';
let odamaged: Damaged;
offloaded.before(async () => {
  odir = tmpDir();
  const storage = path.join(odir, 'storage');
  const { main, snapshot, later, laterTime } = await prepare(odir, {}, [`--storage_dest=${storage}`]);
  // Finish the segment, and wait until it is offloaded.
  const name = segmentName(1, later / BigInt(SEGMENT), SEGMENT);
  await query(main, 'select pg_switch_wal()');
  await query(main, 'create table marker2 ()');
  await waitFor('the segment to be offloaded', () => fs.existsSync(path.join(storage, ...walObjectKey('main', name).split('/'))), 60_000);
  odamaged = { ...(await flipHeapRecord(odir, snapshot + 65537n, later)), later, laterTime, rows: 5000 };
  assert.ok(!odamaged.file.endsWith('.partial'), 'a finished segment was damaged');
});
offloaded.after(() => cleanup(odir));

offloaded('verify repairs it from storage, keeps the damaged file, and the next verify is clean', async () => {
  const first = await neon(['verify', '--json'], { cwd: odir });
  assert.is(first.code, 1, 'the damage is reported');
  const problem = JSON.parse(first.stdout).problems.find((p: any) => p.what === 'wal');
  assert.ok(problem.detail.includes(formatLsn(odamaged.lsn)), problem.detail);
  assert.is(problem.repaired, 'storage', problem.detail);
  assert.match(problem.detail, /repaired from storage/);
  const kept = fs.readdirSync(path.dirname(odamaged.file)).filter((f) => f.startsWith(`${odamaged.name}.corrupt-`));
  assert.is(kept.length, 1, 'the damaged file is kept');
  const second = await neon(['verify'], { cwd: odir });
  assert.is(second.code, 0, second.stdout);
  assert.match(second.stdout, /^OK/);
});

offloaded('a compute at the later LSN has every row', async () => {
  await neonJson(['pg', 'create', '-n', 'x', '--at', formatLsn(odamaged.later)], { cwd: odir });
  assert.is(await count(await urlOf(odir, 'x')), odamaged.rows);
});

offloaded('gc keeps the damaged copy for the WAL retention, then removes it and nothing else', async () => {
  const walDir = path.dirname(odamaged.file);
  const keptCopies = () => fs.readdirSync(walDir).filter((f) => f.includes('.corrupt-'));
  const segments = () => fs.readdirSync(walDir).filter((f) => !f.includes('.corrupt-'));
  const before = segments();
  await neonJson(['gc'], { cwd: odir });
  assert.is(keptCopies().length, 1, 'kept within the default 7 days');
  // The repair happened under a second ago; its stamp has a one-second grain.
  await new Promise((resolve) => setTimeout(resolve, 1100));
  const report = await neonJson(['gc', '--keep-wal-days', '0'], { cwd: odir });
  assert.is(report.damaged_wal_removed, 1, JSON.stringify(report));
  assert.equal(keptCopies(), []);
  assert.ok(segments().includes(before[before.length - 1]), 'the newest segment stays');
});

offloaded.run();
