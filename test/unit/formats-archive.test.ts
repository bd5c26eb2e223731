import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { suite } from 'uvu';
import { Header } from 'tar';
import { compressStream, decompress, extractTar, streamToBuffer, tarStream, type Codec } from '../../core/archive.js';

/** A raw tar entry, for archives no honest writer makes. */
function entry(name: string, type: string, body = Buffer.alloc(0), extra: Record<string, unknown> = {}): Buffer {
  const header = new Header({ path: name, type: type as never, size: body.length, mode: 0o644, mtime: new Date(0), ...extra });
  header.encode();
  const pad = body.length % 512 ? Buffer.alloc(512 - (body.length % 512)) : Buffer.alloc(0);
  return Buffer.concat([header.block!, body, pad]);
}
const end = Buffer.alloc(1024);

const codecs = suite('archive: codecs');
const data = Buffer.concat([Buffer.alloc(1_000_000), Buffer.from(Array.from({ length: 200_000 }, (_, i) => (i * 7919) % 251)), Buffer.alloc(4_500_000, 1)]);

for (const codec of ['none', 'gzip', 'lz4', 'zstd', 'brotli', 'lzma'] as Codec[]) {
  codecs(`${codec}: round trip in small chunks; a truncated stream is an error naming the object`, async () => {
    const packed = await streamToBuffer(Readable.from([data]).pipe(compressStream(codec)));
    const chunks = [];
    for (let i = 0; i < packed.length; i += 777) chunks.push(packed.subarray(i, i + 777));
    assert.ok((await streamToBuffer(decompress(Readable.from(chunks), codec, 'obj'))).equals(data));
    if (codec !== 'none') {
      await assert.rejects(streamToBuffer(decompress(Readable.from([packed.subarray(0, packed.length - 7)]), codec, 'wal_005/X.lz4')), /wal_005\/X\.lz4: truncated or corrupt/);
    }
  });
}

codecs('a decompression bomb (> 1000:1) is refused', async () => {
  // 192 MiB of zeros as brotli is a few hundred bytes: far past 1000:1 once the 64 MiB allowance is used up.
  const zeros = Readable.from((function* () {
    for (let i = 0; i < 192; i++) yield Buffer.alloc(1 << 20);
  })());
  const bomb = await streamToBuffer(zeros.pipe(zlib.createBrotliCompress({ params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 1 } })));
  assert.ok(bomb.length < 1 << 20);
  await assert.rejects(streamToBuffer(decompress(Readable.from([bomb]), 'brotli', 'base.tar.br')), /base\.tar\.br: refused, it decompresses past 1000:1/);
});
codecs.run();

const safety = suite('archive: untrusted tars');
let root: string;
let target: string;
safety.before.each(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'neon-archive-'));
  target = path.join(root, 'target');
  fs.mkdirSync(target);
});
safety.after.each(() => fs.rmSync(root, { recursive: true, force: true }));

/** Extraction must fail and nothing may appear beside the target. */
async function refused(archive: Buffer, pattern: RegExp): Promise<void> {
  await assert.rejects(extractTar(Readable.from([archive]), target, { name: 'evil.tar' }), pattern);
  assert.deepEqual(fs.readdirSync(root), ['target']);
}

safety('a well-formed tar round trips with modes 0700/0600', async () => {
  const archive = await streamToBuffer(tarStream([{ path: 'a', type: 'directory' }, { path: 'a/b', type: 'file', source: Buffer.from('hello') }]));
  const result = await extractTar(Readable.from([archive]), target, { name: 'ok.tar' });
  assert.deepEqual(result.files, ['a/b']);
  assert.equal(fs.readFileSync(path.join(target, 'a/b'), 'utf8'), 'hello');
  assert.equal(fs.statSync(path.join(target, 'a')).mode & 0o777, 0o700);
  assert.equal(fs.statSync(path.join(target, 'a/b')).mode & 0o777, 0o600);
});

safety('path traversal (../x) is refused', async () => {
  await refused(Buffer.concat([entry('../x', 'File', Buffer.from('pwned')), end]), /evil\.tar: path "\.\.\/x" leaves the target/);
});

safety('an absolute path is refused', async () => {
  await refused(Buffer.concat([entry(path.join(root, 'abs'), 'File', Buffer.from('pwned')), end]), /absolute path/);
});

safety('a symlink pointing out, and a write through it, are refused', async () => {
  await refused(Buffer.concat([entry('link', 'SymbolicLink', Buffer.alloc(0), { linkpath: '..' }), entry('link/x', 'File', Buffer.from('pwned')), end]), /symbolic link link -> \.\. points outside/);
  await refused(Buffer.concat([entry('pg_tblspc/16384', 'SymbolicLink', Buffer.alloc(0), { linkpath: '/etc' }), end]), /tablespaces are not supported/);
});

safety('a hard link pointing out, and device and FIFO entries, are refused', async () => {
  await refused(Buffer.concat([entry('h', 'Link', Buffer.alloc(0), { linkpath: '../../etc/passwd' }), end]), /hard link h -> .* points outside/);
  await refused(Buffer.concat([entry('dev', 'CharacterDevice'), end]), /dev is a CharacterDevice entry/);
  await refused(Buffer.concat([entry('fifo', 'FIFO'), end]), /fifo is a FIFO entry/);
});

safety('a truncated tar is an error naming it (mid-file and between entries)', async () => {
  const archive = await streamToBuffer(tarStream([{ path: 'big', type: 'file', source: Buffer.alloc(100_000, 3) }, { path: 'small', type: 'file', source: Buffer.from('x') }]));
  await assert.rejects(extractTar(Readable.from([archive.subarray(0, 50_000)]), target, { name: 'cut.tar' }), /cut\.tar: truncated or corrupt tar/);
  fs.rmSync(target, { recursive: true });
  fs.mkdirSync(target);
  await assert.rejects(extractTar(Readable.from([archive.subarray(0, archive.length - 1024)]), target, { name: 'cut.tar' }), /cut\.tar: truncated tar \(no end-of-archive marker\)/);
});

safety('a bomb inside a compressed tar stops extraction', async () => {
  const huge = Readable.from((function* () {
    const header = new Header({ path: 'zeros', type: 'File', size: 192 << 20, mode: 0o600, mtime: new Date(0) });
    header.encode();
    yield header.block!;
    for (let i = 0; i < 192; i++) yield Buffer.alloc(1 << 20);
    yield end;
  })());
  const packed = await streamToBuffer(huge.pipe(compressStream('zstd')));
  await assert.rejects(extractTar(decompress(Readable.from([packed]), 'zstd', 'base.tar.zst'), target, { name: 'base.tar.zst' }), /refused, it decompresses past 1000:1/);
});

safety.run();
