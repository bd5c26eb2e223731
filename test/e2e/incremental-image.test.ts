import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { decodeManifest, type ImageManifest } from '../../pageserver/manifest.js';
import { cleanup, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { waitFor } from '../../testkit/wait.js';

// Background images and autovacuum off: every image and every changed page in these tests is one the test made.
const CONFIG = JSON.stringify({
  pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 },
  postgres: { settings: { autovacuum: 'off' } },
});
const PAGE = 8192;

const test = suite('incremental images: only the pages the WAL changed');
let dir = '';
let main = '';
test.before(async () => {
  dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'neon.config.json'), CONFIG);
  main = (await neonJson(['start'], { cwd: dir })).connection_string;
  await waitFor('the first base image', async () => (await neonJson(['image', 'list'], { cwd: dir })).length > 0, 60_000);
  await query(
    main,
    `create table items (id int primary key, n int, pad text) with (fillfactor = 100);
     insert into items select g, 0, repeat('x', 200) from generate_series(1, 20000) g;
     create table other (id int primary key, body text);
     insert into other select g, md5(g::text) from generate_series(1, 5000) g;`,
  );
});
test.after(() => cleanup(dir));

const imagesDir = () => path.join(dir, '.neon', 'pageserver', 'images', 'main');
async function newestManifest(): Promise<ImageManifest> {
  const names = fs.readdirSync(imagesDir()).sort();
  const key = `images/main/${names.at(-1)}`;
  return decodeManifest(key, fs.readFileSync(path.join(imagesDir(), names.at(-1)!)));
}

/** `path#page` of every page whose chunk differs between two images (pages present in only one count too). */
function changedPages(before: ImageManifest, after: ImageManifest): Set<string> {
  const old = new Map(before.files.map((f) => [f.path, [...(f.chunks ?? [])]]));
  const changed = new Set<string>();
  for (const file of after.files) {
    if (file.type !== 'file') continue;
    const was = old.get(file.path) ?? [];
    [...(file.chunks ?? [])].forEach((hash, i) => hash !== was[i] && changed.add(`${file.path}#${i}`));
  }
  return changed;
}

/** The md5 of every user table's contents, as a user would compare two copies. */
async function tableSums(url: string): Promise<Record<string, string>> {
  const sums: Record<string, string> = {};
  for (const table of ['items', 'other']) {
    const [row] = await query(url, `select md5(string_agg(t::text, ',' order by id)) as s from ${table} t`);
    sums[table] = row.s;
  }
  return sums;
}

test('after an update of 100 rows the incremental holds exactly the pages that changed, and a compute from it has the same data', async () => {
  const base = await neonJson(['image', 'create'], { cwd: dir });
  assert.ok(base.end_lsn, 'an image is taken');
  const previous = await newestManifest();
  const [{ heap, index }] = await query(main, `select pg_relation_filepath('items') as heap, pg_relation_filepath('items_pkey') as index`);
  const rowPages = (await query(main, `select distinct (ctid::text::point)[0]::int as b from items where id <= 100`)).map((r) =>
    Number(r.b),
  );
  await query(main, 'update items set n = n + 1 where id <= 100');

  const taken = await neonJson(['image', 'create'], { cwd: dir });
  const image = await newestManifest();
  assert.is(taken.kind, 'incremental');
  assert.is(image.parent, `images/main/${fs.readdirSync(imagesDir()).sort().at(-2)}`);

  // The pages it read: those the WAL changed, not the database (items alone is ~600 pages).
  const totalPages = image.files.reduce((n, f) => n + (f.chunks?.length ?? 0), 0);
  assert.ok(image.pagesRead! < totalPages / 4, `read ${image.pagesRead} of ${totalPages} pages`);

  // Which pages differ from the previous image: of user tables, only those of items (heap, its index, their maps);
  // catalog pages may change too (hint bits set by reads are WAL-logged with data checksums on).
  const changed = changedPages(previous, image);
  for (const page of changed) {
    const file = page.split('#')[0];
    const ofItems = [heap, index].some((rel) => file === rel || file.startsWith(`${rel}_`));
    const relfilenode = /^base\/\d+\/(\d+)/.exec(file)?.[1];
    assert.ok(ofItems || relfilenode === undefined || Number(relfilenode) < 16384, `page ${page} changed, but only items was updated`);
  }
  for (const block of rowPages) assert.ok(changed.has(`${heap}#${block}`), `heap page ${block} of an updated row is new`);
  const [{ f: other }] = await query(main, `select pg_relation_filepath('other') as f`);
  assert.not.ok(
    [...changed].some((p) => p.startsWith(`${other}#`)),
    'no page of the other table changed',
  );

  // A full comparison: every page of the replayed copy is what the incremental's chunks say.
  const cacheDir = path.join(dir, '.neon', 'pageserver', 'cache');
  const folder = path.join(cacheDir, `images_main_${lsnHex(image.endLsn)}`);
  assert.ok(fs.existsSync(folder), "the advanced plain copy is the new image's cached copy");
  let compared = 0;
  for (const file of image.files) {
    if (file.type !== 'file') continue;
    const bytes = fs.readFileSync(path.join(folder, file.path));
    assert.is(bytes.length, file.size, `${file.path}: size`);
    [...(file.chunks ?? [])].forEach((hash, i) => {
      const sum = createHash('sha256')
        .update(bytes.subarray(i * PAGE, (i + 1) * PAGE))
        .digest('hex');
      assert.is(sum, hash, `${file.path} page ${i} is not what the image says`);
      compared++;
    });
  }
  assert.is(compared, totalPages);

  // A compute materialised from it (restored from chunks and from the cache copy) has the source's data.
  const sums = await tableSums(main);
  await neonJson(['snapshot', 'create', 'after-update'], { cwd: dir });
  const atSnapshot = await neonJson(['pg', 'create', '-n', 'check', '--at', 'after-update', '--read-only'], { cwd: dir });
  assert.equal(await tableSums(atSnapshot.connection_string), sums);
  const verify = await neonJson(['verify'], { cwd: dir });
  assert.is(verify.ok, true, JSON.stringify(verify));
});

test('a new table and a truncate: the next incremental still materialises the same data', async () => {
  await query(main, `create table fresh as select g as id, g * 2 as v from generate_series(1, 3000) g; truncate other;`);
  await query(main, `insert into other select g, 'again' || g from generate_series(1, 10) g`);
  const taken = await neonJson(['image', 'create'], { cwd: dir });
  assert.is(taken.kind, 'incremental');
  const [fresh] = await query(main, `select md5(string_agg(id || ':' || v, ',' order by id)) as s from fresh`);
  const sums = await tableSums(main);
  await neonJson(['snapshot', 'create', 'after-truncate'], { cwd: dir });
  const at = await neonJson(['pg', 'create', '-n', 'check2', '--at', 'after-truncate', '--read-only'], { cwd: dir });
  assert.equal(await tableSums(at.connection_string), sums);
  const [copy] = await query(at.connection_string, `select md5(string_agg(id || ':' || v, ',' order by id)) as s from fresh`);
  assert.is(copy.s, fresh.s);
});

test('CREATE DATABASE is not something pages describe: a full image is taken instead', async () => {
  await query(main, 'create database extra');
  const taken = await neonJson(['image', 'create'], { cwd: dir });
  assert.is(taken.kind, 'online');
});

function lsnHex(lsn: string): string {
  const [hi, lo] = lsn.split('/');
  return (BigInt('0x' + hi) * 2n ** 32n + BigInt('0x' + lo)).toString(16).padStart(16, '0');
}

test.run();
