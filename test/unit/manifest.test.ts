// Image manifests (pageserver/manifest.ts): format version 2 (binary hashes) round-trips, version 1 (JSON, hex)
// still reads, and damage, truncation, a wrong checksum and a newer version are one clear error each.
import { createHash } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ChunkList } from '../../chunkstore/chunk-list.js';
import { NeonError } from '../../core/errors.js';
import { chunkSetOf, decodeManifest, encodeManifest, type ImageManifest } from '../../pageserver/manifest.js';
import { encodeManifestV1, relabelVersion } from '../../testkit/manifests.js';

const hashOf = (n: number) => createHash('sha256').update(`page ${n}`).digest('hex');
const hashes = (from: number, n: number) => Array.from({ length: n }, (_, i) => hashOf(from + i));

const image: Omit<ImageManifest, 'checksum'> = {
  format: 'neon-image',
  version: 2,
  branch: 'main',
  timeline: 1,
  startLsn: '0/1000028',
  endLsn: '0/1000100',
  systemId: '7312345678901234567',
  pgVersion: 15,
  kind: 'incremental',
  parent: 'images/main/0000000000f00000.json.gz',
  chain: 2,
  pagesRead: 3,
  createdAt: '2026-12-02T14:00:00.000Z',
  files: [
    { path: 'base', type: 'dir', mode: 0o700, size: 0 },
    { path: 'base/1/1259', type: 'file', mode: 0o600, size: 3 * 8192, chunks: ChunkList.fromHex(hashes(0, 3)) },
    { path: 'PG_VERSION', type: 'file', mode: 0o600, size: 3, chunks: ChunkList.fromHex(hashes(3, 1)) },
    { path: 'empty', type: 'file', mode: 0o600, size: 0, chunks: new ChunkList() },
    { path: 'pg_wal/link', type: 'symlink', mode: 0o777, size: 0, link: '/elsewhere' },
    { path: 'base/1/16384', type: 'file', mode: 0o600, size: 2000 * 8192, chunks: ChunkList.fromHex(hashes(10, 2000)) },
  ],
  rawBytes: 2003 * 8192 + 3,
  newBytes: 1234,
};

/** The manifest as plain data: lists as hex arrays, for deep comparison. */
const plain = (manifest: Omit<ImageManifest, 'checksum'>) => {
  const { checksum: _, version: __, ...rest } = manifest as ImageManifest;
  return JSON.parse(JSON.stringify(rest));
};

async function rejects(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  try {
    await promise;
  } catch (error) {
    assert.instance(error, NeonError);
    assert.match((error as Error).message, pattern);
    assert.not.match((error as Error).message, /\n/, 'one line');
    return;
  }
  assert.unreachable(`expected an error matching ${pattern}`);
}

test('version 2 round-trips every field and every hash, with a checksum', async () => {
  const encoded = await encodeManifest(image);
  const decoded = await decodeManifest('k', encoded);
  assert.is(decoded.version, 2);
  assert.match(decoded.checksum, /^[0-9a-f]{64}$/);
  assert.equal(plain(decoded), plain(image));
  const big = decoded.files.find((f) => f.path === 'base/1/16384')!;
  assert.is(big.chunks!.length, 2000);
  assert.is(big.chunks!.hexAt(1999), hashOf(2009));
  assert.not.ok('chunks' in decoded.files[0], 'a folder has no list');
  // The hashes are stored as bytes: the encoding is about 32 bytes per page, not 64 hex characters plus JSON.
  assert.ok(gunzipSync(encoded).length < 2004 * 32 + 2000, `${gunzipSync(encoded).length} bytes`);
  assert.is(chunkSetOf([decoded, decoded]).size, 2004);
});

test('version 1 manifests (JSON, hex hashes) still read, with their checksum checked', async () => {
  const v1 = encodeManifestV1({ ...image, version: 1 });
  assert.is(gunzipSync(v1)[0], '{'.charCodeAt(0));
  const decoded = await decodeManifest('old', v1);
  assert.is(decoded.version, 1);
  assert.equal(plain(decoded), plain(image));
  assert.is(decoded.files[1].chunks!.hexAt(2), hashOf(2));
  // Re-encoding (as a pull does when it renames the branch) writes version 2 with the same content.
  const again = await decodeManifest('new', await encodeManifest({ ...decoded, branch: 'pulled' }));
  assert.is(again.version, 2);
  assert.equal(plain(again), { ...plain(image), branch: 'pulled' });
  const json = JSON.parse(gunzipSync(v1).toString());
  json.files[1].chunks[0] = hashOf(99);
  await rejects(decodeManifest('old', gzipSync(JSON.stringify(json))), /image manifest old fails its checksum/);
});

test('damage, truncation and a wrong checksum are clear errors', async () => {
  const encoded = await encodeManifest(image);
  await rejects(decodeManifest('k', encoded.subarray(0, encoded.length >> 1)), /image manifest k is damaged or truncated/);
  const raw = gunzipSync(encoded);
  const flipped = Buffer.from(raw);
  flipped[raw.length - 100] ^= 1; // a hash byte
  await rejects(decodeManifest('k', gzipSync(flipped)), /image manifest k fails its checksum/);
  await rejects(decodeManifest('k', gzipSync(raw.subarray(0, raw.length - 40))), /image manifest k (fails its checksum|is damaged)/);
  await rejects(decodeManifest('k', gzipSync(Buffer.from('something else'))), /image manifest k is damaged or truncated/);
  await rejects(decodeManifest('k', gzipSync(JSON.stringify({ format: 'other' }))), /k is not a neon image manifest/);
  await rejects(decodeManifest('k', Buffer.from('not gzip')), /image manifest k is damaged or truncated/);
});

test('a newer format version is refused in one line, asking for a newer neon', async () => {
  const encoded = await encodeManifest(image);
  await rejects(decodeManifest('k', relabelVersion(encoded, 3)), /^image manifest k has format version 3; this neon reads versions 1 and 2 \(upgrade neon\)$/);
  const json = { ...JSON.parse(gunzipSync(encodeManifestV1({ ...image, version: 1 })).toString()), version: 7 };
  await rejects(decodeManifest('k', gzipSync(JSON.stringify(json))), /has format version 7; this neon reads versions 1 and 2/);
});

test.run();
