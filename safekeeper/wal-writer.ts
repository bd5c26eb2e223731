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
 * `write()` only queues its bytes (views of the received messages, not copies) while they are contiguous;
 * `writeOut()` writes the queue with one pwritev, so the many XLogData messages of one read from the socket cost
 * one system call. Synchronous I/O on purpose: the safekeeper is a process of its own, and while an fsync runs
 * the socket keeps filling, so the next flush covers everything that arrived meanwhile.
 */
export class WalWriter {
  /** End of the bytes written so far (handed to the OS). */
  written: Lsn = 0n;
  /** End of the bytes received so far: written, or queued to be. */
  received: Lsn = 0n;
  /** End of the bytes made durable. */
  flushed: Lsn = 0n;
  private fd?: number;
  private segno = -1n;
  private timeline = 0;
  private dirty = false;
  /** Bytes queued for one pwritev at `queuedAt` in the current segment file. */
  private readonly queue: Buffer[] = [];
  private queuedBytes = 0;
  private queuedAt = 0;
  private queueEnd: Lsn = 0n;

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
    this.received = lsn;
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

  /**
   * Queue `data`, which belongs at `lsn`, for {@link writeOut}; bytes already received may come again (a resend)
   * and are rewritten. `data` must stay unchanged until the next writeOut (the caller calls it before reusing it).
   */
  write(lsn: Lsn, data: Buffer): void {
    if (lsn > this.received) {
      throw new Error(`WAL gap: received ${lsn} but only have up to ${this.received}`);
    }
    if (lsn !== this.queueEnd) this.writeOut(); // a resend: the queue holds contiguous bytes only
    let at = lsn;
    let offset = 0;
    while (offset < data.length) {
      const segno = segmentOf(at, this.segmentSize);
      if (segno !== this.segno) {
        this.writeOut();
        this.openSegment(segno);
      }
      const within = Number(at - segmentStart(segno, this.segmentSize));
      const length = Math.min(data.length - offset, this.segmentSize - within);
      if (!this.queuedBytes) this.queuedAt = within;
      this.queue.push(offset === 0 && length === data.length ? data : data.subarray(offset, offset + length));
      this.queuedBytes += length;
      offset += length;
      at += BigInt(length);
      this.queueEnd = at;
      if (at > this.received) this.received = at;
      if (within + length === this.segmentSize) {
        this.writeOut();
        this.completeSegment();
      }
    }
  }

  /** Write what {@link write} queued, with one pwritev (more only if the kernel writes it in parts). */
  writeOut(): void {
    if (!this.queuedBytes) return;
    let position = this.queuedAt;
    let done = fs.writevSync(this.fd!, this.queue, position);
    position += done;
    // A short write is rare (a full disk throws): write the rest buffer by buffer.
    for (const buffer of this.queue) {
      if (done >= buffer.length) {
        done -= buffer.length;
        continue;
      }
      for (let from = done; from < buffer.length;) {
        const n = fs.writeSync(this.fd!, buffer, from, buffer.length - from, position);
        from += n;
        position += n;
      }
      done = 0;
    }
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.dirty = true;
    if (this.received > this.written) this.written = this.received;
  }

  /** Make everything received durable; returns the flushed position. */
  flush(): Lsn {
    this.writeOut();
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
    this.writeOut();
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
