/**
 * Archive helpers for backup formats: compression codecs (as streams), a streaming tar writer, and a safe tar
 * extractor for archives that come from other people. Third-party format plugins use these too.
 *
 * Untrusted input rules (extractTar + decompress): no entry writes outside the target (absolute paths, `..`,
 * symlinks and hard links that leave it, writes through a symlink), no device or FIFO files, every file is as
 * long as its header says, a decompressed stream may not grow past {@link DecompressLimits}, and a truncated or
 * corrupt archive is a `NeonError` naming the archive.
 */
import fs from 'node:fs';
import path from 'node:path';
import { PassThrough, Readable, Transform, type TransformCallback } from 'node:stream';
import zlib from 'node:zlib';
import { createRequire } from 'node:module';
import { Header, Parser, Pax, type ReadEntry } from 'tar';
import { NeonError } from './errors.js';

const require = createRequire(import.meta.url);

// ---- codecs ----------------------------------------------------------------------------------------------

/** Compression codecs backup formats use; names are WAL-G's (`WALG_COMPRESSION_METHOD`). */
export type Codec = 'none' | 'gzip' | 'lz4' | 'zstd' | 'brotli' | 'lzma';

/** File extension of each codec (WAL-G's FileExtension constants; pg_basebackup uses gz, lz4, zst). */
export const CODEC_EXTENSIONS: Record<Codec, string> = { none: '', gzip: 'gz', lz4: 'lz4', zstd: 'zst', brotli: 'br', lzma: 'lzma' };

/** The codec a file name's extension names, and the name without it (`base.tar.zst` → zstd, `base.tar`). */
export function codecOfName(name: string): { codec: Codec; base: string } {
  for (const [codec, ext] of Object.entries(CODEC_EXTENSIONS) as [Codec, string][]) {
    if (ext && name.endsWith('.' + ext)) return { codec, base: name.slice(0, -ext.length - 1) };
  }
  return { codec: 'none', base: name };
}

/** Add a codec's extension to a name (none adds nothing, as WAL-G's AddFileExtension). */
export const withCodecExtension = (name: string, codec: Codec) => (CODEC_EXTENSIONS[codec] ? `${name}.${CODEC_EXTENSIONS[codec]}` : name);

/** Limits on decompression: output may not pass `maxRatio` × input + `allowance` bytes. */
export interface DecompressLimits {
  /** Default 1000: a larger ratio is treated as a decompression bomb. */
  maxRatio?: number;
  /**
   * Bytes always allowed on top of the ratio (default 64 MiB): an all-zero 16 MiB WAL segment compresses far
   * beyond 1000:1 with zstd and must still be readable.
   */
  allowance?: number;
}

const LZ4_MAGIC = 0x184d2204;
const LZ4_BLOCK = 4 << 20;

/** A stream that compresses with `codec`. */
export function compressStream(codec: Codec): Transform {
  switch (codec) {
    case 'none':
      return new PassThrough();
    case 'gzip':
      return zlib.createGzip();
    case 'brotli':
      return zlib.createBrotliCompress({ params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 4 } });
    case 'zstd': {
      const { CompressStream } = require('zstd-napi') as typeof import('zstd-napi');
      return new CompressStream();
    }
    case 'lz4':
      return new Lz4FrameEncoder();
    case 'lzma':
      return wholeBuffer((input) => (require('@napi-rs/lzma') as typeof import('@napi-rs/lzma')).lzma.compressSync(input));
  }
}

function decoderFor(codec: Codec): Transform {
  switch (codec) {
    case 'none':
      return new PassThrough();
    case 'gzip':
      return zlib.createGunzip();
    case 'brotli':
      return zlib.createBrotliDecompress();
    case 'zstd': {
      const { DecompressStream } = require('zstd-napi') as typeof import('zstd-napi');
      return new DecompressStream();
    }
    case 'lz4':
      return new Lz4FrameDecoder();
    case 'lzma':
      // @napi-rs/lzma has no streaming API: the object is decompressed in memory (WAL-G's .lzma objects are
      // WAL segments and tar partitions; the ratio guard still applies to what comes out).
      return wholeBuffer((input) => (require('@napi-rs/lzma') as typeof import('@napi-rs/lzma')).lzma.decompressSync(input));
  }
}

/**
 * Decompress `source` (an object named `name`, for messages). Errors of the codec (truncated or corrupt
 * input) and a ratio past the limits become a `NeonError` naming `name`.
 */
export function decompress(source: Readable, codec: Codec, name: string, limits: DecompressLimits = {}): Readable {
  const maxRatio = limits.maxRatio ?? 1000;
  const allowance = limits.allowance ?? 64 << 20;
  let inBytes = 0;
  let outBytes = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      inBytes += chunk.length;
      callback(null, chunk);
    },
  });
  const decoder = decoderFor(codec);
  const guard = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      outBytes += chunk.length;
      if (outBytes > inBytes * maxRatio + allowance) {
        callback(new NeonError('archive_bomb', `${name}: refused, it decompresses past ${maxRatio}:1 (${outBytes} bytes from ${inBytes}): a decompression bomb?`));
      } else callback(null, chunk);
    },
  });
  const parts = [source, counter, decoder];
  let failed = false;
  const fail = (error: unknown) => {
    if (failed) return;
    failed = true;
    const wrapped =
      error instanceof NeonError ? error : new NeonError('corrupt_archive', `${name}: truncated or corrupt ${codec} data (${(error as Error).message})`);
    guard.destroy(wrapped);
    for (const part of parts) part.destroy();
  };
  for (const part of parts) part.on('error', fail);
  guard.on('close', () => {
    if (!guard.writableFinished) for (const part of parts) part.destroy();
  });
  source.pipe(counter).pipe(decoder).pipe(guard);
  return guard;
}

/** A transform that collects its whole input and emits `fn(input)` at the end (codecs without streams). */
function wholeBuffer(fn: (input: Buffer) => Buffer): Transform {
  const chunks: Buffer[] = [];
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk);
      callback();
    },
    flush(callback) {
      try {
        callback(null, fn(Buffer.concat(chunks)));
      } catch (error) {
        callback(error as Error);
      }
    },
  });
}

/**
 * LZ4 frame format (lz4_Frame_format.md): magic, FLG/BD/HC, independent blocks of up to 4 MiB, end mark. Blocks
 * are (de)compressed by lz4-napi; the framing is here so that both directions stream.
 */
class Lz4FrameEncoder extends Transform {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private started = false;

  override _transform(chunk: Buffer, _encoding: string, callback: TransformCallback): void {
    this.header();
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    while (this.pendingBytes >= LZ4_BLOCK) this.block(LZ4_BLOCK);
    callback();
  }

  override _flush(callback: TransformCallback): void {
    this.header();
    while (this.pendingBytes > 0) this.block(Math.min(this.pendingBytes, LZ4_BLOCK));
    this.push(Buffer.alloc(4)); // end mark
    callback();
  }

  private header(): void {
    if (this.started) return;
    this.started = true;
    // FLG 0x60: version 01, independent blocks, no checksums; BD 0x70: 4 MiB blocks; HC = (xxh32(FLG BD) >> 8) & 0xff.
    const descriptor = Buffer.from([0x60, 0x70]);
    const head = Buffer.alloc(7);
    head.writeUInt32LE(LZ4_MAGIC, 0);
    descriptor.copy(head, 4);
    head[6] = (xxh32(descriptor) >>> 8) & 0xff;
    this.push(head);
  }

  private block(size: number): void {
    const all = Buffer.concat(this.pending);
    const raw = all.subarray(0, size);
    const rest = all.subarray(size);
    this.pending = rest.length ? [rest] : [];
    this.pendingBytes = rest.length;
    const { compressSync } = require('lz4-napi') as typeof import('lz4-napi');
    const packed = compressSync(Buffer.from(raw)).subarray(4); // lz4-napi prepends the size (u32 LE)
    const sizeField = Buffer.alloc(4);
    if (packed.length < raw.length) {
      sizeField.writeUInt32LE(packed.length);
      this.push(Buffer.concat([sizeField, packed]));
    } else {
      sizeField.writeUInt32LE((raw.length | 0x80000000) >>> 0);
      this.push(Buffer.concat([sizeField, raw]));
    }
  }
}

class Lz4FrameDecoder extends Transform {
  private buffer: Buffer = Buffer.alloc(0);
  private state: 'magic' | 'blocks' | 'checksum' = 'magic';
  private flags = 0;
  private maxBlock = LZ4_BLOCK;

  override _transform(chunk: Buffer, _encoding: string, callback: TransformCallback): void {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    try {
      this.consume();
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    if (this.state !== 'magic' || this.buffer.length) callback(new Error(`LZ4 frame ends early (${this.buffer.length} bytes left in state ${this.state})`));
    else callback();
  }

  private consume(): void {
    for (;;) {
      const b = this.buffer;
      if (this.state === 'magic') {
        if (b.length < 8) return;
        const magic = b.readUInt32LE(0);
        if ((magic & 0xfffffff0) === 0x184d2a50) {
          // skippable frame
          const skip = 8 + b.readUInt32LE(4);
          if (b.length < skip) return;
          this.buffer = b.subarray(skip);
          continue;
        }
        if (magic !== LZ4_MAGIC) throw new Error('not an LZ4 frame (bad magic number)');
        const flg = b[4];
        if (flg >> 6 !== 1) throw new Error('unsupported LZ4 frame version');
        const headerLength = 7 + (flg & 0x08 ? 8 : 0) + (flg & 0x01 ? 4 : 0);
        if (b.length < headerLength) return;
        const blockId = (b[5] >> 4) & 7;
        if (blockId < 4) throw new Error('bad LZ4 block size');
        if (flg & 0x01) throw new Error('LZ4 frames with a dictionary are not supported');
        this.flags = flg;
        this.maxBlock = 1 << (8 + 2 * blockId);
        this.buffer = b.subarray(headerLength);
        this.state = 'blocks';
      } else if (this.state === 'blocks') {
        if (b.length < 4) return;
        const field = b.readUInt32LE(0);
        if (field === 0) {
          this.buffer = b.subarray(4);
          this.state = 'checksum';
          continue;
        }
        const size = field & 0x7fffffff;
        if (size > this.maxBlock) throw new Error('LZ4 block larger than the frame allows');
        const total = 4 + size + (this.flags & 0x10 ? 4 : 0);
        if (b.length < total) return;
        const data = b.subarray(4, 4 + size);
        if (field & 0x80000000) this.push(Buffer.from(data));
        else {
          const { uncompressSync } = require('lz4-napi') as typeof import('lz4-napi');
          const sized = Buffer.alloc(4 + size);
          sized.writeUInt32LE(this.maxBlock);
          data.copy(sized, 4);
          this.push(Buffer.from(uncompressSync(sized)));
        }
        this.buffer = b.subarray(total);
      } else {
        const need = this.flags & 0x04 ? 4 : 0;
        if (b.length < need) return;
        this.buffer = b.subarray(need);
        this.state = 'magic';
      }
    }
  }
}

/** xxHash32 with seed 0 (only used for the 2-byte LZ4 frame descriptor). */
function xxh32(input: Buffer): number {
  const P1 = 2654435761, P2 = 2246822519, P3 = 3266489917, P4 = 668265263, P5 = 374761393;
  const rotl = (x: number, r: number) => ((x << r) | (x >>> (32 - r))) >>> 0;
  let h = (P5 + input.length) >>> 0;
  let i = 0;
  for (; i + 4 <= input.length; i += 4) h = Math.imul(rotl((h + Math.imul(input.readUInt32LE(i), P3)) >>> 0, 17), P4) >>> 0;
  for (; i < input.length; i++) h = Math.imul(rotl((h + Math.imul(input[i], P5)) >>> 0, 11), P1) >>> 0;
  h ^= h >>> 15;
  h = Math.imul(h, P2) >>> 0;
  h ^= h >>> 13;
  h = Math.imul(h, P3) >>> 0;
  h ^= h >>> 16;
  return h >>> 0;
}

// ---- writing tars ----------------------------------------------------------------------------------------

/** One member of a tar being written. */
export type TarMember =
  | { path: string; type: 'directory'; mtime?: Date; mode?: number }
  | { path: string; type: 'file'; source: string | Buffer; size?: number; mtime?: Date; mode?: number };

/**
 * A ustar archive as a stream (PAX headers for long names), read from disk as it is consumed. `onFile` sees each
 * file's bytes as they go out (for checksums).
 */
export function tarStream(members: Iterable<TarMember> | AsyncIterable<TarMember>, onFile?: (member: TarMember, chunk: Buffer) => void): Readable {
  async function* generate(): AsyncGenerator<Buffer> {
    for await (const member of members) {
      const name = member.type === 'directory' ? member.path.replace(/\/?$/, '/') : member.path;
      const size = member.type === 'file' ? (member.size ?? (typeof member.source === 'string' ? fs.statSync(member.source).size : member.source.length)) : 0;
      const fields = {
        path: name,
        mode: member.mode ?? (member.type === 'directory' ? 0o700 : 0o600),
        size,
        mtime: member.mtime ?? new Date(),
        type: member.type === 'directory' ? ('Directory' as const) : ('File' as const),
        uid: 0,
        gid: 0,
      };
      const header = new Header(fields);
      if (header.encode()) yield new Pax({ ...fields, atime: undefined, ctime: undefined }).encode();
      yield header.block!;
      if (member.type !== 'file') continue;
      let written = 0;
      if (typeof member.source === 'string') {
        for await (const chunk of fs.createReadStream(member.source, { highWaterMark: 1 << 20 })) {
          const piece = (chunk as Buffer).subarray(0, Math.max(0, size - written));
          written += piece.length;
          onFile?.(member, piece);
          yield piece;
          if (written >= size) break;
        }
        if (written < size) throw new NeonError('file_changed', `${member.source} shrank while it was archived (expected ${size} bytes, read ${written})`);
      } else {
        onFile?.(member, member.source);
        yield member.source;
        written = member.source.length;
      }
      if (written % 512) yield Buffer.alloc(512 - (written % 512));
    }
    yield Buffer.alloc(1024); // end of archive
  }
  return Readable.from(generate(), { objectMode: false });
}

// ---- extracting untrusted tars ---------------------------------------------------------------------------

/** Options of {@link extractTar}. */
export interface ExtractOptions {
  /** The archive's name, for messages. */
  name: string;
  /** Replace files that exist (layered restores); default false: a second entry for one path is an error. */
  overwrite?: boolean;
  /** Skip entries for which this returns false (paths are relative, `/`-separated, without `./`). */
  filter?: (relPath: string, entry: ReadEntry) => boolean;
  /**
   * Take over a regular file entry: return a function that consumes the entry's bytes and writes `absPath`
   * itself (e.g. a WAL-G increment applied to an existing file); return undefined for the default write.
   */
  onFile?: (relPath: string, entry: ReadEntry, absPath: string) => ((data: AsyncIterable<Buffer>) => Promise<void>) | undefined;
  /** Called with the bytes of every file as they are written. */
  onBytes?: (bytes: number) => void;
  /** Called with each chunk of a regular file written the default way (for checksums). */
  onChunk?: (relPath: string, chunk: Buffer) => void;
}

/** What {@link extractTar} wrote. */
export interface ExtractResult {
  files: string[];
  bytes: number;
}

/**
 * Extract a tar stream into `target` (an existing folder), refusing anything unsafe (see the top of this file).
 * Directories get mode 0700 and files 0600, whatever the archive says (Postgres wants its data private).
 */
export async function extractTar(source: Readable, target: string, options: ExtractOptions): Promise<ExtractResult> {
  const root = fs.realpathSync(target);
  const files: string[] = [];
  const pending: Promise<void>[] = [];
  let bytes = 0;
  let failure: Error | undefined;
  let sawEnd = false;
  const refuse = (message: string) => new NeonError('unsafe_archive', `${options.name}: ${message}`);

  const inside = (abs: string) => abs === root || abs.startsWith(root + path.sep);
  /** mkdir -p below root, refusing to pass through a symlink. */
  const makeParents = (rel: string) => {
    let dir = root;
    for (const part of rel.split('/').slice(0, -1)) {
      dir = path.join(dir, part);
      let stat: fs.Stats | undefined;
      try {
        stat = fs.lstatSync(dir);
      } catch {
        fs.mkdirSync(dir, { mode: 0o700 });
        continue;
      }
      if (!stat.isDirectory()) throw refuse(`${rel} would be written through ${stat.isSymbolicLink() ? 'a symbolic link' : 'a file'} (${path.relative(root, dir)})`);
    }
  };

  let entries = 0;
  const onEntry = (entry: ReadEntry) => {
    entries++;
    if (failure) return entry.resume();
    try {
      handle(entry);
    } catch (error) {
      failure ??= error as Error;
      entry.resume();
    }
  };

  const handle = (entry: ReadEntry) => {
    const raw = entry.path;
    if (raw.includes('\0')) throw refuse(`entry name holds a NUL byte`);
    if (raw.startsWith('/') || /^[A-Za-z]:/.test(raw)) throw refuse(`absolute path "${raw}" refused`);
    const parts = raw.split('/').filter((part) => part !== '' && part !== '.');
    if (parts.includes('..')) throw refuse(`path "${raw}" leaves the target (..) and is refused`);
    const rel = parts.join('/');
    if (options.filter && !options.filter(rel, entry)) return entry.resume();
    if (!rel) return entry.resume(); // "./" itself
    const abs = path.join(root, ...parts);
    switch (entry.type) {
      case 'Directory':
        makeParents(rel + '/x');
        return entry.resume();
      case 'File':
      case 'OldFile':
      case 'ContiguousFile':
        return writeFile(entry, rel, abs);
      case 'SymbolicLink': {
        const link = entry.linkpath ?? '';
        const resolved = path.resolve(path.dirname(abs), link);
        if (path.isAbsolute(link) || !inside(resolved)) {
          throw refuse(`symbolic link ${rel} -> ${link} points outside the target and is refused${rel.startsWith('pg_tblspc/') ? ' (tablespaces are not supported)' : ''}`);
        }
        makeParents(rel);
        fs.symlinkSync(link, abs);
        return entry.resume();
      }
      case 'Link': {
        const link = (entry.linkpath ?? '').split('/').filter((p) => p && p !== '.');
        if ((entry.linkpath ?? '').startsWith('/') || link.includes('..')) throw refuse(`hard link ${rel} -> ${entry.linkpath} points outside the target and is refused`);
        const existing = path.join(root, ...link);
        const stat = fs.lstatSync(existing, { throwIfNoEntry: false });
        if (!stat?.isFile()) throw refuse(`hard link ${rel} -> ${entry.linkpath}: no such file in the archive`);
        makeParents(rel);
        fs.linkSync(existing, abs);
        files.push(rel);
        return entry.resume();
      }
      default:
        throw refuse(`${rel} is a ${entry.type} entry; only files, folders and links are accepted`);
    }
  };

  const writeFile = (entry: ReadEntry, rel: string, abs: string) => {
    makeParents(rel);
    files.push(rel);
    const expected = entry.size ?? 0;
    const custom = options.onFile?.(rel, entry, abs);
    if (custom) {
      pending.push(
        custom(entry as unknown as AsyncIterable<Buffer>).catch((error) => {
          failure ??= error;
          entry.resume(); // drain what the consumer left, or the parser waits forever
        }),
      );
      return;
    }
    const { O_WRONLY, O_CREAT, O_TRUNC, O_EXCL, O_NOFOLLOW } = fs.constants;
    let fd: number;
    try {
      fd = fs.openSync(abs, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | (options.overwrite ? 0 : O_EXCL), 0o600);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') throw refuse(`${rel} appears twice in the archive`);
      if (code === 'ELOOP') throw refuse(`${rel} would be written through a symbolic link`);
      throw error;
    }
    let written = 0;
    const out = fs.createWriteStream('', { fd, highWaterMark: 1 << 20 });
    // Count in a stage of the pipe: a 'data' listener beside pipe() would race it for the entry's buffered bytes.
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        written += chunk.length;
        bytes += chunk.length;
        options.onChunk?.(rel, chunk);
        options.onBytes?.(chunk.length);
        callback(null, chunk);
      },
    });
    entry.pipe(counter).pipe(out);
    pending.push(
      new Promise<void>((resolve, reject) => {
        out.on('error', reject);
        out.on('close', () => {
          if (written !== expected) reject(refuse(`${rel}: ${written} bytes written, the header says ${expected} (truncated archive)`));
          else resolve();
        });
      }).catch((error) => void (failure ??= error)),
    );
  };

  const parser = new Parser({ strict: true, onReadEntry: onEntry });
  // tar's parser reports the two end-of-archive blocks as "eof"; an archive cut exactly between two entries
  // has none and is truncated too.
  parser.on('eof' as never, () => (sawEnd = true));
  await new Promise<void>((resolve, reject) => {
    const fail = (error: Error) => reject(error instanceof NeonError ? error : new NeonError('corrupt_archive', `${options.name}: truncated or corrupt tar (${error.message})`));
    // An archive of no entries (just the end-of-archive blocks) is valid, though tar's parser calls it unrecognized.
    parser.on('error', (error: Error) => (sawEnd && !entries && /Unrecognized archive format/.test(error.message) ? resolve() : fail(error)));
    source.on('error', fail);
    parser.on('end', () => resolve());
    source.pipe(parser);
  });
  await Promise.all(pending);
  if (failure) throw failure instanceof NeonError ? failure : new NeonError('corrupt_archive', `${options.name}: ${failure.message}`, { cause: failure });
  if (!sawEnd) throw new NeonError('corrupt_archive', `${options.name}: truncated tar (no end-of-archive marker)`);
  return { files, bytes };
}

/** Read a whole stream into memory (for small objects). */
export async function streamToBuffer(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
