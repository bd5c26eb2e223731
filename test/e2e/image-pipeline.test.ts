// The image pipeline: hashing workers, zstd records in pack format 2, format 1 (deflate) packs still read, and
// all-zero pages that are never stored yet restore byte for byte (a real Postgres cluster with hash-index holes).
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { deflateRawSync } from 'node:zlib';
import pg from 'pg';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ChunkList } from '../../chunkstore/chunk-list.js';
import { ZERO_PAGE_HASH } from '../../chunkstore/codec.js';
import { encodeIndex, FLAG_DEFLATE, FLAG_ZSTD, PACK_HEADER, RECORD_HEADER, writeRecordHeader, type PackEntries } from '../../chunkstore/format.js';
import { ChunkStore } from '../../chunkstore/index.js';
import { ChunkPipeline } from '../../chunkstore/pipeline.js';
import { ChunkWorkers } from '../../chunkstore/workers.js';
import type { ImageManifest } from '../../pageserver/manifest.js';
import { restoreImage } from '../../pageserver/restore.js';
import { EMPTY_DIRS, SKIP_FILES, takeOfflineImage } from '../../pageserver/take-image.js';
import { pgUserFor } from '../../postgres/user.js';
import { testCluster } from '../../testkit/cluster.js';
import { cleanup, tmpDir } from '../../testkit/env.js';

const PAGE = 8192;
const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** A page of text rows like a heap page: compresses well, unique per `n`. */
function textPage(n: number): Buffer {
  const page = Buffer.alloc(PAGE);
  page.writeUInt32BE(n, 0);
  for (let at = 64, row = 0; at + 100 < PAGE; at += 100, row++) page.write(`${n * 61 + row}|${(n * 7919 + row) % 1000}|row ${row} of page ${n}`, at);
  return page;
}

/** Every pack file of a store, by id. */
function packBytes(store: ChunkStore): Map<string, Buffer> {
  return new Map(store.packs().map((id) => [id, fs.readFileSync(store.packFile(id))]));
}

const dirs: string[] = [];
const pipeline = suite('image pipeline: workers, zstd, old packs, zero pages');
pipeline.after(async () => {
  for (const dir of dirs.splice(0)) await cleanup(dir);
});
const newDir = () => {
  const dir = tmpDir('neon-pipeline-');
  dirs.push(dir);
  return dir;
};

pipeline('the worker pipeline gives the single-thread path’s hashes and byte-identical packs', async () => {
  const dir = newDir();
  const pages: Buffer[] = [];
  for (let i = 0; i < 900; i++) {
    if (i % 9 === 0) pages.push(Buffer.alloc(PAGE)); // zero pages
    else if (i % 13 === 0) pages.push(randomBytes(PAGE)); // incompressible: stored raw
    else if (i % 17 === 0) pages.push(textPage(i - 1)); // a duplicate of an earlier page
    else pages.push(textPage(i));
  }
  pages.push(textPage(5000).subarray(0, 1234), Buffer.alloc(100)); // short tails (a short zero run is a normal chunk)
  const single = await ChunkStore.open(path.join(dir, 'single'), { packSize: 64 * 1024 });
  const expected = pages.map((page) => single.add(page).hash);
  await single.flush();

  const workers = new ChunkWorkers(2);
  assert.ok(workers.threaded, 'the worker entry is found (from sources)');
  const threaded = await ChunkStore.open(path.join(dir, 'threaded'), { packSize: 64 * 1024 });
  // Small batches and a small in-flight limit: many batches, answered by two workers out of order.
  const pipe = new ChunkPipeline(threaded, { batchBytes: 5 * PAGE + 100, maxInFlight: 3, workers });
  const list = new ChunkList();
  for (const page of pages) {
    pipe.add(page, list, list.push());
    if (pipe.busy) await pipe.drain();
  }
  await pipe.finish();
  await threaded.flush();
  await workers.close();
  const hashes = [...list];

  assert.equal(hashes, pages.map(sha), 'every hash is the sha256 of its page');
  assert.equal(hashes, expected, 'the same hashes as ChunkStore.add');
  const a = packBytes(single);
  const b = packBytes(threaded);
  assert.ok(a.size > 3, `several packs (${a.size})`);
  assert.equal([...b.keys()], [...a.keys()], 'the same pack ids in the same order');
  for (const [id, bytes] of a) assert.ok(b.get(id)!.equals(bytes), `pack ${id} is byte-identical`);
  for (const [i, hash] of hashes.entries()) assert.ok((await threaded.read(hash)).equals(pages[i]), `page ${i} reads back`);
  assert.ok(threaded.locate(sha(textPage(1)))?.compressed, 'text pages are compressed (zstd)');
  assert.equal(await threaded.verify(), { missing: [], corrupt: [] });
  await single.close();
  await threaded.close();
});

pipeline('zero pages are never stored, yet read back as zeros and verify clean, after a reopen too', async () => {
  const dir = newDir();
  const store = await ChunkStore.open(path.join(dir, 'store'));
  const zero = Buffer.alloc(PAGE);
  assert.is(ZERO_PAGE_HASH, sha(zero), 'the zero page is named by its true sha256');
  assert.equal(store.add(zero), { hash: ZERO_PAGE_HASH, size: PAGE });
  store.add(textPage(1));
  await store.flush();
  assert.is(store.stats().chunks, 1, 'only the text page is stored');
  assert.is(store.stats().rawBytes, PAGE);
  await store.close();
  const again = await ChunkStore.open(path.join(dir, 'store'));
  assert.ok(again.has(ZERO_PAGE_HASH));
  const read = await again.read(ZERO_PAGE_HASH);
  assert.ok(read.equals(zero), 'reads as 8192 zero bytes');
  read[0] = 1; // a caller writing into what it read does not change the next read
  assert.ok((await again.read(ZERO_PAGE_HASH)).equals(zero));
  assert.equal(await again.verify([ZERO_PAGE_HASH, sha(textPage(1))]), { missing: [], corrupt: [] });
  await again.close();
});

/** A pack and index as neon wrote them before zstd: format version 1, deflate records. */
function formatOnePack(pages: Buffer[]): { id: string; pack: Buffer; index: Buffer } {
  const parts: Buffer[] = [Buffer.from('NEONPACK'), Buffer.alloc(4)];
  parts[1].writeUInt32BE(1);
  const entries: PackEntries = { count: 0, hashes: [], offsets: new Uint32Array(pages.length), stored: new Uint32Array(pages.length), raw: new Uint32Array(pages.length), flags: new Uint8Array(pages.length) };
  let at = PACK_HEADER;
  for (const page of pages) {
    const body = deflateRawSync(page, { level: 1 });
    const header = Buffer.alloc(RECORD_HEADER);
    writeRecordHeader(header, 0, Buffer.from(sha(page), 'hex'), page.length, body.length, FLAG_DEFLATE);
    parts.push(header, body);
    const i = entries.count++;
    entries.hashes.push(sha(page));
    entries.offsets[i] = at;
    entries.stored[i] = body.length;
    entries.raw[i] = page.length;
    entries.flags[i] = FLAG_DEFLATE;
    at += RECORD_HEADER + body.length;
  }
  const pack = Buffer.concat(parts);
  const id = sha(pack);
  const index = encodeIndex(entries, id, pack.length);
  index.writeUInt32BE(1, 8); // version 1, and its checksum again
  createHash('sha256').update(index.subarray(0, index.length - 32)).digest().copy(index, index.length - 32);
  return { id, pack, index };
}

pipeline('a format 1 pack of deflate records still reads, with its index and rebuilt without it', async () => {
  const dir = newDir();
  const pages = Array.from({ length: 20 }, (_, i) => textPage(100 + i));
  const { id, pack, index } = formatOnePack(pages);
  const packs = path.join(dir, 'store', 'packs');
  fs.mkdirSync(packs, { recursive: true });
  fs.writeFileSync(path.join(packs, `${id}.pack`), pack);
  fs.writeFileSync(path.join(packs, `${id}.idx`), index);
  for (const withIndex of [true, false]) {
    if (!withIndex) fs.rmSync(path.join(packs, `${id}.idx`));
    const store = await ChunkStore.open(path.join(dir, 'store'));
    for (const page of pages) assert.ok((await store.read(sha(page))).equals(page), `an old page reads (index ${withIndex})`);
    assert.equal(await store.verify(), { missing: [], corrupt: [] });
    // New chunks beside the old pack go into a format 2 pack of zstd records.
    store.add(textPage(1));
    const [fresh] = await store.flush();
    const bytes = fs.readFileSync(store.packFile(fresh));
    assert.is(bytes.readUInt32BE(8), 2, 'new packs are format 2');
    assert.is(bytes[PACK_HEADER + 40], FLAG_ZSTD, 'with zstd records');
    await store.close();
    fs.rmSync(store.packFile(fresh));
    fs.rmSync(store.indexFile(fresh));
  }
});

pipeline('a pack of a newer format is refused with one line naming the file and what to do', async () => {
  const dir = newDir();
  const store = await ChunkStore.open(path.join(dir, 'store'));
  store.add(textPage(1));
  const [id] = await store.flush();
  await store.close();
  const pack = fs.readFileSync(store.packFile(id));
  pack.writeUInt32BE(3, 8);
  fs.writeFileSync(store.packFile(id), pack);
  fs.rmSync(store.indexFile(id)); // so that open must read the pack itself
  const error = await ChunkStore.open(path.join(dir, 'store')).then(
    () => undefined,
    (e: Error & { code?: string }) => e,
  );
  assert.is(error?.code, 'bad_format');
  assert.match(error!.message, `${id}.pack is a pack of format version 3, but this neon reads versions 1 and 2: it was written by a newer neon (upgrade)`);
  assert.not.match(error!.message, /\n/);
});

pipeline.run();

const pgUser = pgUserFor();
const zeros = suite('zero pages of a real cluster round-trip through an image');
let clusterDir = '';
zeros.after(async () => {
  if (clusterDir) await cleanup(clusterDir);
});

/** Every regular file under `root` (relative path → sha256), skipping what an image leaves out. */
function tree(root: string, skip: (rel: string) => boolean): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string) => {
    for (const entry of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const child = rel ? path.join(rel, entry.name) : entry.name;
      if (skip(child)) continue;
      if (entry.isDirectory()) walk(child);
      else if (entry.isFile()) out.set(child, sha(fs.readFileSync(path.join(root, child))));
    }
  };
  walk('');
  return out;
}

zeros('an offline image of a cluster with zero pages restores an identical data directory, storing no zero page', async () => {
  clusterDir = tmpDir('neon-zero-pages-');
  const cluster = await testCluster(clusterDir, pgUser);
  if (!cluster) return console.log('  (embedded Postgres not installed: skipped)');
  const { data, socket, port } = cluster;
  await cluster.start();
  // A hash index allocates its buckets in groups by writing the group's last page: the pages before it are
  // holes that read as zeros. Rows make it split into a few such groups.
  const sql = [
    'create table t (id int, body text)',
    'create index t_hash on t using hash (id)',
    "insert into t select g, 'row ' || g from generate_series(1, 200000) g",
    'checkpoint',
  ];
  const client = new pg.Client({ host: socket, port, user: 'postgres', database: 'postgres' });
  await client.connect();
  try {
    for (const statement of sql) await client.query(statement);
  } finally {
    await client.end();
  }
  await cluster.stop();

  const store = await ChunkStore.open(path.join(clusterDir, 'store'));
  const image = await takeOfflineImage({ store, dataDir: data, branch: 'main', pgVersion: 17 });
  const chunks = image.files.flatMap((file) => [...(file.chunks ?? [])]);
  const zeroChunks = chunks.filter((hash) => hash === ZERO_PAGE_HASH).length;
  assert.ok(zeroChunks > 100, `the image has zero pages (${zeroChunks} of ${chunks.length})`);
  assert.not.ok(chunks.includes('0'.repeat(64)), 'every chunk list is complete');
  assert.ok(store.stats().chunks <= new Set(chunks).size - 1, 'no zero page is stored');

  const restored = path.join(clusterDir, 'restored');
  await restoreImage(store, { ...image, checksum: '' } as ImageManifest, restored);
  // What an image leaves out by design (runtime files, folders Postgres refills); pg_wal is compared below.
  const leftOut = (rel: string) => EMPTY_DIRS.has(rel.split('/')[0]) || SKIP_FILES.has(rel);
  const before = tree(data, leftOut);
  const after = tree(restored, leftOut);
  assert.ok(before.size > 100, 'a whole data directory');
  assert.equal([...after.keys()].sort(), [...before.keys()].sort(), 'the same files');
  for (const [rel, hash] of before) assert.is(after.get(rel), hash, `${rel} is identical`);
  // The WAL segment of the checkpoint is in the image too, mostly zeros past the checkpoint.
  for (const rel of image.files.filter((f) => f.path.startsWith('pg_wal/') && f.type === 'file').map((f) => f.path)) {
    assert.is(sha(fs.readFileSync(path.join(restored, rel))), sha(fs.readFileSync(path.join(data, rel))), `${rel} is identical`);
  }
  assert.equal(await store.verify(chunks), { missing: [], corrupt: [] }, 'verify is clean');
  await store.close();
});

zeros.run();
