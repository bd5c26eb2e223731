// Compact chunk lists and sets (chunkstore/chunk-list.ts): what goes in comes out, as bytes and as hex, and a
// set answers membership exactly (every member found, no other hash), whatever the order and repeats.
import { createHash } from 'node:crypto';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ChunkList, ChunkSet, ZERO_PAGE_HASH_RAW } from '../../chunkstore/chunk-list.js';
import { ZERO_PAGE_HASH } from '../../chunkstore/codec.js';

const hashOf = (n: number) => createHash('sha256').update(`chunk ${n}`).digest('hex');

test('a list grows by push, is set from raw bytes or hex, and reads back in order', () => {
  const list = new ChunkList();
  const hashes = Array.from({ length: 100 }, (_, i) => hashOf(i));
  for (const hash of hashes) list.setHex(list.push(), hash);
  list.setRaw(list.push(), ZERO_PAGE_HASH_RAW);
  list.trim();
  assert.is(list.length, 101);
  assert.equal([...list], [...hashes, ZERO_PAGE_HASH]);
  assert.is(list.hexAt(42), hashes[42]);
  assert.ok(list.rawAt(42).equals(Buffer.from(hashes[42], 'hex')));
  assert.is(list.raw.length, 101 * 32);
  assert.equal(JSON.parse(JSON.stringify({ chunks: list })).chunks, [...hashes, ZERO_PAGE_HASH], 'JSON is the hex array');
  assert.throws(() => list.hexAt(101), /chunk 101 of a list of 101/);
  assert.throws(() => list.setHex(0, 'not hex'), /not a sha256/);
});

test('resized keeps the first entries, adds zero ones, and does not share bytes', () => {
  const list = ChunkList.fromHex([hashOf(1), hashOf(2), hashOf(3)]);
  const shorter = list.resized(2);
  const longer = list.resized(5);
  assert.equal([...shorter], [hashOf(1), hashOf(2)]);
  assert.equal([...longer].slice(0, 3), [hashOf(1), hashOf(2), hashOf(3)]);
  assert.is(longer.hexAt(4), '0'.repeat(64));
  longer.setHex(0, hashOf(9));
  assert.is(list.hexAt(0), hashOf(1), 'the original is unchanged');
  assert.ok(list.sameAt(1, shorter) && !list.sameAt(0, longer) && !list.sameAt(2, shorter));
});

test('a set of many lists: distinct members, all found, nothing else, iterated in order', () => {
  const hashes = Array.from({ length: 5000 }, (_, i) => hashOf(i));
  // Overlapping lists with repeats, and one hash many times (as the zero page is), so some buckets are big.
  const a = ChunkList.fromHex([...hashes.slice(0, 3000), ...Array(500).fill(hashes[7])]);
  const b = ChunkList.fromHex([...hashes.slice(2000).reverse(), ...hashes.slice(0, 10)]);
  const set = ChunkSet.of([a, undefined, b, new ChunkList()]);
  assert.is(set.size, 5000);
  for (const hash of hashes) assert.ok(set.has(hash), hash);
  for (let i = 5000; i < 6000; i++) assert.not.ok(set.has(hashOf(i)));
  assert.not.ok(set.has('xyz'), 'not hex');
  assert.not.ok(set.has(hashes[0] + '00'), 'too long');
  const listed = [...set];
  assert.equal(listed, [...hashes].sort(), 'sorted and distinct');
  assert.ok(set.hasRaw(Buffer.concat([Buffer.alloc(3), Buffer.from(hashes[9], 'hex')]), 3));
});

test('union merges two sets without duplicates; the empty set is neutral', () => {
  const left = ChunkSet.of([ChunkList.fromHex(Array.from({ length: 300 }, (_, i) => hashOf(i)))]);
  const right = ChunkSet.of([ChunkList.fromHex(Array.from({ length: 300 }, (_, i) => hashOf(i + 200)))]);
  const both = left.union(right);
  assert.is(both.size, 500);
  assert.equal([...both], Array.from({ length: 500 }, (_, i) => hashOf(i)).sort());
  assert.ok(both.has(hashOf(0)) && both.has(hashOf(499)) && !both.has(hashOf(500)));
  assert.is(ChunkSet.empty().union(left).size, 300);
  assert.is(left.union(ChunkSet.empty()).size, 300);
  assert.not.ok(ChunkSet.empty().has(hashOf(1)));
});

test.run();
