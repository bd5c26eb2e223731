/**
 * Compression codecs for backup formats, as streams: gzip, brotli (node:zlib), zstd (zstd-napi), LZ4 frames
 * (written here around lz4-napi's blocks), lzma (@napi-rs/lzma). Decompression of untrusted input is bounded by
 * {@link DecompressLimits}; a truncated or corrupt stream is a `NeonError` naming the file.
 */
import { PassThrough, pipeline, Readable, Transform, type TransformCallback } from 'node:stream';
import zlib from 'node:zlib';
import { createRequire } from 'node:module';
import { NeonError } from './errors.js';
import type { Storage } from './storage.js';

const require = createRequire(import.meta.url);

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

/**
 * Store `source` compressed with `codec` under `key`, counting the compressed bytes as they go. pipeline()
 * destroys every stage on an error, so that the put fails instead of waiting forever.
 */
export async function putCompressed(
  storage: Storage,
  key: string,
  source: Readable,
  codec: Codec,
  onCompressed: (bytes: number) => void,
): Promise<void> {
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      onCompressed(chunk.length);
      callback(null, chunk);
    },
  });
  await storage.put(key, pipeline(source, compressStream(codec), counter, () => undefined));
}
