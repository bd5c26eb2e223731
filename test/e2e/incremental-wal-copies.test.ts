// An incremental image links the safekeepers' WAL as it is and checks it in the one walk that reads its block
// references. When that walk finds a damaged copy, the WAL store stages again from copies that verify: the image
// is still an incremental, and it holds the data (a replay of the damaged copy would have stopped short).
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { type Lsn, parseLsn, segmentName } from '../../core/wal.js';
import { cleanup, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { waitFor } from '../../testkit/wait.js';
import { verifyWal } from '../../wal/verify.js';

const SEGMENT = 16 * 1024 * 1024;
const RM_HEAP_ID = 10;
const CONFIG = {
  pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 },
  postgres: { settings: { autovacuum: 'off' } },
  safekeepers: 3,
};

const walDir = (dir: string, sk: string) => path.join(dir, '.neon', 'safekeepers', sk, 'wal', 'main');

/** Flip a byte inside the first heap record between `from` and `to` of safekeeper `sk`'s copy of the WAL. */
async function flipRecord(dir: string, from: Lsn, to: Lsn, sk: string): Promise<Lsn> {
  const wal = walDir(dir, sk);
  const files = fs
    .readdirSync(wal)
    .filter((f) => /^[0-9A-F]{24}(\.partial)?$/.test(f))
    .map((f) => path.join(wal, f));
  let hit: Lsn | undefined;
  await verifyWal(files, {
    from: from - (from % BigInt(SEGMENT)),
    upTo: to,
    onRecord: (r) => {
      const inPage = Number(r.lsn % 8192n) + r.totalLength < 8192;
      if (hit === undefined && r.rmid === RM_HEAP_ID && r.lsn >= from && inPage && r.totalLength > 100) hit = r.lsn;
    },
  });
  assert.ok(hit !== undefined, `a heap record to damage in ${sk}'s copy`);
  const name = segmentName(1, hit / BigInt(SEGMENT), SEGMENT);
  const file = [path.join(wal, name), path.join(wal, name + '.partial')].find((f) => fs.existsSync(f))!;
  const fd = fs.openSync(file, 'r+');
  const at = Number(hit % BigInt(SEGMENT)) + 60; // inside the record's data: its CRC no longer matches
  const byte = Buffer.alloc(1);
  fs.readSync(fd, byte, 0, 1, at);
  byte[0] ^= 0x10;
  fs.writeSync(fd, byte, 0, 1, at);
  fs.closeSync(fd);
  return hit;
}

const sums = async (url: string) => (await query(url, `select md5(string_agg(id || ':' || n, ',' order by id)) as s from items`))[0].s;

const test = suite('incremental image over a damaged WAL copy');
let dir = '';
let main = '';
test.before(async () => {
  dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'neon.config.json'), JSON.stringify(CONFIG));
  main = (await neonJson(['start'], { cwd: dir })).connection_string;
  await waitFor('the first base image', async () => (await neonJson(['image', 'list'], { cwd: dir })).length > 0, 60_000);
  await query(
    main,
    `create table items (id int primary key, n int, pad text); insert into items select g, 0, repeat('x', 200) from generate_series(1, 200000) g`,
  );
});
test.after(() => cleanup(dir));

test('one of three safekeeper copies damaged: the incremental is taken from a good copy and holds the update', async () => {
  await neonJson(['image', 'create'], { cwd: dir });
  const from = parseLsn((await query(main, 'select pg_current_wal_insert_lsn()::text as l'))[0].l);
  await query(main, 'update items set n = n + 1 where id <= 500');
  const to = parseLsn((await query(main, 'select pg_current_wal_insert_lsn()::text as l'))[0].l);
  // Finish the segment: the WAL store then takes the first safekeeper's finished copy, sk1's, which is damaged.
  // (The rest of the segment counts as WAL since the image: items is ~50 MB so that an incremental still pays.)
  const [{ name }] = await query(main, 'select pg_walfile_name(pg_switch_wal()) as name');
  await query(main, 'create table marker ()');
  await waitFor('every safekeeper to finish the segment', async () =>
    ['sk1', 'sk2', 'sk3'].every((sk) => fs.existsSync(path.join(walDir(dir, sk), name))),
  );
  await flipRecord(dir, from, to, 'sk1');

  const taken = await neonJson(['image', 'create'], { cwd: dir });
  const log = fs.readFileSync(path.join(dir, '.neon', 'logs', 'daemon.log'), 'utf8');
  const why = log
    .split('\n')
    .filter((line) => line.includes('incremental image'))
    .join('\n');
  assert.is(taken.kind, 'incremental', `a good copy serves: no full image needed; the daemon said:\n${why}`);
  assert.match(log, /staging WAL through the WAL store \(the WAL since the previous image cannot be read/);

  // What a user gets from that image: a compute at a snapshot there has the updated rows.
  const expected = await sums(main);
  await neonJson(['snapshot', 'create', 'after-update'], { cwd: dir });
  const at = await neonJson(['pg', 'create', '-n', 'check', '--at', 'after-update', '--read-only'], { cwd: dir });
  assert.is(await sums(at.connection_string), expected);
});

test.run();
