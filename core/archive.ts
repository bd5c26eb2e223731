/**
 * Archive helpers for backup formats: a streaming tar writer and a safe tar extractor for archives that come from
 * other people (codecs are in codecs.ts). Third-party format plugins use these too.
 *
 * Untrusted input rules (extractTar + decompress): no entry writes outside the target (absolute paths, `..`,
 * symlinks and hard links that leave it, writes through a symlink), no device or FIFO files, every file is as
 * long as its header says, a decompressed stream may not grow past {@link DecompressLimits}, and a truncated or
 * corrupt archive is a `NeonError` naming the archive.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { Header, Parser, Pax, type ReadEntry } from 'tar';
import { NeonError } from './errors.js';

// The codecs travel with the archive API: a format packs tars and compresses them in one go.
export * from './codecs.js';

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
