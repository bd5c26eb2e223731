import fs from 'node:fs';
import path from 'node:path';
import { type Lsn, parseSegmentName, segmentName, segmentOf, segmentStart } from '../core/wal.js';

/** A segment that was completed: its bytes are all written, fsynced, and it has its final name. */
export interface CompletedSegment {
  timeline: number;
  segno: bigint;
  name: string;
  path: string;
}

const PARTIAL = '.partial';
const ZEROS = Buffer.alloc(1024 * 1024);

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Writes a WAL stream into segment files the way pg_receivewal does: each segment starts life as a
 * `<name>.partial` file filled with zeros to its full size (so later fdatasyncs need no metadata update), bytes
 * are written at their offset only, `flush()` makes everything written durable with one fdatasync (group
 * commit), and a full segment is fsynced, renamed to its final name and its folder fsynced.
 *
 * Synchronous I/O on purpose: the safekeeper is a process of its own, and while an fsync runs the socket keeps
 * filling, so the next flush covers everything that arrived meanwhile.
 */
export class WalWriter {
  /** End of the bytes written so far. */
  written: Lsn = 0n;
  /** End of the bytes made durable. */
  flushed: Lsn = 0n;
  private fd?: number;
  private segno = -1n;
  private timeline = 0;
  private dirty = false;

  constructor(
    readonly dir: string,
    readonly segmentSize: number,
    private readonly onComplete: (segment: CompletedSegment) => void = () => undefined,
  ) {
    fs.mkdirSync(dir, { recursive: true });
  }

  /** Where to resume after a restart: the start of the newest unfinished segment, or after the newest finished one. */
  static resumePoint(dir: string, segmentSize: number): { timeline: number; lsn: Lsn } | undefined {
    let best: { timeline: number; segno: bigint; partial: boolean } | undefined;
    for (const file of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
      const partial = file.endsWith(PARTIAL);
      const parsed = parseSegmentName(partial ? file.slice(0, -PARTIAL.length) : file, segmentSize);
      if (!parsed) continue;
      const newer = !best || parsed.timeline > best.timeline || (parsed.timeline === best.timeline && parsed.segno > best.segno);
      if (newer) best = { ...parsed, partial };
    }
    if (!best) return undefined;
    const segno = best.partial ? best.segno : best.segno + 1n;
    return { timeline: best.timeline, lsn: segmentStart(segno, segmentSize) };
  }

  /** Position the writer at `lsn` (a segment boundary after a restart) on `timeline`. */
  open(timeline: number, lsn: Lsn): void {
    this.closeFile();
    this.timeline = timeline;
    this.written = lsn;
    this.flushed = lsn;
  }

  /** Path of a segment file (finished name, or the `.partial` one). */
  pathOf(timeline: number, segno: bigint, partial: boolean): string {
    return path.join(this.dir, segmentName(timeline, segno, this.segmentSize) + (partial ? PARTIAL : ''));
  }

  /** The segment being written and how far it is durable, for serving the newest unfinished segment. */
  current(): { timeline: number; segno: bigint; path: string; flushed: Lsn } | undefined {
    if (this.fd === undefined) return undefined;
    return { timeline: this.timeline, segno: this.segno, path: this.pathOf(this.timeline, this.segno, true), flushed: this.flushed };
  }

  /** Write `data`, which belongs at `lsn`; bytes already written may come again (a resend) and are rewritten. */
  write(lsn: Lsn, data: Buffer): void {
    if (lsn > this.written) {
      throw new Error(`WAL gap: received ${lsn} but only have up to ${this.written}`);
    }
    let at = lsn;
    let offset = 0;
    while (offset < data.length) {
      const segno = segmentOf(at, this.segmentSize);
      if (segno !== this.segno) this.openSegment(segno);
      const within = Number(at - segmentStart(segno, this.segmentSize));
      const length = Math.min(data.length - offset, this.segmentSize - within);
      let done = 0;
      while (done < length) done += fs.writeSync(this.fd!, data, offset + done, length - done, within + done);
      this.dirty = true;
      offset += length;
      at += BigInt(length);
      if (at > this.written) this.written = at;
      if (within + length === this.segmentSize) this.completeSegment();
    }
  }

  /** Make everything written durable; returns the flushed position. */
  flush(): Lsn {
    if (this.dirty && this.fd !== undefined) fs.fdatasyncSync(this.fd);
    this.dirty = false;
    this.flushed = this.written;
    return this.flushed;
  }

  /** Flush and close the current segment (it stays `.partial`: after a timeline switch it never completes). */
  close(): void {
    this.flush();
    this.closeFile();
  }

  private closeFile(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
    this.segno = -1n;
  }

  private openSegment(segno: bigint): void {
    this.closeFile();
    const partial = this.pathOf(this.timeline, segno, true);
    const finished = this.pathOf(this.timeline, segno, false);
    if (fs.existsSync(finished) && !fs.existsSync(partial)) {
      // A resend of a segment we already completed (after a reconnect): rewrite it in place.
      this.fd = fs.openSync(finished, 'r+');
    } else if (fs.existsSync(partial) && fs.statSync(partial).size === this.segmentSize) {
      this.fd = fs.openSync(partial, 'r+');
    } else {
      const fd = fs.openSync(partial, 'w');
      for (let done = 0; done < this.segmentSize; done += ZEROS.length)
        fs.writeSync(fd, ZEROS, 0, Math.min(ZEROS.length, this.segmentSize - done));
      fs.fsyncSync(fd);
      fsyncDir(this.dir);
      this.fd = fd;
    }
    this.segno = segno;
  }

  private completeSegment(): void {
    const segno = this.segno;
    fs.fsyncSync(this.fd!);
    this.dirty = false;
    this.flushed = this.written;
    this.closeFile();
    const partial = this.pathOf(this.timeline, segno, true);
    const finished = this.pathOf(this.timeline, segno, false);
    if (fs.existsSync(partial)) {
      fs.renameSync(partial, finished);
      fsyncDir(this.dir);
    }
    this.onComplete({ timeline: this.timeline, segno, name: path.basename(finished), path: finished });
  }
}
