import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ChunkStore, type ChunkStoreOptions } from '../../chunkstore/index.js';
import { pullPacks, pushPacks } from '../../chunkstore/sync.js';
import { NeonError } from '../../core/errors.js';
import { tempNameFor } from '../../core/fs-atomic.js';
import type { Storage } from '../../core/storage.js';
import { FileStorage } from '../../plugins/storage-file/index.js';
import { cleanup, ROOT, tmpDir } from '../../testkit/env.js';

const PAGE = 8192;
const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/**
 * A page like pgbench_accounts: header, line pointers, free space (zeros), then tuples of a 24-byte header
 * (xmin, ctid…) and aid|bid|abalance|filler. `n` makes it unique.
 */
function textPage(n: number): Buffer {
  const page = Buffer.alloc(PAGE);
  page.writeUInt32BE(n, 0);
  let end = PAGE;
  let pointer = 24;
  for (let row = 0; end - 130 > pointer + 4 + 400; row++) {
    const aid = n * 61 + row;
    const body = Buffer.from(`${aid}|${1 + (aid % 10)}|${((aid * 7919) % 100000) - 50000}|${' '.repeat(84)}`);
    const tuple = Buffer.alloc(24 + body.length);
    tuple.writeUInt32LE(1000 + ((aid * 2654435761) >>> 12), 0); // xmin: transactions scatter
    tuple.writeUInt32LE(n, 10);
    tuple.writeUInt16LE(row + 1, 14);
    tuple.writeUInt16LE(0x0902, 20);
    body.copy(tuple, 24);
    end -= tuple.length;
    tuple.copy(page, end);
    page.writeUInt16BE(end, pointer);
    page.writeUInt16BE(tuple.length, pointer + 2);
    pointer += 4;
  }
  return page;
}

/** Every error a promise rejects with must be a NeonError; returns it. */
async function rejection(promise: Promise<unknown>): Promise<NeonError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.instance(error, NeonError, `expected a NeonError, got ${String(error)}`);
  return error as NeonError;
}

function flipByte(file: string, at: number): void {
  const fd = fs.openSync(file, 'r+');
  const byte = Buffer.alloc(1);
  fs.readSync(fd, byte, 0, 1, at);
  byte[0] ^= 0xff;
  fs.writeSync(fd, byte, 0, 1, at);
  fs.closeSync(fd);
}

/** A suite whose tests get a fresh folder; stores opened through `open` are closed afterwards. */
function storeSuite(name: string) {
  const test = suite(name, {
    dir: '',
    stores: [] as ChunkStore[],
    open: undefined as unknown as (sub?: string, options?: ChunkStoreOptions) => Promise<ChunkStore>,
  });
  test.before.each((ctx) => {
    ctx.dir = tmpDir('neon-chunkstore-');
    ctx.stores = [];
    ctx.open = async (sub = 'store', options) => {
      const store = await ChunkStore.open(path.join(ctx.dir, sub), options);
      ctx.stores.push(store);
      return store;
    };
  });
  test.after.each(async (ctx) => {
    for (const store of ctx.stores) await store.close().catch(() => {});
    await cleanup(ctx.dir);
  });
  return test;
}

const basics = storeSuite('chunkstore add/read');

basics('pages round-trip, deduplicate, compress when it helps, and survive a reopen', async ({ open, dir }) => {
  const store = await open();
  const random = randomBytes(PAGE);
  const zeros = Buffer.alloc(PAGE);
  const text = textPage(1);
  const pages = [random, zeros, text, textPage(2)];
  const refs = pages.map((page) => store.add(page));
  assert.equal(refs[0], { hash: sha(random), size: PAGE });
  for (const [i, page] of pages.entries()) assert.ok((await store.read(refs[i].hash)).equals(page), `page ${i} reads back before flush`);

  assert.equal(store.add(Buffer.from(text)), refs[2], 'the same page again gives the same ref');
  // The zero page is never stored (every store holds it implicitly, see codec.ts).
  assert.equal(store.stats(), { chunks: 3, packs: 0, storedBytes: store.stats().storedBytes, rawBytes: 3 * PAGE });
  assert.is(store.locate(refs[1].hash), undefined, 'zeros are not stored');
  assert.ok(store.locate(refs[2].hash)!.storedLength < PAGE / 4, 'text compresses');
  assert.equal([store.locate(refs[0].hash)?.compressed, store.locate(refs[0].hash)?.storedLength], [false, PAGE], 'random stays raw');

  const ids = await store.flush();
  assert.is(ids.length, 1);
  assert.equal(store.packs(), ids);
  assert.is(sha(fs.readFileSync(store.packFile(ids[0]))), ids[0], 'a pack is named by the sha256 of its bytes');
  assert.ok(fs.existsSync(store.indexFile(ids[0])));
  assert.equal(await store.flush(), [], 'nothing new to seal');
  const stats = store.stats();
  assert.equal([stats.chunks, stats.packs, stats.rawBytes], [3, 1, 3 * PAGE]);
  assert.ok(stats.storedBytes < PAGE + 3000, `stored ${stats.storedBytes}`);
  for (const [i, page] of pages.entries()) assert.ok((await store.read(refs[i].hash)).equals(page));
  await store.close();
  assert.is((await rejection(store.read(refs[0].hash))).code, 'closed');

  const again = await open();
  assert.equal(again.stats(), stats);
  assert.equal(again.packs(), ids);
  for (const [i, page] of pages.entries()) assert.ok((await again.read(refs[i].hash)).equals(page), `page ${i} after reopen`);
  again.add(zeros);
  assert.equal(await again.flush(), [], 'a known page is not stored again after a reopen');
  assert.equal(fs.readdirSync(path.join(dir, 'store/packs')).sort(), [`${ids[0]}.idx`, `${ids[0]}.pack`]);

  const missing = await rejection(again.read(sha(Buffer.from('never stored'))));
  assert.is(missing.code, 'chunk_missing');
  assert.is((await rejection(ChunkStore.open(path.join(dir, 'x'), { packSize: 10 }))).code, 'bad_option');
});

basics('small packs: ~1 MiB of pages makes several packs no larger than packSize, sealed as they fill', async ({ open }) => {
  const packSize = 64 * 1024;
  const store = await open('store', { packSize });
  const pages = Array.from({ length: 128 }, (_, i) => (i % 2 ? randomBytes(PAGE) : textPage(i)));
  for (const page of pages) {
    store.add(page);
    await store.drain();
  }
  assert.ok(store.packs().length >= 5, `packs were written before flush (${store.packs().length})`);
  await store.flush();
  const sizes = store.packs().map((id) => fs.statSync(store.packFile(id)).size);
  assert.ok(sizes.length >= 8 && sizes.length <= 20, `${sizes.length} packs for 128 pages`);
  for (const size of sizes) assert.ok(size <= packSize, `a pack of ${size} bytes`);
  for (const page of pages) assert.ok((await store.read(sha(page))).equals(page));
});

basics('incremental: re-adding 1280 pages with 13 changed stores only the 13', async ({ open }) => {
  const store = await open();
  const pages = Array.from({ length: 1280 }, (_, i) => textPage(i));
  for (const page of pages) store.add(page);
  await store.flush();
  const before = store.stats();
  assert.is(before.chunks, 1280);

  const changed = new Set<number>();
  while (changed.size < 13) changed.add(Math.floor(Math.random() * pages.length));
  for (const i of changed) pages[i].write('999999|', PAGE - 200); // an UPDATE rewrites a tuple
  for (const page of pages) store.add(page);
  const ids = await store.flush();
  const after = store.stats();
  assert.is(after.chunks - before.chunks, 13);
  assert.is(ids.length, 1);
  const changedBytes = 13 * PAGE;
  assert.ok(after.storedBytes - before.storedBytes < 2 * changedBytes, `stored grew by ${after.storedBytes - before.storedBytes}`);
  assert.ok(fs.statSync(store.packFile(ids[0])).size < 2 * changedBytes, 'the new pack is tiny');
  for (const i of changed) assert.ok((await store.read(sha(pages[i]))).equals(pages[i]));
});

const damage = storeSuite('chunkstore corruption');

damage('a flipped byte is corrupt for that chunk only; a removed pack makes its chunks missing', async ({ open }) => {
  const store = await open('store', { packSize: 8 * 1024 });
  const pages = Array.from({ length: 40 }, (_, i) => textPage(i));
  for (const page of pages) store.add(page);
  await store.flush();
  assert.ok(store.packs().length >= 3);
  const target = sha(pages[5]);
  const where = store.locate(target)!;
  flipByte(store.packFile(where.pack!), where.offset + 10);

  const error = await rejection(store.read(target));
  assert.is(error.code, 'corrupt');
  assert.match(error.message, store.packFile(where.pack!));
  assert.match(error.message, target);
  for (const [i, page] of pages.entries()) if (i !== 5) assert.ok((await store.read(sha(page))).equals(page), `page ${i}`);
  assert.equal(await store.verify(), { missing: [], corrupt: [{ hash: target, pack: where.pack! }] });
  assert.equal(await store.verify([target, sha(pages[0])]), { missing: [], corrupt: [{ hash: target, pack: where.pack! }] });

  const gone = store.packs().find((id) => id !== where.pack)!;
  const goneHashes = pages.map(sha).filter((hash) => store.locate(hash)?.pack === gone);
  assert.ok(goneHashes.length > 0);
  await store.read(goneHashes[0]); // its descriptor is now cached: verify must still see the file is gone
  fs.rmSync(store.packFile(gone));
  const report = await store.verify();
  assert.equal(report.missing.sort(), [...goneHashes].sort());
  assert.equal(report.corrupt, [{ hash: target, pack: where.pack! }]);
  assert.is((await rejection(store.read(goneHashes[0]))).code, 'chunk_missing');

  // After a reopen the orphaned index is ignored: its chunks are unknown, so a caller stores them again.
  const reopened = await open();
  assert.is(reopened.has(goneHashes[0]), false);
  assert.is((await rejection(reopened.read(goneHashes[0]))).code, 'chunk_missing');
  assert.equal((await reopened.verify(goneHashes)).missing.sort(), [...goneHashes].sort());
  assert.is((await rejection(reopened.read(target))).code, 'corrupt');
});

damage('readMany reads runs of adjacent records at once: the same bytes as read(), and a flipped byte names its chunk', async ({ open }) => {
  const store = await open('store', { packSize: 16 * 1024 });
  const pages = Array.from({ length: 60 }, (_, i) => textPage(i));
  for (const page of pages) store.add(page);
  await store.flush();
  assert.ok(store.packs().length >= 3, 'the pages span several packs');
  store.add(textPage(1000)); // still in memory, not in a pack file
  const zero = sha(Buffer.alloc(PAGE));
  // In order, across packs, with a repeat, a zero page and the chunk still in memory between them.
  const wanted = [...pages.map(sha), sha(pages[3]), zero, sha(textPage(1000)), ...pages.slice(10, 20).map(sha)];
  const got = await store.readMany(wanted);
  assert.is(got.length, wanted.length);
  for (const [i, hash] of wanted.entries()) assert.ok(got[i].equals(await store.read(hash)), `chunk ${i}`);

  const target = sha(pages[25]);
  const where = store.locate(target)!;
  flipByte(store.packFile(where.pack!), where.offset + 10);
  const error = await rejection(store.readMany(pages.map(sha)));
  assert.is(error.code, 'corrupt');
  assert.match(error.message, target);
  assert.match(error.message, store.packFile(where.pack!));
});

damage('a truncated index is rebuilt from its pack; a truncated pack is a clear error', async ({ open, dir }) => {
  const store = await open('store', { packSize: 8 * 1024 });
  const pages = Array.from({ length: 20 }, (_, i) => textPage(i));
  for (const page of pages) store.add(page);
  const [first, second] = await store.flush();
  await store.close();
  const index = fs.readFileSync(store.indexFile(first));
  fs.truncateSync(store.indexFile(first), index.length - 7);

  const reopened = await open();
  for (const page of pages) assert.ok((await reopened.read(sha(page))).equals(page));
  assert.ok(fs.readFileSync(store.indexFile(first)).equals(index), 'the rebuilt index is written back, identical');
  await reopened.close();

  // A pack cut short: its intact index no longer matches its length, and the rebuild refuses the damaged pack.
  const packLength = fs.statSync(store.packFile(second)).size;
  fs.truncateSync(store.packFile(second), packLength - 100);
  const error = await rejection(ChunkStore.open(path.join(dir, 'store')));
  assert.is(error.code, 'corrupt');
  assert.match(error.message, store.packFile(second));
  assert.match(error.message, /truncated/);
});

damage('files of another format version are bad_format, with a clear message', async ({ open, dir }) => {
  const store = await open();
  const page = textPage(1);
  store.add(page);
  const [id] = await store.flush();
  const pack = fs.readFileSync(store.packFile(id));
  pack.writeUInt32BE(3, 8);
  fs.writeFileSync(store.packFile(id), pack);
  const error = await rejection(store.read(sha(page)));
  assert.is(error.code, 'bad_format');
  assert.match(error.message, /format version 3, but this neon reads versions 1 and 2/);
  await store.close();

  const index = fs.readFileSync(store.indexFile(id));
  index.writeUInt32BE(7, 8);
  fs.writeFileSync(store.indexFile(id), index);
  const refused = await rejection(ChunkStore.open(path.join(dir, 'store')));
  assert.is(refused.code, 'bad_format');
  assert.match(refused.message, /\.idx is a pack index of format version 7/);
});

const crash = storeSuite('chunkstore crash safety');

crash('temp files and a pack without its index do not break open; the index is rebuilt', async ({ open }) => {
  const store = await open('store', { packSize: 8 * 1024 });
  const pages = Array.from({ length: 20 }, (_, i) => textPage(i));
  for (const page of pages) store.add(page);
  const ids = await store.flush();
  await store.close();
  const lost = ids[1];
  const index = fs.readFileSync(store.indexFile(lost));
  fs.rmSync(store.indexFile(lost));
  fs.writeFileSync(tempNameFor(store.packFile('a'.repeat(64))), 'half a pack');
  fs.writeFileSync(tempNameFor(store.indexFile(ids[0])), 'half an index');

  const reopened = await open();
  assert.equal(reopened.packs().sort(), [...ids].sort());
  for (const page of pages) assert.ok((await reopened.read(sha(page))).equals(page));
  assert.ok(fs.readFileSync(store.indexFile(lost)).equals(index), 'the index was rebuilt identical');
  assert.equal(await reopened.verify(), { missing: [], corrupt: [] });
});

crash('a writer killed mid-flight leaves a store that opens and verifies clean', async ({ dir }) => {
  const script = path.join(dir, 'writer.mjs');
  fs.writeFileSync(
    script,
    `
    import { randomBytes } from 'node:crypto';
    import { ChunkStore } from ${JSON.stringify(pathToFileURL(path.join(ROOT, 'chunkstore/index.ts')).href)};
    const store = await ChunkStore.open(process.argv[2], { packSize: 64 * 1024 });
    for (let round = 0; ; round++) {
      const hashes = [];
      for (let i = 0; i < 40; i++) hashes.push(store.add(randomBytes(8192)).hash);
      await store.flush();
      process.stdout.write(hashes.join('\\n') + '\\n');
    }
  `,
  );
  const root = path.join(dir, 'store');
  const child = spawn(process.execPath, ['--import', 'tsx', script, root], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk) => (stdout += chunk));
  child.stderr!.on('data', (chunk) => (stderr += chunk));
  const deadline = Date.now() + 30_000;
  while (stdout.split('\n').length < 200) {
    if (child.exitCode !== null) assert.unreachable(`the writer exited (${child.exitCode}): ${stderr}`);
    if (Date.now() > deadline) assert.unreachable(`the writer made no progress: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
  const durable = stdout.split('\n').filter((line) => /^[0-9a-f]{64}$/.test(line));

  const store = await ChunkStore.open(root);
  try {
    for (const hash of durable) assert.ok(store.has(hash), 'every chunk flushed before the kill is there');
    assert.equal(await store.verify(), { missing: [], corrupt: [] });
    for (const id of store.packs()) assert.ok(fs.existsSync(store.indexFile(id)));
  } finally {
    await store.close();
  }
});

const gc = storeSuite('chunkstore gc');

gc('drops dead packs, rewrites half-dead ones, keeps every live chunk', async ({ open }) => {
  // Random pages stay raw: 7 of them fill a 64 KiB pack, so packs are A, B, C, D of 7 pages each.
  const store = await open('store', { packSize: 64 * 1024 });
  const pages = Array.from({ length: 28 }, () => randomBytes(PAGE));
  const hashes = pages.map((page) => store.add(page).hash);
  const ids = await store.flush();
  assert.is(ids.length, 4);
  const of = (k: number) => hashes.slice(k * 7, k * 7 + 7);
  for (let k = 0; k < 4; k++) assert.ok(of(k).every((hash) => store.locate(hash)?.pack === ids[k]));
  const live = new Set([...of(1).slice(0, 2), ...of(2), ...of(3).slice(0, 5)]);
  const bytesBefore = ids.reduce((sum, id) => sum + fs.statSync(store.packFile(id)).size, 0);

  // Reads racing with gc still find every live chunk (in its old pack or its new one).
  const [result, racing] = await Promise.all([store.gc(live), Promise.all([...live].map((hash) => store.read(hash)))]);
  assert.ok(racing.every((data, k) => data.equals(pages[hashes.indexOf([...live][k])])));
  assert.is(result.removedPacks, 1);
  assert.is(result.rewrittenPacks, 1);
  assert.ok(result.freedBytes > 10 * PAGE, `freed ${result.freedBytes}`);
  assert.is(fs.existsSync(store.packFile(ids[0])), false);
  assert.is(fs.existsSync(store.packFile(ids[1])), false);
  assert.is(store.packs().length, 3);
  const bytesAfter = store.packs().reduce((sum, id) => sum + fs.statSync(store.packFile(id)).size, 0);
  assert.ok(bytesBefore - bytesAfter <= result.freedBytes);
  for (const hash of live) assert.ok((await store.read(hash)).equals(pages[hashes.indexOf(hash)]));
  for (const hash of [...of(0), ...of(1).slice(2)]) assert.is(store.has(hash), false, 'dead chunks of removed packs are gone');
  assert.ok(
    of(3)
      .slice(5)
      .every((hash) => store.has(hash)),
    'dead chunks of a mostly live pack stay until it qualifies',
  );

  const reopened = await open();
  assert.equal(reopened.stats(), store.stats());
  for (const hash of live) assert.ok((await reopened.read(hash)).equals(pages[hashes.indexOf(hash)]));
  assert.is(reopened.has(of(0)[0]), false);
  assert.equal(await reopened.verify(), { missing: [], corrupt: [] });
});

gc('a chunk deduplicated while gc runs keeps its pack', async ({ open }) => {
  const store = await open('store', { packSize: 64 * 1024 });
  const pages = Array.from({ length: 14 }, () => randomBytes(PAGE));
  const hashes = pages.map((page) => store.add(page).hash);
  const [a, b] = await store.flush();
  const running = store.gc(new Set(hashes.slice(7)));
  assert.equal(store.add(pages[3]).hash, hashes[3], 'found in pack A, which gc planned to drop');
  assert.equal(await running, { removedPacks: 0, rewrittenPacks: 0, freedBytes: 0 });
  assert.equal(store.packs(), [a, b]);
  assert.ok((await store.read(hashes[3])).equals(pages[3]));
  const later = await store.gc(new Set(hashes.slice(7)));
  assert.is(later.removedPacks, 1, 'the next gc drops it');
});

const sync = storeSuite('chunkstore sync');

/** A storage that records the keys it is asked to put, in order. */
function recording(storage: Storage): Storage & { puts: string[] } {
  const puts: string[] = [];
  return Object.assign(Object.create(storage) as Storage, {
    puts,
    put: (key: string, body: Buffer, options?: { ifAbsent?: boolean }) => {
      puts.push(key);
      return storage.put(key, body, options);
    },
  });
}

function storageKeys(root: string): string[] {
  const folder = path.join(root, 'chunks');
  return fs.existsSync(folder) ? fs.readdirSync(folder).sort() : [];
}

sync('push uploads only what storage lacks, pack before index', async ({ open, dir }) => {
  const root = path.join(dir, 'remote');
  const storage = recording(new FileStorage(root, pathToFileURL(root).href));
  const store = await open('store', { packSize: 64 * 1024 });
  for (let i = 0; i < 30; i++) store.add(randomBytes(PAGE));
  const first = await pushPacks(store, storage);
  assert.equal(first.uploaded, store.packs());
  assert.is(first.uploaded.length, 5);
  const expected = first.uploaded.flatMap((id) => [`${id}.idx`, `${id}.pack`]).sort();
  assert.equal(storageKeys(root), expected);
  const onDisk = first.uploaded.reduce((sum, id) => sum + fs.statSync(store.packFile(id)).size + fs.statSync(store.indexFile(id)).size, 0);
  assert.is(first.bytes, onDisk);
  for (const id of first.uploaded) assert.ok(storage.puts.indexOf(`chunks/${id}.pack`) < storage.puts.indexOf(`chunks/${id}.idx`));

  assert.equal(await pushPacks(store, storage), { uploaded: [], bytes: 0 });
  store.add(randomBytes(PAGE));
  store.add(randomBytes(PAGE));
  const third = await pushPacks(store, storage);
  assert.is(third.uploaded.length, 1);
  assert.equal(
    third.uploaded,
    store.packs().filter((id) => !first.uploaded.includes(id)),
  );

  // Two writers pushing identical packs at once: the loser of each conditional put counts it as done.
  const other = await open('other', { packSize: 64 * 1024 });
  const twin = await open('twin', { packSize: 64 * 1024 });
  const pages = Array.from({ length: 20 }, () => randomBytes(PAGE));
  for (const page of pages) {
    other.add(page);
    twin.add(page);
  }
  const [x, y] = await Promise.all([pushPacks(other, storage), pushPacks(twin, storage)]);
  assert.equal(other.packs(), twin.packs(), 'identical content makes identical packs');
  for (const id of other.packs()) assert.ok(x.uploaded.includes(id) || y.uploaded.includes(id));
  assert.equal(storageKeys(root).length, 2 * (first.uploaded.length + 1 + other.packs().length));
});

sync('pull fetches only the packs holding the wanted chunks, verified; a damaged pack is refused', async ({ open, dir }) => {
  const root = path.join(dir, 'remote');
  const storage = new FileStorage(root, pathToFileURL(root).href);
  const source = await open('source', { packSize: 64 * 1024 });
  const pages = Array.from({ length: 35 }, (_, i) => (i % 3 ? randomBytes(PAGE) : textPage(i)));
  const hashes = pages.map((page) => source.add(page).hash);
  await pushPacks(source, storage);
  const packOf = (hash: string) => source.locate(hash)!.pack!;
  const ids = source.packs();
  assert.ok(ids.length >= 4);
  const inFirst = hashes.filter((hash) => packOf(hash) === ids[0]);
  const inSecond = hashes.filter((hash) => packOf(hash) === ids[1]);
  const wanted = [inFirst[0], inFirst[1], inSecond[0]];

  const target = await open('target');
  const pulled = await pullPacks(target, storage, wanted);
  assert.equal(pulled.downloaded.sort(), [ids[0], ids[1]].sort());
  assert.equal(target.packs().sort(), [ids[0], ids[1]].sort());
  assert.ok(pulled.bytes >= fs.statSync(source.packFile(ids[0])).size + fs.statSync(source.packFile(ids[1])).size);
  for (const hash of [...inFirst, ...inSecond]) assert.ok((await target.read(hash)).equals(pages[hashes.indexOf(hash)]));
  assert.is(target.has(hashes.find((hash) => packOf(hash) === ids[2])!), false);
  assert.equal(await pullPacks(target, storage, wanted), { downloaded: [], bytes: 0 }, 'nothing lacking, nothing fetched');

  // The remote indexes read by the first pull are cached: the next pull downloads just the pack.
  const third = hashes.find((hash) => packOf(hash) === ids[2])!;
  const next = await pullPacks(target, storage, [third]);
  assert.equal(next, { downloaded: [ids[2]], bytes: fs.statSync(source.packFile(ids[2])).size });

  // A pack object damaged in storage is refused and nothing of it lands in the store.
  const victim = ids[3];
  flipByte(path.join(root, 'chunks', `${victim}.pack`), 5000);
  const fresh = await open('fresh');
  const error = await rejection(pullPacks(fresh, storage, [hashes.find((hash) => packOf(hash) === victim)!]));
  assert.is(error.code, 'corrupt');
  assert.match(error.message, `chunks/${victim}.pack`);
  assert.match(error.message, /nothing of it was installed/);
  assert.equal(fresh.packs(), []);
  assert.equal(fs.readdirSync(path.join(fresh.dir, 'packs')), []);

  const unknown = await rejection(pullPacks(fresh, storage, [sha(Buffer.from('nowhere'))]));
  assert.is(unknown.code, 'chunk_missing');
  assert.is((await rejection(pullPacks(fresh, storage, ['not-a-hash']))).code, 'bad_hash');
});

const parallel = storeSuite('chunkstore concurrent reads');

parallel('200 parallel reads across many packs all return the right bytes', async ({ open }) => {
  // Small packs: more packs than cached descriptors, so reads race with opening and evicting them.
  const store = await open('store', { packSize: 8 * 1024 });
  const pages = Array.from({ length: 200 }, (_, i) => (i % 4 === 0 ? randomBytes(PAGE) : textPage(i)));
  const hashes = pages.map((page) => store.add(page).hash);
  await store.flush();
  assert.ok(store.packs().length > 40, `${store.packs().length} packs`);
  const order = hashes.map((_, i) => i).sort(() => Math.random() - 0.5);
  const results = await Promise.all(order.map((i) => store.read(hashes[i])));
  for (const [k, i] of order.entries()) assert.ok(results[k].equals(pages[i]), `chunk ${i}`);
  const twice = await Promise.all([...hashes, ...hashes].map((hash) => store.read(hash)));
  assert.ok(twice.every((data, k) => data.equals(pages[k % 200])));
});

basics.run();
damage.run();
crash.run();
gc.run();
sync.run();
parallel.run();
