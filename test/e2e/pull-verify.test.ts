// A pulled pack must not poison the chunk store: a pack that hashes to its own name (so the whole-pack check
// passes) but holds a chunk whose bytes are not the ones its hash names is refused, and nothing of it is used.
// The check runs on the hashing workers (chunkstore/workers.ts); real files, a real folder storage.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { packChunk } from '../../chunkstore/codec.js';
import { encodeIndex, FLAG_ZSTD, PACK_HEADER, RECORD_HEADER, scanPack, writeRecordHeader } from '../../chunkstore/format.js';
import { ChunkStore } from '../../chunkstore/index.js';
import { pullPacks, pushPacks } from '../../chunkstore/sync.js';
import { chunkWorkers } from '../../chunkstore/workers.js';
import { NeonError } from '../../core/errors.js';
import { FileStorage } from '../../plugins/storage-file/index.js';
import { cleanup, tmpDir } from '../../testkit/env.js';

const PAGE = 8192;
const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');
const dir = tmpDir('neon-pull-verify-');
const stores: ChunkStore[] = [];

/** A compressible page unique to `n` (text rows over zeros). */
function textPage(n: number): Buffer {
  const page = Buffer.alloc(PAGE);
  page.write(`${n}|`.repeat(700), 64);
  return page;
}

async function open(name: string): Promise<ChunkStore> {
  const store = await ChunkStore.open(path.join(dir, name), { packSize: 64 * 1024 });
  stores.push(store);
  return store;
}

/**
 * Rewrite pack `bytes` so that record `victim` keeps its hash but stores `body` (flags `flags`): a pack a
 * malicious pusher could publish, consistent with its own name and index. Returns the new pack and its id.
 */
function forge(bytes: Buffer, victim: number, body: Buffer, flags: number): { pack: Buffer; id: string } {
  const entries = scanPack(bytes, 'the original');
  const parts = [bytes.subarray(0, PACK_HEADER)];
  for (let i = 0; i < entries.count; i++) {
    const at = entries.offsets[i];
    if (i !== victim) {
      parts.push(bytes.subarray(at, at + RECORD_HEADER + entries.stored[i]));
      continue;
    }
    const header = Buffer.alloc(RECORD_HEADER);
    writeRecordHeader(header, 0, Buffer.from(entries.hashes[i], 'hex'), entries.raw[i], body.length, flags);
    parts.push(header, body);
  }
  const pack = Buffer.concat(parts);
  return { pack, id: sha(pack) };
}

/** Publish a forged pack in place of pack `original` in the folder storage at `root`. */
function publish(root: string, original: string, pack: Buffer, id: string): void {
  const chunks = path.join(root, 'chunks');
  fs.rmSync(path.join(chunks, `${original}.pack`));
  fs.rmSync(path.join(chunks, `${original}.idx`));
  fs.writeFileSync(path.join(chunks, `${id}.pack`), pack);
  fs.writeFileSync(path.join(chunks, `${id}.idx`), encodeIndex(scanPack(pack, 'forged'), id, pack.length));
}

test.after(async () => {
  for (const store of stores) await store.close().catch(() => {});
  await chunkWorkers().close();
  await cleanup(dir);
});

test('a pulled pack holding a chunk whose bytes do not match its hash is refused, and nothing of it is used', async () => {
  assert.ok(chunkWorkers().threaded, 'the check runs on the hashing workers');
  const root = path.join(dir, 'remote');
  const storage = new FileStorage(root, pathToFileURL(root).href);
  const source = await open('source');
  const pages = Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? randomBytes(PAGE) : textPage(i)));
  const hashes = pages.map((page) => source.add(page).hash);
  await pushPacks(source, storage);
  const ids = source.packs();
  assert.ok(ids.length >= 3, `several packs (${ids.length})`);
  const packOf = (hash: string) => source.locate(hash)!.pack!;

  // 1. A compressed chunk whose stored bytes are another page's (they decompress fine, to the wrong bytes).
  const first = fs.readFileSync(source.packFile(ids[0]));
  const entries = scanPack(first, 'first');
  const victim = Array.from({ length: entries.count }, (_, i) => i).find((i) => entries.flags[i] === FLAG_ZSTD)!;
  assert.ok(victim !== undefined, 'the first pack holds a compressed chunk');
  const swapped = forge(first, victim, packChunk(textPage(999)).stored, FLAG_ZSTD);
  publish(root, ids[0], swapped.pack, swapped.id);
  // 2. A chunk stored raw with one byte changed.
  const second = fs.readFileSync(source.packFile(ids[1]));
  const rawEntries = scanPack(second, 'second');
  const rawVictim = Array.from({ length: rawEntries.count }, (_, i) => i).find((i) => rawEntries.flags[i] === 0)!;
  assert.ok(rawVictim !== undefined, 'the second pack holds a raw chunk');
  const at = rawEntries.offsets[rawVictim] + RECORD_HEADER + 100;
  const body = Buffer.from(second.subarray(at - 100, at - 100 + rawEntries.stored[rawVictim]));
  body[100] ^= 0xff;
  const flipped = forge(second, rawVictim, body, 0);
  publish(root, ids[1], flipped.pack, flipped.id);

  const target = await open('target');
  for (const [id, bad, forged] of [
    [ids[0], entries.hashes[victim], swapped.id],
    [ids[1], rawEntries.hashes[rawVictim], flipped.id],
  ]) {
    // Ask for a good chunk of the forged pack: the pack is still refused whole.
    const good = hashes.find((hash) => packOf(hash) === id && hash !== bad)!;
    const error = await pullPacks(target, storage, [good]).then(
      () => undefined,
      (e: unknown) => e as NeonError,
    );
    assert.instance(error, NeonError, 'the pull fails');
    assert.is(error!.code, 'corrupt');
    assert.match(error!.message, `chunks/${forged}.pack`);
    assert.match(error!.message, `chunk ${bad}`);
    assert.match(error!.message, /nothing of it was installed/);
    for (const hash of hashes.filter((h) => packOf(h) === id)) assert.is(target.has(hash), false, `nothing of ${forged} is held`);
    const read = await target.read(bad).then(
      () => undefined,
      (e: unknown) => e as NeonError,
    );
    assert.is(read?.code, 'chunk_missing', 'the chunk is not readable');
  }
  assert.equal(target.packs(), []);
  assert.equal(fs.readdirSync(path.join(target.dir, 'packs')), []);

  // An intact pack still pulls, and its chunks read back as they were.
  const fine = hashes.filter((hash) => packOf(hash) === ids[2]);
  assert.equal((await pullPacks(target, storage, fine)).downloaded, [ids[2]]);
  for (const hash of fine) assert.ok((await target.read(hash)).equals(pages[hashes.indexOf(hash)]));
  assert.equal(await target.verify(), { missing: [], corrupt: [] });
});

test.run();
