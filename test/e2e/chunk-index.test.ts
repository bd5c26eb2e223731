// The chunk index on disk (chunkstore/midx.ts, table.ts, open.ts): chunks stay findable through merges of the
// in-memory tail into the index file, across reopens, gc and damage to the index file or the pack indexes, and
// after a SIGKILL in the middle of writing it.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ChunkStore } from '../../chunkstore/index.js';
import { alive, cleanup, neon, neonJson, ROOT, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { waitFor } from '../../testkit/wait.js';

const PAGE = 8192;
const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');
/** A page unique for `n`: 1 KiB that does not compress (about 30 fill a 64 KiB pack), then text. */
const page = (n: number) => {
  const data = Buffer.alloc(PAGE, `row ${n} `);
  for (let k = 0; k < 32; k++) createHash('sha256').update(`${n}/${k}`).digest().copy(data, k * 32);
  return data;
};
const MIDX = 'chunks.midx';

const test = suite('chunk index on disk', { dir: '', stores: [] as ChunkStore[] });
// A tail of 100 chunks: thousands of pages go through dozens of merges into the index file.
const saved = process.env.NEON_INDEX_TAIL;
test.before(() => {
  process.env.NEON_INDEX_TAIL = '100';
});
test.after(() => {
  if (saved === undefined) delete process.env.NEON_INDEX_TAIL;
  else process.env.NEON_INDEX_TAIL = saved;
});
test.before.each((ctx) => {
  ctx.dir = tmpDir('neon-chunk-index-');
  ctx.stores = [];
});
test.after.each(async (ctx) => {
  for (const store of ctx.stores) await store.close().catch(() => {});
  await cleanup(ctx.dir);
});

async function open(ctx: { dir: string; stores: ChunkStore[] }): Promise<ChunkStore> {
  const store = await ChunkStore.open(path.join(ctx.dir, 'store'), { packSize: 64 * 1024 });
  ctx.stores.push(store);
  return store;
}

/** Add pages `from`..`to`-1, keeping memory bounded as a real image does. */
async function fill(store: ChunkStore, from: number, to: number): Promise<string[]> {
  const hashes: string[] = [];
  for (let n = from; n < to; n++) {
    hashes.push(store.add(page(n)).hash);
    await store.drain();
  }
  await store.flush();
  return hashes;
}

test('thousands of chunks in dozens of packs: all found through merges and after a reopen, none invented', async (ctx) => {
  const store = await open(ctx);
  const hashes = await fill(store, 0, 3000);
  const stats = store.stats();
  assert.is(stats.chunks, 3000);
  assert.ok(stats.packs > 20, `many packs (${stats.packs})`);
  assert.ok(hashes.every((hash) => store.has(hash)), 'every chunk is found');
  assert.not.ok(store.has(sha(randomBytes(16))), 'a chunk never stored is not found');
  assert.ok((await store.read(hashes[1234])).equals(page(1234)));
  await store.close();
  assert.ok(fs.existsSync(path.join(ctx.dir, 'store', MIDX)), 'the index file is written');

  const again = await open(ctx);
  assert.equal(again.stats(), stats, 'a reopen sees the same totals');
  assert.ok(hashes.every((hash) => again.has(hash)));
  for (const n of [0, 999, 2999]) assert.ok((await again.read(hashes[n])).equals(page(n)));
  assert.equal(again.add(page(42)), { hash: hashes[42], size: PAGE }, 'a stored page is deduplicated');
  assert.is(again.stats().chunks, 3000);
  assert.equal(await again.verify(), { missing: [], corrupt: [] });
});

test('a damaged or missing index file is rebuilt from the pack indexes', async (ctx) => {
  const store = await open(ctx);
  const hashes = await fill(store, 0, 800);
  await store.close();
  const file = path.join(ctx.dir, 'store', MIDX);
  const bytes = fs.readFileSync(file);
  bytes[Math.floor(bytes.length / 2)] ^= 0xff;
  fs.writeFileSync(file, bytes);
  const repaired = await open(ctx);
  assert.ok(hashes.every((hash) => repaired.has(hash)), 'every chunk is found after a damaged index file');
  assert.ok((await repaired.read(hashes[400])).equals(page(400)));
  assert.not.ok(fs.readFileSync(file).equals(bytes), 'the damaged file was replaced');
  await repaired.close();

  fs.rmSync(file);
  fs.writeFileSync(path.join(ctx.dir, 'store', `.${MIDX}.tmp-0123456789ab`), 'half an index');
  const rebuilt = await open(ctx);
  assert.ok(hashes.every((hash) => rebuilt.has(hash)), 'every chunk is found after the index file was removed');
  assert.is(rebuilt.stats().chunks, 800);
  assert.equal(await rebuilt.verify(), { missing: [], corrupt: [] });
  assert.equal(
    fs.readdirSync(path.join(ctx.dir, 'store')).sort(),
    [MIDX, 'packs'],
    'the temp file of an interrupted write is gone',
  );
});

test('the pack indexes win over the index file: a pack gone behind its back is missing, a damaged .idx repaired', async (ctx) => {
  const store = await open(ctx);
  const hashes = await fill(store, 0, 600);
  const [victim, damaged] = store.packs();
  const inVictim = hashes.filter((hash) => store.locate(hash)?.pack === victim);
  const idx = fs.readFileSync(store.indexFile(damaged));
  await store.close();
  fs.rmSync(store.indexFile(victim));
  fs.rmSync(store.packFile(victim));
  fs.truncateSync(store.indexFile(damaged), idx.length - 5);

  const again = await open(ctx);
  assert.ok(inVictim.length > 0);
  assert.ok(inVictim.every((hash) => !again.has(hash)), 'chunks of the removed pack are not found');
  assert.ok(fs.readFileSync(again.indexFile(damaged)).equals(idx), 'the damaged pack index was rebuilt identical');
  const result = await again.verify(hashes);
  assert.equal(result.missing.sort(), [...inVictim].sort(), 'verify names exactly the chunks of the removed pack');
  assert.equal(result.corrupt, []);
  assert.is(again.stats().chunks, 600 - inVictim.length);
});

test('gc removes dead packs from the index file too; a reopen agrees', async (ctx) => {
  const store = await open(ctx);
  const dead = await fill(store, 0, 500);
  const live = await fill(store, 500, 1000);
  const result = await store.gc(new Set(live));
  assert.ok(result.removedPacks > 0, 'dead packs are removed');
  assert.ok(dead.every((hash) => !store.has(hash)), 'dead chunks are gone');
  assert.ok(live.every((hash) => store.has(hash)), 'live chunks stay');
  const stats = store.stats();
  assert.is(stats.chunks, 500);
  await store.close();
  const again = await open(ctx);
  assert.equal(again.stats(), stats);
  assert.ok(dead.every((hash) => !again.has(hash)) && live.every((hash) => again.has(hash)));
  assert.ok((await again.read(live[7])).equals(page(507)));
  assert.equal(await again.verify(), { missing: [], corrupt: [] });
});

test('SIGKILL while packs and index files are being written: the reopened store has every flushed chunk, verify is clean', async (ctx) => {
  const script = path.join(ctx.dir, 'writer.mjs');
  fs.writeFileSync(
    script,
    `
    import { ChunkStore } from ${JSON.stringify(pathToFileURL(path.join(ROOT, 'chunkstore/index.ts')).href)};
    const store = await ChunkStore.open(process.argv[2], { packSize: 16 * 1024 });
    for (let n = 0; ; n++) {
      const data = Buffer.alloc(8192, 'row ' + n + ' ');
      data.writeUInt32BE(n, 0);
      const { hash } = store.add(data);
      await store.drain();
      if (n % 50 === 49) { await store.flush(); process.stdout.write(hash + '\\n'); }
    }
  `,
  );
  const root = path.join(ctx.dir, 'store');
  const env = { ...process.env, NEON_INDEX_TAIL: '30' };
  const child = spawn(process.execPath, ['--import', 'tsx', script, root], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk) => (stdout += chunk));
  child.stderr!.on('data', (chunk) => (stderr += chunk));
  const deadline = Date.now() + 120_000;
  // Kill once the index file has been replaced a few times and is being written again.
  while (stdout.split('\n').length < 40 || !fs.readdirSync(root).some((name) => name.startsWith(`.${MIDX}.tmp-`))) {
    if (child.exitCode !== null) assert.unreachable(`the writer exited (${child.exitCode}): ${stderr}`);
    if (Date.now() > deadline) assert.unreachable(`the writer made no progress: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
  const flushed = stdout.split('\n').filter((line) => /^[0-9a-f]{64}$/.test(line));

  const store = await open(ctx);
  assert.ok(flushed.every((hash) => store.has(hash)), 'every chunk flushed before the kill is found');
  assert.ok(store.stats().chunks >= flushed.length * 50);
  assert.equal(await store.verify(), { missing: [], corrupt: [] });
  assert.not.ok(
    fs.readdirSync(root).some((name) => name.startsWith(`.${MIDX}.tmp-`)),
    'the half-written index file is removed',
  );
});

test.run();

const daemon = suite('chunk index: SIGKILL of the daemon while an image is taken');
let repo = '';
daemon.before(() => {
  repo = tmpDir();
  // No background images: the test takes the one it kills.
  const quiet = { pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 } };
  fs.writeFileSync(path.join(repo, 'neon.config.json'), JSON.stringify(quiet));
});
daemon.after(() => cleanup(repo));

daemon('the restarted daemon repairs the index, neon verify is clean, the data is there', async () => {
  // A tail of 200 chunks: the index file is rewritten at each pack sealed while the image is taken.
  const env = { NEON_INDEX_TAIL: '200' };
  const started = await neonJson(['start'], { cwd: repo, env });
  const url = started.connection_string as string;
  await waitFor('the first base image', async () => (await neonJson(['image', 'list'], { cwd: repo })).length > 0, 180_000);
  // Hex digests compress only about 2:1 (zstd): ~60 MB of pages fill more than one 16 MiB pack, and a pack sealed
  // mid-image is what rewrites the index file before the image ends.
  await query(
    url,
    'create table big (id int primary key, body text); insert into big select g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) || md5((g * 17)::text) from generate_series(1, 400000) g',
  );
  const [expected] = await query(url, 'select count(*)::int as n, md5(string_agg(body, \',\' order by id)) as sum from big');
  const pid = (await neonJson(['status'], { cwd: repo })).daemon.pid as number;
  const store = path.join(repo, '.neon', 'pageserver', 'chunks');
  const midx = path.join(store, MIDX);
  const mtime = () => (fs.existsSync(midx) ? fs.statSync(midx).mtimeMs : 0);
  const before = mtime();
  const image = neon(['image', 'create'], { cwd: repo, env });
  // Kill while the image is being taken: once the index file has been replaced at least once by this image.
  await waitFor('the image to write the index', () => mtime() !== before || undefined, 180_000);
  process.kill(pid, 'SIGKILL');
  assert.is.not((await image).code, 0, 'the kill cut the image short');
  await waitFor('the daemon to die', () => !alive(pid) || undefined, 60_000);

  await neonJson(['start'], { cwd: repo, env });
  const verify = await neon(['verify', '--json'], { cwd: repo });
  assert.is(verify.code, 0, verify.stderr);
  const report = JSON.parse(verify.stdout);
  assert.equal(report.problems, [], 'neon verify is clean');
  assert.ok(report.ok);
  const main = (await neonJson(['pg', 'show', '-n', 'main'], { cwd: repo })).connection_string as string;
  const [now] = await query(main, 'select count(*)::int as n, md5(string_agg(body, \',\' order by id)) as sum from big');
  assert.equal(now, expected, 'every row is there');
  const taken = await neonJson(['image', 'create'], { cwd: repo });
  assert.ok(taken, 'a new image can be taken after the restart');
  const after = await neon(['verify', '--json'], { cwd: repo });
  assert.equal(JSON.parse(after.stdout).problems, [], 'and verify stays clean');
});

daemon.run();
