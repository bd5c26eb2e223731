// Three safekeepers: one flipped byte in sk1's copy of the WAL. Recovery is served from a copy that verifies (so a
// compute at a later point has every row even before the repair), `neon verify` repairs sk1's copy from sk2's and
// the next verify is clean. And a flipped byte in the plain image cache is found by its page checksum.
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { formatLsn, type Lsn, parseLsn } from '../../core/wal.js';
import { checkPage, pageChecksum, storedChecksum } from '../../pageserver/page-checksum.js';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { flipHeapRecord } from '../../testkit/wal-damage.js';

const QUIET = { pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 }, safekeepers: 3 };

const urlOf = async (dir: string, name: string) => (await neonJson(['pg', 'show', '-n', name], { cwd: dir })).connection_string as string;
const count = async (url: string) => Number((await query(url, 'select count(*) as n from items'))[0].n);

const three = suite('three safekeepers: a damaged copy is skipped by recovery and repaired by verify');
let dir = '';
let later = 0n;
let damaged: { file: string; lsn: Lsn };
three.before(async () => {
  dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'neon.config.json'), JSON.stringify(QUIET));
  const main = (await neonJson(['start'], { cwd: dir })).connection_string as string;
  await query(
    main,
    "create table items (id int primary key, body text); insert into items select g, 'a' || g from generate_series(1, 2000) g",
  );
  const snapshot = parseLsn((await neonJson(['snapshot', 'create', 'before'], { cwd: dir })).lsn);
  await query(main, "insert into items select g, repeat('b', 200) from generate_series(2001, 5000) g");
  later = parseLsn((await query(main, 'select pg_current_wal_insert_lsn()::text as l'))[0].l);
  await query(main, 'create table marker ()');
  // A quorum commit waits for 2 of 3: wait until every safekeeper holds the later point.
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 100))) {
    const sks = await neonJson(['safekeeper', 'list'], { cwd: dir });
    if (sks.every((sk: { flush_lsn: string | null }) => sk.flush_lsn && parseLsn(sk.flush_lsn) >= later)) break;
  }
  damaged = await flipHeapRecord(dir, snapshot + 65537n, later, 'sk1');
});
three.after(() => cleanup(dir));

three('before any repair, a compute at the later LSN has every row (recovery is served a good copy)', async () => {
  await neonJson(['pg', 'create', '-n', 'early', '--at', formatLsn(later)], { cwd: dir });
  assert.is(await count(await urlOf(dir, 'early')), 5000);
});

three('verify repairs sk1 from another safekeeper; the next verify is clean; a new compute has every row', async () => {
  const first = await neon(['verify', '--json'], { cwd: dir });
  assert.is(first.code, 1, first.stdout);
  const problems = JSON.parse(first.stdout).problems;
  assert.is(problems.length, 1, JSON.stringify(problems));
  assert.ok(problems[0].detail.includes(damaged.file) && problems[0].detail.includes(formatLsn(damaged.lsn)), problems[0].detail);
  assert.match(problems[0].repaired, /^sk[23]$/);
  const second = await neon(['verify'], { cwd: dir });
  assert.is(second.code, 0, second.stdout + second.stderr);
  await neonJson(['pg', 'create', '-n', 'after', '--at', formatLsn(later)], { cwd: dir });
  assert.is(await count(await urlOf(dir, 'after')), 5000);
});

three('page checksums match real pages; a flipped byte in the image cache is found and the copy dropped', async () => {
  const cacheRoot = path.join(dir, '.neon', 'pageserver', 'cache');
  const [folder] = fs.readdirSync(cacheRoot).filter((f) => f.startsWith('images_main_'));
  assert.ok(folder, `a cached image in ${cacheRoot}`);
  const file = path.join(cacheRoot, folder, 'global', '1262'); // pg_database
  const data = fs.readFileSync(file);
  let checked = 0;
  for (let block = 0; block * 8192 < data.length; block++) {
    const page = data.subarray(block * 8192, (block + 1) * 8192);
    if (storedChecksum(page) === 0) continue;
    assert.is(pageChecksum(page, block), storedChecksum(page), `block ${block} of global/1262`);
    checked++;
  }
  assert.ok(checked > 0, 'pages with checksums were checked');
  data[8192 - 100] ^= 0x01; // the last tuple bytes of block 0
  assert.ok(checkPage(data.subarray(0, 8192), 0), 'the flip is seen');
  fs.writeFileSync(file, data);
  const first = await neon(['verify', '--json'], { cwd: dir });
  assert.is(first.code, 1, first.stdout);
  const problem = JSON.parse(first.stdout).problems.find((p: any) => p.what === 'cache');
  assert.ok(problem && problem.name.includes('global/1262 block 0'), first.stdout);
  assert.match(problem.detail, /checksum/);
  const again = await neon(['verify'], { cwd: dir });
  assert.is(again.code, 0, again.stdout + again.stderr);
  await neonJson(['pg', 'create', '-n', 'fromchunks', '--at', 'before'], { cwd: dir });
  assert.is(await count(await urlOf(dir, 'fromchunks')), 2000);
});

three.run();
