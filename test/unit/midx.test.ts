// The multi-pack index file (chunkstore/midx.ts): what is written is found, nothing else is, and damage is
// noticed at load (the store then rebuilds it from the pack indexes).
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { NeonError } from '../../core/errors.js';
import { MIDX_ENTRY, MidxFile, MidxWriter, writeEntry, type MidxEntry, type MidxPack } from '../../chunkstore/midx.js';
import { byHash } from '../../chunkstore/table.js';
import { cleanup, tmpDir } from '../../testkit/env.js';

const hashOf = (n: number) => createHash('sha256').update(`chunk ${n}`).digest('hex');
const packs: MidxPack[] = [0, 1, 2].map((k) => ({ id: hashOf(1e6 + k), length: 1000 + k, count: 7, trailer: Buffer.alloc(32, k) }));

/** Write `n` entries (sorted by hash, spread over 3 packs) to `file`; returns them. */
async function write(file: string, n: number): Promise<MidxEntry[]> {
  const entries = Array.from({ length: n }, (_, i) => ({
    hash: hashOf(i),
    pack: i % 3,
    entry: i,
    offset: 12 + i * 100,
    stored: 50 + (i % 17),
    raw: 8192,
    flags: i % 3,
  })).sort((a, b) => (a.hash < b.hash ? -1 : 1));
  const writer = await MidxWriter.create(file, packs, 16);
  const buf = Buffer.alloc(MIDX_ENTRY);
  for (const entry of entries) {
    writeEntry(buf, 0, entry);
    await writer.add(buf, 0);
  }
  await writer.finish();
  return entries;
}

test('entries written are found with every field, others are not; pack list and count load back', async () => {
  const dir = tmpDir('neon-midx-');
  try {
    const file = path.join(dir, 'chunks.midx');
    const entries = await write(file, 40_000);
    const seen: MidxEntry[] = [];
    const midx = (await MidxFile.load(file, (entry) => seen.push(entry)))!;
    try {
      assert.is(midx.count, 40_000);
      assert.equal(midx.packs, packs);
      assert.equal(seen, entries, 'load walks every entry in hash order');
      for (const i of [0, 1, 12_345, 39_999]) assert.equal(midx.find(entries[i].hash), entries[i]);
      for (let i = 40_000; i < 40_200; i++) assert.is(midx.find(hashOf(i)), undefined, `chunk ${i} was never written`);
      let streamed = 0;
      for await (const { n } of midx.blocks()) streamed += n;
      assert.is(streamed, 40_000);
    } finally {
      midx.close();
    }
    assert.is(await MidxFile.load(path.join(dir, 'none.midx'), () => {}), undefined, 'a missing file is no index');
  } finally {
    await cleanup(dir);
  }
});

test('a flipped byte anywhere, or a truncated file, is corrupt at load', async () => {
  const dir = tmpDir('neon-midx-');
  try {
    const file = path.join(dir, 'chunks.midx');
    await write(file, 500);
    const good = fs.readFileSync(file);
    for (const at of [3, 20, good.length / 2, good.length - 1040, good.length - 1]) {
      const bad = Buffer.from(good);
      bad[Math.floor(at)] ^= 1;
      fs.writeFileSync(file, bad);
      const error = await MidxFile.load(file, () => {}).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.instance(error, NeonError, `byte ${at}`);
      assert.is((error as NeonError).code, 'corrupt');
    }
    fs.writeFileSync(file, good.subarray(0, good.length - 100));
    const error = await MidxFile.load(file, () => {}).catch((e: NeonError) => e);
    assert.is((error as NeonError).code, 'corrupt');
  } finally {
    await cleanup(dir);
  }
});

test('a merge orders the in-memory tail by hash, hashes alike in their first 32 bits included', () => {
  const tail: [string, number][] = Array.from({ length: 5000 }, (_, i) => [hashOf(i), i]);
  // Hashes that share their first 8 hex digits with another (sorted by the typed-array key alone they would tie).
  for (const [i, prefix] of [[5000, 'ffffffff'], [5001, 'ffffffff'], [5002, '00000000'], [5003, 'ffffffff'], [5004, '00000000']] as const) {
    tail.push([prefix + hashOf(i).slice(8), i]);
  }
  tail.push(['ffffffff' + '0'.repeat(56), 5005]);
  const expected = [...tail].sort((a, b) => (a[0] < b[0] ? -1 : 1));
  assert.equal(byHash([...tail].reverse()), expected);
});

test.run();
