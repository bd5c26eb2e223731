// An incremental image links the safekeepers' WAL as it is and checks it in the one walk that reads its block
// references. When that walk finds a damaged copy, the WAL store stages again from copies that verify: the image
// is still an incremental, and it holds the data (a replay of the damaged copy would have stopped short).
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { parseLsn } from '../../core/wal.js';
import { cleanup, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { waitFor } from '../../testkit/wait.js';
import { flipHeapRecord, safekeeperWalDir as walDir } from '../../testkit/wal-damage.js';

const CONFIG = {
  pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 },
  postgres: { settings: { autovacuum: 'off' } },
  safekeepers: 3,
};

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
  await flipHeapRecord(dir, from, to, 'sk1');

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
