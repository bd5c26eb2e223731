import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ChunkStore } from '../../chunkstore/index.js';
import { chunkSetOf, decodeManifest, encodeManifest } from '../../pageserver/manifest.js';
import { query } from '../../testkit/pg.js';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { encodeManifestV1, relabelVersion } from '../../testkit/manifests.js';
import { waitFor } from '../../testkit/wait.js';
import { setTimeout as sleep } from 'node:timers/promises';

/** Background images off, so that every image in these tests is one the test asked for. */
const QUIET = JSON.stringify({ pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 } });

/** Row count and a checksum of the table's contents, as a user would compare two copies. */
async function fingerprint(url: string, table = 'items'): Promise<string> {
  const [row] = await query(
    url,
    `select count(*) as n, md5(coalesce(string_agg(id::text || ':' || body, ',' order by id), '')) as sum from ${table}`,
  );
  return `${row.n}:${row.sum}`;
}

const urlOf = async (dir: string, name: string) => (await neonJson(['pg', 'show', '-n', name], { cwd: dir })).connection_string as string;

const history = suite('snapshots, side-by-side computes, checkout');
let dir = '';
let afterA = new Date();
let main = '';
history.before(async () => {
  dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'neon.config.json'), QUIET);
  main = (await neonJson(['start'], { cwd: dir })).connection_string;
  await query(
    main,
    "create table items (id int primary key, body text); insert into items select g, 'a' || g from generate_series(1, 2000) g",
  );
  // The first base image is taken right after start; a snapshot waits for it, so it is there before A is taken.
  await waitFor('the first base image', async () => (await neonJson(['image', 'list'], { cwd: dir })).length > 0, 120_000);
});
history.after(() => cleanup(dir));

history('snapshot A, more writes, snapshot B: computes at A and B side by side each show exactly their data', async () => {
  const atA = await fingerprint(main);
  const imagesBefore = (await neonJson(['image', 'list'], { cwd: dir })).length;
  const a = await neonJson(['snapshot', 'create', 'A'], { cwd: dir });
  assert.is((await neonJson(['image', 'list'], { cwd: dir })).length, imagesBefore, 'a snapshot copies nothing (no new base image)');
  assert.is(a.name, 'A');
  await sleep(100);
  afterA = new Date();
  await sleep(100);
  await query(
    main,
    "insert into items select g, 'b' || g from generate_series(2001, 5000) g; update items set body = 'changed' where id <= 10",
  );
  const atB = await fingerprint(main);
  await neonJson(['snapshot', 'create', 'B'], { cwd: dir });
  await query(main, 'delete from items where id > 100');
  await neonJson(['pg', 'create', '-n', 'at-a', '--at', 'A', '--read-only'], { cwd: dir });
  await neonJson(['pg', 'create', '-n', 'at-b', '--at', 'B', '--read-only'], { cwd: dir });
  assert.is(await fingerprint(await urlOf(dir, 'at-a')), atA);
  assert.is(await fingerprint(await urlOf(dir, 'at-b')), atB);
  assert.is(
    await fingerprint(main),
    `100:${(await query(main, "select md5(string_agg(id::text || ':' || body, ',' order by id)) as s from items"))[0].s}`,
  );
  const readOnly = await query(await urlOf(dir, 'at-a'), 'insert into items values (-1, $$x$$)').then(
    () => false,
    (e: Error) => /read-only/.test(e.message),
  );
  assert.ok(readOnly, 'a compute at a snapshot is read-only');
  const list = await neonJson(['snapshot', 'list'], { cwd: dir });
  assert.equal(
    list.map((s: { name: string }) => s.name),
    ['A', 'B'],
  );
  for (const name of ['at-a', 'at-b']) await neonJson(['pg', 'destroy', '-n', name], { cwd: dir });
  assert.not.ok(fs.existsSync(path.join(dir, '.neon', 'computes', 'at-a')), 'destroy removes the data directory');
});

history('a time after A and before the next writes shows A; bad targets are refused clearly', async () => {
  const atTime = await neonJson(['pg', 'create', '-n', 'at-time', '--at', afterA.toISOString(), '--read-only'], { cwd: dir });
  assert.is(await fingerprint(atTime.connection_string), await fingerprintAt('A'));
  await neonJson(['pg', 'destroy', '-n', 'at-time'], { cwd: dir });
  const future = await neon(['pg', 'create', '-n', 'x', '--at', 'FF/0', '--read-only'], { cwd: dir });
  assert.match(future.stderr, /LSN FF\/0 is in the future of branch main/);
  const early = await neon(['pg', 'create', '-n', 'x', '--at', '2001-01-01T00:00:00Z', '--read-only'], { cwd: dir });
  assert.match(early.stderr, /no base image of branch main at or before time 2001-01-01/);
  const nonsense = await neon(['pg', 'create', '-n', 'x', '--at', 'no-such-thing', '--read-only'], { cwd: dir });
  assert.match(nonsense.stderr, /"no-such-thing" is not a snapshot name, an LSN/);
  const badName = await neon(['snapshot', 'create', '../etc'], { cwd: dir });
  assert.match(badName.stderr, /"name" must be a snapshot name: .*\(got "\.\.\/etc"\)/);
  assert.is((await neon(['snapshot', 'create', 'A'], { cwd: dir })).code, 1, 'names are unique');
});

async function fingerprintAt(snapshot: string): Promise<string> {
  const made = await neonJson(['pg', 'create', '-n', `fp-${snapshot.toLowerCase()}`, '--at', snapshot, '--read-only'], { cwd: dir });
  try {
    return await fingerprint(made.connection_string);
  } finally {
    await neonJson(['pg', 'destroy', '-n', `fp-${snapshot.toLowerCase()}`], { cwd: dir });
  }
}

history('checkout A, write there, checkout back: the tip is intact, the writes on A stay on their own branch', async () => {
  const tip = await fingerprint(main);
  const out = await neonJson(['checkout', 'A'], { cwd: dir });
  assert.is(out.continued, false);
  assert.ok(out.left, 'the state left behind got a snapshot');
  assert.is(await fingerprint(await urlOf(dir, 'main')), await fingerprintAt('A'));
  await query(await urlOf(dir, 'main'), "insert into items values (9001, 'written on A')");
  const onA = await fingerprint(await urlOf(dir, 'main'));
  const back = await neonJson(['checkout', out.left], { cwd: dir });
  assert.is(back.branch, 'main');
  assert.is(back.continued, true, 'back to where main was left: main continues');
  assert.is(await fingerprint(await urlOf(dir, 'main')), tip, 'the tip is intact');
  await query(await urlOf(dir, 'main'), "insert into items values (9002, 'main goes on')");
  const branches = await neonJson(['branch', 'list'], { cwd: dir });
  const forked = branches.find((b: { name: string }) => b.name === out.branch);
  assert.is(forked.parent, 'main');
  // The writes made on A are on that branch, reachable through the snapshot that marks where it was left.
  assert.is(await fingerprintAt(back.left), onA);
  const log = await neonJson(['log'], { cwd: dir });
  assert.ok(log.some((e: { kind: string; name: string }) => e.kind === 'branch' && e.name === out.branch));
  assert.ok(log.some((e: { kind: string }) => e.kind === 'image'));
});

const images = suite('incremental base images, integrity, gc');
let idir = '';
let iurl = '';
images.before(async () => {
  idir = tmpDir();
  fs.writeFileSync(path.join(idir, 'neon.config.json'), QUIET);
  iurl = (await neonJson(['start'], { cwd: idir })).connection_string;
});
images.after(() => cleanup(idir));

images('an image after 1% of a tens-of-MB table changed stores far fewer bytes than the first', async () => {
  await query(
    iurl,
    "create table big (id int primary key, payload text); insert into big select g, md5(g::text) || repeat('p', 200) from generate_series(1, 120000) g",
  );
  // Hint bits set and visibility map written first, so that the next image differs only by what the update changes.
  await query(iurl, 'vacuum big');
  await query(iurl, 'checkpoint');
  const first = await neonJson(['image', 'create'], { cwd: idir });
  assert.ok(first.raw_bytes > 30 * 1024 * 1024, `the database is tens of MB (${first.raw_bytes})`);
  await neonJson(['snapshot', 'create', 'before-update'], { cwd: idir });
  await query(iurl, 'update big set payload = payload || $$!$$ where id <= 1200');
  await query(iurl, 'checkpoint');
  const second = await neonJson(['image', 'create'], { cwd: idir });
  assert.ok(second.new_bytes < first.new_bytes * 0.25, `incremental ${second.new_bytes} bytes vs first ${first.new_bytes}`);
  await neonJson(['snapshot', 'create', 'after-update'], { cwd: idir });
});

images('a corrupt chunk: verify names it, the snapshot needing it fails cleanly, another still works', async () => {
  const report = await neonJson(['verify'], { cwd: idir });
  assert.is(report.ok, true, JSON.stringify(report.problems));
  const imagesDir = path.join(idir, '.neon', 'pageserver', 'images', 'main');
  const manifests = await Promise.all(
    fs
      .readdirSync(imagesDir)
      .sort()
      .map(async (file) => decodeManifest(file, fs.readFileSync(path.join(imagesDir, file)))),
  );
  const older = chunkSetOf(manifests.slice(0, -1));
  const onlyNewest = [...chunkSetOf(manifests.slice(-1))].find((hash) => !older.has(hash))!;
  const store = await ChunkStore.open(path.join(idir, '.neon', 'pageserver', 'chunks'));
  const where = store.locate(onlyNewest)!;
  await store.close();
  const packFile = path.join(idir, '.neon', 'pageserver', 'chunks', 'packs', `${where.pack}.pack`);
  const bytes = fs.readFileSync(packFile);
  bytes[where.offset + Math.min(10, where.storedLength - 1)] ^= 0xff;
  fs.writeFileSync(packFile, bytes);

  const broken = await neon(['verify', '--json'], { cwd: idir });
  assert.is(broken.code, 1, 'verify fails');
  const found = JSON.parse(broken.stdout);
  assert.ok(
    found.problems.some((p: { name: string; what: string }) => p.what === 'chunk' && p.name === onlyNewest),
    'verify names the chunk',
  );
  // Restores use the plain copy of each branch's newest image when there is one; without it they need the chunks.
  fs.rmSync(path.join(idir, '.neon', 'pageserver', 'cache'), { recursive: true, force: true });
  const bad = await neon(['pg', 'create', '-n', 'after', '--at', 'after-update', '--read-only'], { cwd: idir });
  assert.is(bad.code, 1);
  assert.match(bad.stderr, new RegExp(`corrupt|${onlyNewest.slice(0, 12)}`));
  assert.not.ok(fs.existsSync(path.join(idir, '.neon', 'computes', 'after')), 'a failed create leaves nothing');
  const good = await neonJson(['pg', 'create', '-n', 'before', '--at', 'before-update', '--read-only'], { cwd: idir });
  assert.is((await query(good.connection_string, 'select count(*)::int as n from big'))[0].n, 120000);
  await neonJson(['pg', 'destroy', '-n', 'before'], { cwd: idir });
  bytes[where.offset + Math.min(10, where.storedLength - 1)] ^= 0xff;
  fs.writeFileSync(packFile, bytes);
});

images('a truncated manifest and an unknown format version are clear errors', async () => {
  const imagesDir = path.join(idir, '.neon', 'pageserver', 'images', 'main');
  const newest = path.join(imagesDir, fs.readdirSync(imagesDir).sort().at(-1)!);
  const original = fs.readFileSync(newest);
  try {
    fs.writeFileSync(newest, original.subarray(0, original.length >> 1));
    const truncated = await neon(['pg', 'create', '-n', 'x', '--at', 'after-update', '--read-only'], { cwd: idir });
    assert.match(truncated.stderr, /image manifest .* is damaged or truncated/);
    const manifest = await decodeManifest('x', original);
    const { checksum: _, ...rest } = manifest;
    fs.writeFileSync(newest, relabelVersion(await encodeManifest(rest), 3));
    const future = await neon(['pg', 'create', '-n', 'x', '--at', 'after-update', '--read-only'], { cwd: idir });
    assert.match(future.stderr, /has format version 3; this neon reads versions 1 and 2 \(upgrade neon\)/);
  } finally {
    fs.writeFileSync(newest, original);
  }
});

images('images written by a neon of manifest format version 1 still restore, verify and gc', async () => {
  const imagesDir = path.join(idir, '.neon', 'pageserver', 'images', 'main');
  for (const file of fs.readdirSync(imagesDir)) {
    const { checksum: _, ...manifest } = await decodeManifest(file, fs.readFileSync(path.join(imagesDir, file)));
    fs.writeFileSync(path.join(imagesDir, file), encodeManifestV1(manifest));
  }
  // Without the plain copies, a compute is restored from the chunks the version-1 manifests name.
  fs.rmSync(path.join(idir, '.neon', 'pageserver', 'cache'), { recursive: true, force: true });
  for (const [name, snapshot, changed] of [['v1-before', 'before-update', 0], ['v1-after', 'after-update', 1200]] as const) {
    const pg = await neonJson(['pg', 'create', '-n', name, '--at', snapshot, '--read-only'], { cwd: idir });
    const rows = await query(pg.connection_string, 'select count(*)::int as n, count(*) filter (where payload like $$%!$$)::int as changed from big');
    assert.equal(rows[0], { n: 120000, changed }, `${snapshot} from version-1 manifests`);
    await neonJson(['pg', 'destroy', '-n', name], { cwd: idir });
  }
  const report = await neonJson(['verify'], { cwd: idir });
  assert.is(report.ok, true, JSON.stringify(report.problems));
  assert.ok(report.checked.chunks > 1000, `verify read the version-1 manifests' chunks (${report.checked.chunks})`);
});

images('gc keeps what snapshots need and frees what they no longer need', async () => {
  await neonJson(['snapshot', 'delete', 'before-update'], { cwd: idir });
  const gc = await neonJson(['gc', '--keep-wal-days', '0'], { cwd: idir });
  assert.ok(gc.images_removed.length >= 1, 'images no snapshot needs are gone');
  const report = await neonJson(['verify'], { cwd: idir });
  assert.is(report.ok, true, JSON.stringify(report.problems));
  const after = await neonJson(['pg', 'create', '-n', 'after', '--at', 'after-update', '--read-only'], { cwd: idir });
  assert.is((await query(after.connection_string, 'select count(*)::int as n from big where payload like $$%!$$'))[0].n, 1200);
});

const storage = suite('recovery from storage_dest alone');
let sdir = '';
storage.after(() => cleanup(sdir));

storage('every row committed before the last offload survives losing the machine', async () => {
  sdir = tmpDir();
  const store = path.join(sdir, 'store');
  const project = path.join(sdir, 'project');
  fs.mkdirSync(project);
  await neonJson(['init', `--storage_dest=${store}`], { cwd: project });
  const url = (await neonJson(['start'], { cwd: project })).connection_string;
  await query(url, 'create table kept (id int primary key)');
  for (let i = 0; i < 20; i++) await query(url, `insert into kept select g from generate_series(${i * 1000 + 1}, ${(i + 1) * 1000}) g`);
  const [{ lsn }] = await query(url, 'select pg_current_wal_flush_lsn()::text as lsn');
  await waitFor('the offload of the WAL up to the last commit', async () => {
    const status = await neonJson(['status'], { cwd: project });
    const partial = status.offload?.last_partial?.flush_lsn;
    return partial && lsnValue(partial) >= lsnValue(lsn);
  });
  // The machine is lost: every process killed, the repository gone. Only the storage remains.
  await cleanup(path.join(project, '.neon'));
  assert.not.ok(fs.existsSync(path.join(project, '.neon')));
  const back = await neonJson(['start', `--storage_dest=${store}`], { cwd: project });
  const [{ n }] = await query<{ n: number }>(back.connection_string, 'select count(*)::int as n from kept');
  assert.is(n, 20_000);
  await query(back.connection_string, 'insert into kept values (-1)');
  assert.is((await neon(['stop'], { cwd: project })).code, 0);
});

storage('a storage holding another database system is refused, never overwritten', async () => {
  const other = path.join(sdir, 'other');
  fs.mkdirSync(other);
  const otherStore = path.join(sdir, 'other-store');
  await neonJson(['init', `--storage_dest=${otherStore}`], { cwd: other });
  const project = path.join(sdir, 'project');
  const store = path.join(sdir, 'store');
  const theirs = fs.readFileSync(path.join(otherStore, 'repository.json'));
  const ours = fs.readFileSync(path.join(store, 'repository.json'));
  fs.writeFileSync(path.join(store, 'repository.json'), theirs);
  await neonJson(['start'], { cwd: project });
  await neonJson(['snapshot', 'create', 'after-swap'], { cwd: project });
  const status = await waitFor('the push to fail', async () => {
    const now = await neonJson(['status'], { cwd: project });
    return now.sync?.error ? now : undefined;
  });
  assert.match(status.sync.error, /holds the history of database system \d+, not \d+: use another storage_dest/);
  assert.ok(fs.readFileSync(path.join(store, 'repository.json')).equals(theirs), 'their repository.json is left as it was');
  fs.writeFileSync(path.join(store, 'repository.json'), ours);
  assert.is((await neon(['stop'], { cwd: project })).code, 0);
});

function lsnValue(text: string): bigint {
  const [hi, lo] = text.split('/');
  return (BigInt('0x' + hi) << 32n) + BigInt('0x' + lo);
}

history.run();
images.run();
storage.run();
