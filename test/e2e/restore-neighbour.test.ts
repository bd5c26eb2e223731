// An image without a cached copy of its own (an incremental advanced it in place on ext4, or it was evicted) is
// restored from the cached copy of a neighbouring image plus the pages that differ: byte for byte what a restore
// from chunks gives, whether files grew, shrank, appeared or went between the two images.
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ChunkStore } from '../../chunkstore/index.js';
import { ImageCache } from '../../pageserver/image-cache.js';
import type { ImageManifest } from '../../pageserver/manifest.js';
import { cachedCopyOf, keyOf, manifestsOf, treeOf } from '../../testkit/images.js';
import { restoreImage } from '../../pageserver/restore.js';
import { clonesIn } from '../../pageserver/clone.js';
import { cleanup, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { waitFor } from '../../testkit/wait.js';

const CONFIG = JSON.stringify({
  pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 },
  postgres: { settings: { autovacuum: 'off' } },
});

const test = suite('restore from a neighbouring image’s cached copy');
let dir = '';
const cwd = () => ({ cwd: dir });
const neonDir = () => path.join(dir, '.neon');
let older: ImageManifest;
let newer: ImageManifest;

test.before(async () => {
  dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'neon.config.json'), CONFIG);
  const url = (await neonJson(['start'], cwd())).connection_string;
  await waitFor('the first base image', async () => (await neonJson(['image', 'list'], cwd())).length > 0, 60_000);
  await query(
    url,
    `create table items (id int primary key, n int, pad text);
     insert into items select g, 0, repeat('x', 200) from generate_series(1, 20000) g;
     create table shrinks (id int, pad text);
     insert into shrinks select g, repeat('y', 500) from generate_series(1, 3000) g;
     create table goes (id int);
     insert into goes select generate_series(1, 1000);`,
  );
  await neonJson(['snapshot', 'create', 'A'], cwd());
  await neonJson(['image', 'create'], cwd());
  // Between the two images: pages changed, a file grew, one shrank (vacuum truncates its empty tail), one went,
  // one appeared.
  await query(
    url,
    `update items set n = 1 where id % 97 = 0;
     insert into items select g, 2, repeat('z', 200) from generate_series(20001, 24000) g;
     delete from shrinks where id > 100;
     drop table goes;
     create table appears (id int); insert into appears select generate_series(1, 500);`,
  );
  await query(url, 'vacuum shrinks'); // not in a transaction block
  await neonJson(['image', 'create'], cwd());
  [older, newer] = (await manifestsOf(neonDir())).slice(-2);
  assert.is(newer.kind, 'incremental', 'the newer image advanced the older one');
});
test.after(() => cleanup(dir));

test('a copy of the newer image patched with the older image’s pages is the older image, byte for byte', async () => {
  await neonJson(['stop'], cwd());
  const store = await ChunkStore.open(path.join(neonDir(), 'pageserver', 'chunks'));
  try {
    const cache = new ImageCache(path.join(neonDir(), 'pageserver', 'cache'));
    assert.ok(cache.has(keyOf(newer)), 'the newer image has its cached copy');
    const viaNeighbour = path.join(dir, 'via-neighbour');
    const viaChunks = path.join(dir, 'via-chunks');
    await cache.restoreFrom(keyOf(newer), newer, older, viaNeighbour, store);
    await restoreImage(store, older, viaChunks);
    const expected = treeOf(viaChunks);
    const got = treeOf(viaNeighbour);
    assert.equal([...got.keys()].sort(), [...expected.keys()].sort(), 'the same entries');
    for (const [file, description] of expected) assert.ok(got.get(file) === description, `${file} is the same`);
    // The two images differ, so the patching mattered: the neighbour's copy itself is not the older image.
    const newerTree = treeOf(cachedCopyOf(neonDir(), newer));
    assert.not.equal(newerTree, expected);

    // A checkout takes the neighbour's copy itself where a copy would cost every byte: renamed into place and
    // patched there, the result is the same; the cache then writes the newer image's copy again from chunks.
    const taken = path.join(dir, 'taken');
    await cache.restoreFrom(keyOf(newer), newer, older, taken, store, undefined, { take: true });
    const tookIt = !fs.existsSync(cachedCopyOf(neonDir(), newer));
    assert.is(tookIt, !cache.clones, 'renamed where the file system cannot clone');
    const gotTaken = treeOf(taken);
    assert.equal([...gotTaken.keys()].sort(), [...expected.keys()].sort(), 'the same entries (taken)');
    for (const [file, description] of expected) assert.ok(gotTaken.get(file) === description, `${file} is the same (taken)`);
    await cache.refilled();
    assert.ok(cache.has(keyOf(newer)), 'the newer image has its copy again');
    const newerViaChunks = path.join(dir, 'newer-via-chunks');
    await restoreImage(store, newer, newerViaChunks);
    const newerExpected = treeOf(newerViaChunks);
    const refilled = treeOf(cachedCopyOf(neonDir(), newer));
    assert.equal([...refilled.keys()].sort(), [...newerExpected.keys()].sort(), 'the copy written again has the image’s entries');
    for (const [file, description] of newerExpected) assert.ok(refilled.get(file) === description, `${file} is the same (written again)`);
    await cache.close();
  } finally {
    await store.close();
  }
});

test('checkout of a snapshot whose image has no copy of its own: the rows of that point, from the neighbour', async () => {
  const cacheDir = path.join(neonDir(), 'pageserver', 'cache');
  // Whatever the file system kept (a clone keeps the older copy), that copy goes: it is only a cache.
  for (const name of fs.readdirSync(cacheDir)) {
    if (path.join(cacheDir, name) !== cachedCopyOf(neonDir(), newer))
      fs.rmSync(path.join(cacheDir, name), { recursive: true, force: true });
  }
  await neonJson(['start'], cwd());
  const { left } = await neonJson(['checkout', 'A'], cwd());
  const url = (await neonJson(['pg', 'show', '-n', 'main'], cwd())).connection_string as string;
  const [row] = await query(url, `select count(*)::int as n, sum(n)::int as s from items`);
  assert.equal([row.n, row.s], [20000, 0], 'items as at A');
  const [{ goes }] = await query(url, `select count(*)::int as goes from goes`);
  assert.is(goes, 1000, 'the table dropped after A is there at A');
  const log = fs.readFileSync(path.join(neonDir(), 'logs', 'daemon.log'), 'utf8');
  assert.match(log, /from the cached copy of images\/main\//);
  if (!clonesIn(dir)) {
    // The checkout renamed the newer image's copy into place: the daemon writes it again in the background, and
    // a compute at the state the checkout left (which starts from that image) has main's rows.
    await waitFor('the copy taken to be written again', () => fs.existsSync(path.join(cachedCopyOf(neonDir(), newer), '.complete')), 60_000);
    assert.match(fs.readFileSync(path.join(neonDir(), 'logs', 'daemon.log'), 'utf8'), /is written again/);
  }
  const tip = (await neonJson(['pg', 'create', '-n', 'tip', '--at', left, '--read-only'], cwd())).connection_string as string;
  const [atTip] = await query(tip, `select count(*)::int as n, sum(n)::int as s from items`);
  assert.equal([atTip.n, atTip.s], [24000, 206 + 8000], 'items at main’s tip');
  const verify = await neonJson(['verify'], cwd());
  assert.is(verify.ok, true, JSON.stringify(verify).slice(0, 300));
});

test.run();
