// Verify WAL up to a flush point: every page header and every record's CRC, records chained by xl_prev. Also the
// file-backed WalSource that the decoder reads from (a pg_wal folder, a WAL store folder, or a list of files).
import fs from 'node:fs';
import path from 'node:path';
import { DEFAULT_SEGMENT_SIZE, parseSegmentName, segmentName, segmentStart, type Lsn } from '../core/wal.js';
import { fileIdentity, rememberVerdict, verdictOf, type SegmentVerdict } from './verdicts.js';
import { firstRecordAt, RecordWalker, u32, WalDecodeError, type WalRecord, type WalSegment, type WalSource } from './records.js';

const SEGMENT_FILE = /^([0-9A-F]{24})(\.partial)?$/;

/** A {@link WalSource} over files, with the range of segments it holds. */
export interface WalFileSource extends WalSource {
  /** First and last segment numbers present (undefined when there are none). */
  first?: bigint;
  last?: bigint;
  timeline: number;
  files: Map<bigint, string>;
  /** Read segments into two reused buffers from now on (see {@link walFileSource}'s `reuse`). */
  reuse: boolean;
}

/**
 * Segments from a folder (pg_wal, or any folder of segment files) or from a list of segment files. The segment
 * size comes from the first file's long page header. Per segment number the file of the highest timeline up to
 * `timeline` (default: the highest present) is used, and a complete file over its `.partial`. Segments are read
 * whole, one or two at a time; a short `.partial` is padded with zeros. With `reuse`, the two segments in memory
 * are read into the same two buffers over and over: for a caller that keeps no bytes of a segment (no record's
 * main data) once it has moved two segments on.
 */
export function walFileSource(input: string | string[], options: { timeline?: number; reuse?: boolean } = {}): WalFileSource {
  const paths = typeof input === 'string' ? fs.readdirSync(input).map((name) => path.join(input, name)) : input;
  const candidates = paths
    .filter((p) => SEGMENT_FILE.test(path.basename(p)))
    .sort((a, b) => (path.basename(a) < path.basename(b) ? -1 : 1));
  const segmentSize = candidates.length ? readSegmentSize(candidates[0]) : DEFAULT_SEGMENT_SIZE;
  const parsed = candidates.map((file) => ({
    file,
    partial: file.endsWith('.partial'),
    ...parseSegmentName(path.basename(file).slice(0, 24), segmentSize)!,
  }));
  const timeline = options.timeline ?? Math.max(1, ...parsed.map((p) => p.timeline));
  const files = new Map<bigint, string>();
  const chosen = new Map<bigint, { timeline: number; partial: boolean }>();
  for (const p of parsed) {
    if (p.timeline > timeline) continue;
    const had = chosen.get(p.segno);
    if (had && (had.timeline > p.timeline || (had.timeline === p.timeline && !had.partial))) continue;
    chosen.set(p.segno, p);
    files.set(p.segno, p.file);
  }
  const segnos = [...files.keys()].sort((a, b) => (a < b ? -1 : 1));
  const cache = new Map<bigint, WalSegment>();
  const spare: Buffer[] = [];
  const pooled = new WeakSet<Uint8Array>(); // buffers read while reusing: only those go back to the pool
  const read = (file: string): Uint8Array => {
    if (!source.reuse) return fs.readFileSync(file);
    const buffer = spare.pop() ?? Buffer.allocUnsafeSlow(segmentSize);
    return readInto(file, buffer);
  };
  const source: WalFileSource = {
    reuse: options.reuse ?? false,
    segmentSize,
    timeline,
    files,
    first: segnos[0],
    last: segnos[segnos.length - 1],
    name: (segno) => (files.has(segno) ? path.basename(files.get(segno)!) : segmentName(timeline, segno, segmentSize)),
    segment(segno) {
      const hit = cache.get(segno);
      if (hit) return hit;
      const file = files.get(segno);
      if (!file) return undefined;
      let data = read(file);
      if (data.length < segmentSize) {
        const padded = new Uint8Array(segmentSize);
        padded.set(data);
        data = padded;
      }
      if (cache.size >= 2) {
        const oldest = cache.keys().next().value!;
        const evicted = cache.get(oldest)!.data;
        if (source.reuse && pooled.has(evicted)) spare.push(evicted as Buffer);
        cache.delete(oldest);
      }
      if (source.reuse) pooled.add(data);
      const segment = { name: path.basename(file), data };
      cache.set(segno, segment);
      return segment;
    },
  };
  return source;
}

/** Read a file into `buffer` (as far as it holds; a shorter file's rest is zeroed, a longer one is cut). */
function readInto(file: string, buffer: Buffer): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    let got = 0;
    while (got < buffer.length) {
      const n = fs.readSync(fd, buffer, got, buffer.length - got, got);
      if (n === 0) break;
      got += n;
    }
    buffer.fill(0, got);
    return buffer;
  } finally {
    fs.closeSync(fd);
  }
}

/** xlp_seg_size of a segment file's long header, or the default when the file does not have a valid one. */
function readSegmentSize(file: string): number {
  const header = Buffer.alloc(40);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, header, 0, 40, 0);
  } finally {
    fs.closeSync(fd);
  }
  return segmentSizeOf(header);
}

/** What {@link verifyWal} found. */
export interface VerifyResult {
  ok: boolean;
  /** Records that passed every check. */
  records: number;
  /** Where checking began (the first record). */
  firstLsn?: Lsn;
  /** End of the last valid record (where the first damaged record, if any, starts). */
  lastValidLsn: Lsn;
  /** True when the last record before `upTo` runs past it (flushed only in part): not an error. */
  incomplete: boolean;
  pgVersion?: number;
  systemId?: bigint;
  /** The first damaged place. */
  error?: WalDecodeError;
}

/** Options of {@link verifyWal}. */
export interface VerifyOptions {
  /** A record start, or a page start (a record continued from earlier pages is skipped). Default: the first segment's first record. */
  from?: Lsn;
  /** The flush point: everything before it must be valid WAL; what follows (a zeroed `.partial` tail) is not read. */
  upTo: Lsn;
  timeline?: number;
  /** Called with each valid record (e.g. to collect changed pages in the same pass). */
  onRecord?: (record: WalRecord) => void;
  /**
   * Take the verdicts of segment files verified in the last minutes (./verdicts.ts) instead of walking them again.
   * Only for a {@link walFileSource}, and not for checks meant to find bytes that rotted since.
   */
  recentVerdicts?: boolean;
}

/**
 * Check WAL from `from` up to the flush point `upTo`: page headers (magic, flags, page address, long headers, timeline
 * order), record lengths, xl_prev chaining, CRC-32C of every record, and block reference headers. Reads
 * synchronously but yields to the event loop between segments.
 */
export async function verifyWal(input: string | string[] | WalSource, options: VerifyOptions): Promise<VerifyResult> {
  const onRecord = options.onRecord;
  return walkWal(input, options, onRecord && ((walker) => onRecord(walker.record())));
}

/**
 * {@link verifyWal} handing each valid record to `visit` as the walker that checked it (its fields and
 * `mainData()` are valid during the call only): no objects per record. Without `visit`, segment files are read
 * into reused buffers.
 */
export async function walkWal(
  input: string | string[] | WalSource,
  options: Omit<VerifyOptions, 'onRecord'>,
  visit?: (walker: RecordWalker) => void,
  verdict?: (walker: RecordWalker) => void,
): Promise<VerifyResult> {
  const source =
    typeof input === 'string' || Array.isArray(input) ? walFileSource(input, { timeline: options.timeline, reuse: !visit }) : input;
  const first = (source as Partial<WalFileSource>).first;
  let records = 0;
  let walker: RecordWalker | undefined;
  const from = options.from ?? (first !== undefined ? segmentStart(first, source.segmentSize) : 0n);
  let lastEnd = -1;
  const result = (extra: Partial<VerifyResult>): VerifyResult => {
    const firstLsn = walker?.firstLsn ?? -1;
    const end = Math.max(lastEnd, walker?.skippedEnd ?? -1);
    return {
      ok: true,
      records: records + (walker?.skippedRecords ?? 0),
      firstLsn: firstLsn < 0 ? undefined : BigInt(firstLsn),
      lastValidLsn: end < 0 ? from : BigInt(end),
      incomplete: false,
      ...extra,
    };
  };
  try {
    if (first === undefined && options.from === undefined) {
      throw new WalDecodeError('segment-missing', 0n, '(none)', 'no WAL segments');
    }
    let start = from;
    if (start >= options.upTo) return result({});
    if (start % 8192n === 0n) {
      try {
        start = firstRecordAt(source, start);
      } catch (error) {
        // A record continued over every page up to the flush point: no record starts before it, nothing to check.
        if (error instanceof WalDecodeError && error.lsn >= options.upTo) return result({ incomplete: true });
        throw error;
      }
    }
    const size = source.segmentSize;
    const files = (source as Partial<WalFileSource>).files;
    const verdicts = options.recentVerdicts && !visit && files ? (segno: number) => verdictOf(files.get(BigInt(segno)) ?? '') : undefined;
    // A walk that hands out no record keeps no segment bytes: a file source may read into reused buffers meanwhile.
    const fileSource = files ? (source as WalFileSource) : undefined;
    const reuse = fileSource?.reuse;
    if (fileSource && !visit) fileSource.reuse = true;
    try {
      walker = new RecordWalker(source, start, { end: options.upTo, verdicts });
      let segno = Math.floor(Number(start) / size);
      while (walker.next()) {
        records++;
        lastEnd = walker.endLsn;
        visit?.(walker);
        if (Math.floor(lastEnd / size) !== segno) {
          segno = Math.floor(lastEnd / size);
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
    } finally {
      if (fileSource) fileSource.reuse = reuse!;
    }
    const stop = walker.stopped!;
    verdict?.(walker);
    return result({ incomplete: stop.why === 'incomplete', pgVersion: stop.pgVersion, systemId: stop.systemId });
  } catch (error) {
    if (!(error instanceof WalDecodeError)) throw error;
    return result({ ok: false, error });
  }
}

/** A {@link WalSource} over one segment's bytes (a file read whole, or an object from storage). */
export function segmentSource(name: string, data: Uint8Array, segmentSize = segmentSizeOf(data)): WalFileSource {
  const parsed = parseSegmentName(name, segmentSize);
  if (!parsed) throw new Error(`${name} is not a WAL segment name`);
  if (data.length < segmentSize) {
    const padded = new Uint8Array(segmentSize);
    padded.set(data);
    data = padded;
  }
  const files = new Map([[parsed.segno, name]]);
  return {
    segmentSize,
    timeline: parsed.timeline,
    files,
    reuse: false,
    first: parsed.segno,
    last: parsed.segno,
    name: (segno) => segmentName(parsed.timeline, segno, segmentSize),
    segment: (segno) => (segno === parsed.segno ? { name, data } : undefined),
  };
}

/** xlp_seg_size of a segment's long header, or the default when it has no valid one. */
export function segmentSizeOf(data: Uint8Array): number {
  if (data.length < 40) return DEFAULT_SEGMENT_SIZE;
  const size = u32(data, 32);
  const powerOfTwo = size >= 1 << 20 && size <= 1 << 30 && (size & (size - 1)) === 0;
  return data[2] & 0x2 && powerOfTwo ? size : DEFAULT_SEGMENT_SIZE;
}

/** Offset just past the last non-zero byte: how much of a pre-zeroed `.partial` segment holds WAL. */
export function filledLength(data: Uint8Array): number {
  let end = data.length;
  while (end > 0 && data[end - 1] === 0) end--;
  return end;
}

/**
 * Verify one segment on its own, from its first record up to `upTo` (default: its end; for an unfinished segment,
 * the flush point, or else its last non-zero byte). The record continued from the previous segment and the one
 * running into the next are only checked as far as their page headers: verifying a run of segments in one pass
 * (see ./copies.ts) checks them whole.
 */
export async function verifySegment(
  name: string,
  data: Uint8Array,
  options: { upTo?: Lsn; partial?: boolean } = {},
): Promise<VerifyResult> {
  return (await checkSegment(name, data, options)).result;
}

/** {@link verifySegment}, with the verdict a later walk over this segment's file can take (when it verifies). */
export async function checkSegment(
  name: string,
  data: Uint8Array,
  options: { upTo?: Lsn; partial?: boolean } = {},
): Promise<{ result: VerifyResult; verdict?: SegmentVerdict }> {
  const source = segmentSource(name, data);
  const start = segmentStart(source.first!, source.segmentSize);
  const upTo = options.upTo ?? start + BigInt(options.partial ? filledLength(data) : source.segmentSize);
  let verdict: SegmentVerdict | undefined;
  const result = await walkWal(source, { upTo }, undefined, (walker) => {
    const pages = walker.pages;
    if (walker.firstLsn < 0 || pages.known.magic === undefined) return;
    verdict = {
      first: walker.firstLsn,
      end: Number(upTo),
      resumeAt: Number(walker.stopped!.at),
      resumePrev: walker.prev,
      records: 0, // set from the result below
      lastValid: walker.endLsn,
      magic: pages.known.magic,
      tli: pages.tli,
      lastPage: pages.lastPage,
    };
  });
  if (verdict) verdict.records = result.records;
  return { result, verdict: result.ok ? verdict : undefined };
}

/** Remember the verdict of a segment file (identified by its `fs.Stats`) for a walk soon after. */
export function rememberSegmentVerdict(stat: fs.Stats, verdict: SegmentVerdict | undefined): void {
  if (verdict) rememberVerdict(fileIdentity(stat), verdict);
}
