// The plain image cache on the file system the tests run on: leftovers of interrupted writes, copies (a clone
// where the file system clones, an in-kernel copy otherwise), taking an older copy by rename, and the budget.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ImageCache } from '../../pageserver/image-cache.js';
import { clonesIn, copyTree } from '../../pageserver/clone.js';
import { ChunkStore } from '../../chunkstore/index.js';
import type { ImageManifest } from '../../pageserver/manifest.js';

const test = suite('image cache');
let dir = '';
test.before.each(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'neon-cache-'));
});
test.after.each(() => fs.rmSync(dir, { recursive: true, force: true }));

/** An image of a few files (one of 3 MiB, so that copies use more than one system call), written into the cache. */
async function put(cache: ImageCache, lsn: number, fill: number, branch = 'main'): Promise<{ key: string; manifest: ImageManifest }> {
  const key = `images/${branch}/${lsn.toString(16).toUpperCase().padStart(16, '0')}.json.gz`;
  const files = [
    { path: 'base', type: 'dir' as const, mode: 0o700, size: 0 },
    { path: 'base/1', type: 'dir' as const, mode: 0o700, size: 0 },
    { path: 'base/1/1259', type: 'file' as const, mode: 0o600, size: 3 * 1024 * 1024 },
    { path: 'PG_VERSION', type: 'file' as const, mode: 0o640, size: 3 },
    { path: 'empty', type: 'file' as const, mode: 0o600, size: 0 },
  ];
  const writer = cache.writer();
  writer.addDir('base', 0o700);
  writer.addDir('base/1', 0o700);
  writer.beginFile('base/1/1259', 0o600);
  writer.write(Buffer.alloc(3 * 1024 * 1024, fill));
  writer.endFile();
  writer.beginFile('PG_VERSION', 0o640);
  writer.write(Buffer.from('15\n'));
  writer.endFile();
  writer.beginFile('empty', 0o600);
  writer.endFile();
  await writer.commit(key);
  assert.ok(cache.has(key), 'usable as soon as it is written');
  await cache.settled(key);
  const folder = path.join(cache.dir, key.replace(/\//g, '_').replace(/\.json\.gz$/, ''));
  assert.ok(fs.existsSync(path.join(folder, '.complete')), 'marked complete once flushed');
  const manifest = { files, rawBytes: 3 * 1024 * 1024 + 3 } as unknown as ImageManifest;
  return { key, manifest };
}

const modeOf = (file: string) => fs.statSync(file).mode & 0o777;

test('leftovers of a cache write that was interrupted (incoming-*, or a copy not yet flushed) are removed when the cache is opened', async () => {
  const cacheDir = path.join(dir, 'cache');
  const cache = new ImageCache(cacheDir);
  const { key } = await put(cache, 0x1000000, 1);
  const interrupted = cache.writer(); // never committed nor abandoned: the process was killed
  interrupted.beginFile('big', 0o600);
  interrupted.write(Buffer.alloc(1024 * 1024, 7));
  interrupted.endFile();
  assert.equal(fs.readdirSync(cacheDir).filter((name) => name.startsWith('incoming-')).length, 1, 'the interrupted write left its folder');
  // Killed after the copy was moved into place, before it was flushed and marked complete.
  const unflushed = path.join(cacheDir, 'images_main_00000000FFFFFFFF');
  fs.mkdirSync(unflushed);
  fs.writeFileSync(path.join(unflushed, 'PG_VERSION'), '15\n');
  const reopened = new ImageCache(cacheDir);
  assert.not.ok(fs.existsSync(unflushed), 'a copy never marked complete is removed');
  assert.equal(
    fs.readdirSync(cacheDir).filter((name) => name.startsWith('incoming-')),
    [],
    'no incoming-* folder after the cache is opened again',
  );
  assert.ok(reopened.has(key), 'the committed copy stays');
  await interrupted.abandon(); // the killed process's writer thread would be gone with it
});

test('a copy whose folder is removed while it is flushed is not used (restores then read the chunks)', async () => {
  const warnings: string[] = [];
  const cache = new ImageCache(path.join(dir, 'cache'), { warn: (message) => warnings.push(message) });
  const key = 'images/main/0000000001000000.json.gz';
  const writer = cache.writer();
  writer.beginFile('base/1/1259', 0o600);
  writer.write(Buffer.alloc(8 * 1024 * 1024, 3));
  writer.endFile();
  await writer.commit(key);
  fs.rmSync(path.join(cache.dir, 'images_main_0000000001000000'), { recursive: true, force: true });
  assert.not.ok(cache.has(key), 'gone from the cache at once, not only once its flush has failed');
  await cache.settled(key);
  assert.not.ok(cache.has(key));
});

test('restore clones or copies every file with the manifest’s modes, and the copy stays in the cache', async () => {
  const cache = new ImageCache(path.join(dir, 'cache'));
  const { key, manifest } = await put(cache, 0x1000000, 9);
  const data = path.join(dir, 'pgdata');
  const bytes = await cache.restore(key, manifest, data);
  assert.is(bytes, manifest.rawBytes);
  assert.ok(fs.readFileSync(path.join(data, 'base/1/1259')).equals(Buffer.alloc(3 * 1024 * 1024, 9)), 'the relation file is the same');
  assert.is(fs.readFileSync(path.join(data, 'PG_VERSION'), 'utf8'), '15\n');
  assert.is(fs.statSync(path.join(data, 'empty')).size, 0);
  assert.is(modeOf(path.join(data, 'PG_VERSION')), 0o640);
  assert.is(modeOf(data), 0o700);
  // Writing into the restored copy must never change the cache (a clone is copy-on-write, a copy is separate).
  fs.writeFileSync(path.join(data, 'base/1/1259'), Buffer.alloc(8192, 0xee), { flag: 'r+' });
  const again = path.join(dir, 'pgdata2');
  await cache.restore(key, manifest, again);
  assert.is(fs.readFileSync(path.join(again, 'base/1/1259'))[0], 9, 'the cached copy is unchanged after the first one was written');
  assert.is(typeof clonesIn(dir), 'boolean');
});

test('copyTree copies folders, files and symlinks with their modes (the clone or the fallback of this file system)', async () => {
  const source = path.join(dir, 'src');
  fs.mkdirSync(path.join(source, 'a/b'), { recursive: true, mode: 0o750 });
  fs.chmodSync(path.join(source, 'a'), 0o750);
  fs.writeFileSync(path.join(source, 'a/b/file'), Buffer.alloc(5 * 1024 * 1024 + 17, 3), { mode: 0o604 });
  fs.symlinkSync('a/b/file', path.join(source, 'link'));
  const target = path.join(dir, 'dst');
  const bytes = await copyTree(source, target);
  assert.is(bytes, 5 * 1024 * 1024 + 17);
  assert.ok(fs.readFileSync(path.join(target, 'a/b/file')).equals(Buffer.alloc(5 * 1024 * 1024 + 17, 3)));
  assert.is(modeOf(path.join(target, 'a/b/file')), 0o604);
  assert.is(modeOf(path.join(target, 'a')), 0o750);
  assert.is(fs.readlinkSync(path.join(target, 'link')), 'a/b/file');
});

test('a copy taken for a checkout is renamed into place (or cloned where that is free); the newest is written again', async () => {
  const warnings: string[] = [];
  const cache = new ImageCache(path.join(dir, 'cache'), { olderBudgetBytes: 10 * 1024 * 1024, warn: (m) => warnings.push(m) });
  const store = await ChunkStore.open(path.join(dir, 'chunks'));
  try {
    const older = await put(cache, 0x1000000, 1);
    const newest = await put(cache, 0x2000000, 2);
    assert.ok(cache.has(older.key), 'the older copy is kept (within the budget)');
    const data = path.join(dir, 'pgdata');
    await cache.restore(older.key, older.manifest, data, undefined, { take: store });
    assert.ok(fs.readFileSync(path.join(data, 'base/1/1259')).equals(Buffer.alloc(3 * 1024 * 1024, 1)));
    assert.is(modeOf(path.join(data, 'PG_VERSION')), 0o640);
    assert.not.ok(fs.existsSync(path.join(data, '.complete')), 'no cache marker in the data directory');
    assert.is(cache.has(older.key), cache.clones, 'renamed away where copies cost data, kept where they are clones');
    await cache.refilled();
    assert.is(cache.has(older.key), cache.clones, 'an older copy taken is not written again');
    // The newest copy of a branch (incrementals and new computes start from it) is written again from the chunks
    // once taken. These test manifests name no chunks: that refill fails, and leaves nothing behind.
    const data2 = path.join(dir, 'pgdata2');
    await cache.restore(newest.key, newest.manifest, data2, undefined, { take: store });
    assert.ok(fs.readFileSync(path.join(data2, 'base/1/1259')).equals(Buffer.alloc(3 * 1024 * 1024, 2)));
    await cache.refilled();
    if (!cache.clones) {
      assert.not.ok(cache.has(newest.key), 'no copy of the newest image while its refill cannot read the chunks');
      assert.match(warnings.join('\n'), /could not be written again/);
      assert.equal(fs.readdirSync(cache.dir).filter((name) => name.startsWith('incoming-')), [], 'the failed refill left no folder');
    } else assert.ok(cache.has(newest.key), 'cloned: the newest copy stays');

    // Closing the cache (the daemon stops) stops a refill at once and leaves nothing of it.
    const third = await put(cache, 0x3000000, 3);
    warnings.length = 0;
    await cache.restore(third.key, third.manifest, path.join(dir, 'pgdata3'), undefined, { take: store });
    await cache.close();
    // (This store holds no chunks: a refill that had run would have failed, and said so.)
    assert.equal(warnings, [], 'the refill was stopped, not run');
    assert.equal(fs.readdirSync(cache.dir).filter((name) => name.startsWith('incoming-')), []);
  } finally {
    await store.close();
  }
});

test('older copies beyond the budget go, the oldest first; the newest of each branch always stays', async () => {
  const cache = new ImageCache(path.join(dir, 'cache'), { olderBudgetBytes: 4 * 1024 * 1024 });
  const first = await put(cache, 0x1000000, 1);
  const second = await put(cache, 0x2000000, 2);
  const third = await put(cache, 0x3000000, 3);
  const other = await put(cache, 0x1000000, 4, 'feature');
  assert.not.ok(cache.has(first.key), 'the oldest older copy went (two do not fit in 4 MiB)');
  assert.ok(cache.has(second.key), 'the newer older copy fits');
  assert.ok(cache.has(third.key) && cache.has(other.key), 'the newest of each branch stays');
  const none = new ImageCache(path.join(dir, 'cache0'), { olderBudgetBytes: 0 });
  const a = await put(none, 0x1000000, 1);
  const b = await put(none, 0x2000000, 2);
  assert.not.ok(none.has(a.key), 'budget 0: only the newest');
  assert.ok(none.has(b.key));
});

test.run();
