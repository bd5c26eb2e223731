import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ChunkStore } from '../../chunkstore/index.js';
import { pushPacks } from '../../chunkstore/sync.js';
import { NeonError } from '../../core/errors.js';
import { FileStorage } from '../../plugins/storage-file/index.js';
import { cleanup, tmpDir } from '../../testkit/env.js';

/*
 * pushPacks with a chunk list (what `neon snapshot push` passes: the chunks of the snapshot's image), against a
 * folder storage: only the packs holding those chunks travel, and a pack damaged on the local disk is refused as
 * it streams, leaving nothing in storage.
 */

const PAGE = 8192;
const ctx = { dir: '', store: undefined as unknown as ChunkStore, storage: undefined as unknown as FileStorage, root: '' };
const test = suite('pushPacks of one snapshot', ctx);

test.before.each(async (c) => {
  c.dir = tmpDir('neon-push-packs-');
  c.store = await ChunkStore.open(path.join(c.dir, 'store'), { packSize: 64 * 1024 });
  c.root = path.join(c.dir, 'remote');
  c.storage = new FileStorage(c.root, pathToFileURL(c.root).href);
});

test.after.each(async (c) => {
  await c.store.close();
  await cleanup(c.dir);
});

const remotePacks = (root: string) =>
  fs.existsSync(path.join(root, 'chunks'))
    ? fs
        .readdirSync(path.join(root, 'chunks'))
        .filter((f) => f.endsWith('.pack'))
        .sort()
    : [];

test('only the packs holding the given chunks are sent; the rest go when asked for', async ({ store, storage, root }) => {
  const older = Array.from({ length: 12 }, () => store.add(randomBytes(PAGE)).hash);
  await store.flush();
  const olderPacks = store.packs();
  const newer = Array.from({ length: 12 }, () => store.add(randomBytes(PAGE)).hash);
  await store.flush();
  const newerPacks = store.packs().filter((id) => !olderPacks.includes(id));
  assert.ok(newerPacks.length >= 2, 'the newer chunks are in packs of their own');

  let planned = -1;
  const first = await pushPacks(store, storage, { chunks: older, onPlan: (bytes) => (planned = bytes) });
  assert.equal(remotePacks(root), olderPacks.map((id) => `${id}.pack`).sort(), 'no pack of the newer chunks was sent');
  assert.is(first.bytes, planned, 'the plan announced the bytes the push moved');

  const second = await pushPacks(store, storage, { chunks: [...older, ...newer] });
  assert.equal(second.uploaded.sort(), newerPacks.sort(), 'the second push sends just the newer packs');
  assert.equal(
    remotePacks(root),
    store
      .packs()
      .map((id) => `${id}.pack`)
      .sort(),
  );
});

test('a chunk the store lacks is chunk_missing, before anything is sent', async ({ store, storage, root }) => {
  store.add(randomBytes(PAGE));
  const error = await pushPacks(store, storage, { chunks: ['0'.repeat(64)] }).catch((e: unknown) => e);
  assert.instance(error, NeonError);
  assert.is((error as NeonError).code, 'chunk_missing');
  assert.equal(remotePacks(root), []);
});

test('a pack damaged on the local disk is refused as it streams and never published', async ({ store, storage, root }) => {
  const hashes = Array.from({ length: 4 }, () => store.add(randomBytes(PAGE)).hash);
  await store.flush();
  const [id] = store.packs();
  const file = store.packFile(id);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.from([0xff, 0x00, 0xff]), 0, 3, 4000);
  fs.closeSync(fd);
  const error = await pushPacks(store, storage, { chunks: hashes }).catch((e: unknown) => e);
  assert.instance(error, NeonError);
  assert.is((error as NeonError).code, 'corrupt');
  assert.match((error as NeonError).message, /does not hash to its name\); it was not uploaded/);
  assert.equal(remotePacks(root), [], 'no pack object in storage');
  assert.equal(fs.existsSync(path.join(root, 'chunks')) ? fs.readdirSync(path.join(root, 'chunks')) : [], [], 'no temp file left');
});

test.run();
