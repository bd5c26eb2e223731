import fs from 'node:fs';
import path from 'node:path';
import { readObject, type Storage } from '../core/storage.js';
import { type PartialSegment, type WalSource } from '../core/hooks.js';
import { copyEnd, holderSegmentSize, localCopies, type WalCopy, type WalHolder } from './copies.js';
import { checkSegment, filledLength, rememberSegmentVerdict, segmentSource } from './verify.js';
import { fileIdentity, type SegmentVerdict } from './verdicts.js';
import {
  isWalFileName,
  type Lsn,
  parseLsn,
  PARTIAL_SUFFIX as PARTIAL,
  partialObjectKey,
  safekeeperWalDir,
  segmentName,
  segmentOf,
  segmentStart,
  unpackWal,
  walFileOfKey,
  walObjectKey,
  walObjectPrefix,
} from '../core/wal.js';

export type { WalHolder };

const SEGMENT = /^[0-9A-F]{24}$/;

/** A copy of a WAL file chosen to serve. */
export interface BestCopy {
  bytes: Buffer;
  /** The local file, when it is one. */
  file?: string;
  /** A safekeeper's name, or `storage`. */
  from: string;
  /** False when no copy verified and this damaged one is the best there is. */
  ok: boolean;
  /** How far a segment holds WAL (its end, or the flush point of an unfinished one); 0 for a history file. */
  end: Lsn;
  /** The verdict of a segment that verified, and the identity of the local file it was read from. */
  verdict?: SegmentVerdict;
  identity?: string;
}

/**
 * WAL by file name, wherever it is: on a safekeeper's disk (finished segments, history files and the newest
 * unfinished segment), else in storage_dest (offloaded, verified on read). Recovery is served from here.
 */
export class WalStore implements WalSource {
  constructor(
    private readonly safekeepers: () => WalHolder[],
    private readonly storage?: Storage,
    /** The branches the safekeepers stream now. */
    readonly activeBranches: () => string[] = () => ['main'],
  ) {}

  private dirOf(node: WalHolder, branch: string): string {
    return safekeeperWalDir(node.dir, branch);
  }

  private segmentSize(node: WalHolder): number | undefined {
    try {
      return (JSON.parse(fs.readFileSync(path.join(node.dir, 'system.json'), 'utf8')) as { segmentSize: number }).segmentSize;
    } catch {
      return undefined;
    }
  }

  /** The newest unfinished segment of the branch a safekeeper streams now, from the one that flushed the most. */
  partial(branch: string): PartialSegment | undefined {
    let best: (PartialSegment & { lsn: bigint }) | undefined;
    for (const node of this.safekeepers()) {
      const { flushLsn, timeline } = node.statusOf(branch);
      const size = this.segmentSize(node);
      if (!flushLsn || !timeline || !size) continue;
      const lsn = parseLsn(flushLsn);
      const segment = segmentName(timeline, segmentOf(lsn, size), size);
      const file = path.join(this.dirOf(node, branch), segment + PARTIAL);
      if (fs.existsSync(file) && (!best || lsn > best.lsn)) {
        best = { branch, segment, path: file, flushLsn, safekeeper: node.name, lsn };
      }
    }
    if (!best) return undefined;
    const { lsn: _lsn, ...partial } = best;
    return partial;
  }

  /** Names of the WAL files of `branch` held anywhere: segments (finished or not) and history files. */
  async names(branch: string): Promise<Set<string>> {
    const names = new Set<string>();
    for (const node of this.safekeepers()) {
      const dir = this.dirOf(node, branch);
      for (const file of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
        const name = file.endsWith(PARTIAL) ? file.slice(0, -PARTIAL.length) : file;
        if (isWalFileName(name)) names.add(name);
      }
    }
    if (this.storage) {
      for await (const object of this.storage.list(walObjectPrefix(branch))) {
        const file = walFileOfKey(branch, object.key);
        if (file) names.add(file.name);
      }
    }
    return names;
  }

  /**
   * Where the best local copy of a file is: a finished one, else the fullest unfinished one. Not verified: a
   * caller that serves it checks the WAL itself (an incremental image walks it once, see pageserver/incremental.ts).
   */
  localFile(branch: string, name: string): string | undefined {
    if (SEGMENT.test(name)) return this.localCopiesOf(branch, name)[0]?.file;
    // A history file: every safekeeper's is the same.
    return this.safekeepers()
      .map((node) => path.join(this.dirOf(node, branch), name))
      .find((file) => fs.existsSync(file));
  }

  /** The local copies of a segment, best first: finished ones, then unfinished ones, the fullest first. */
  private localCopiesOf(branch: string, name: string): WalCopy[] {
    const copies = localCopies(this.safekeepers(), branch).filter((copy) => copy.name === name);
    const finished = copies.filter((copy) => !copy.partial);
    const partials = copies.filter((copy) => copy.partial);
    // Only when safekeepers disagree is it worth reading their 16 MB files to see which holds the most.
    if (partials.length < 2) return [...finished, ...partials];
    const ends = new Map(partials.map((copy) => [copy, copyEnd(copy, branch, holderSegmentSize(copy.holder))]));
    return [...finished, ...partials.sort((a, b) => (ends.get(b)! > ends.get(a)! ? 1 : -1))];
  }

  /** True when a finished copy of a segment exists (on a safekeeper or in storage), not only an unfinished one. */
  async isFinished(branch: string, name: string): Promise<boolean> {
    const local = this.localFile(branch, name);
    if (local) return !local.endsWith(PARTIAL);
    return !!this.storage && !!(await this.storage.head(walObjectKey(branch, name)));
  }

  /**
   * The best copy of a WAL file: the first local one whose records verify up to where it ends, else the offloaded
   * one that does (a flipped byte in one safekeeper's file must not end a recovery early when another copy is
   * good), else the first copy found, damaged as it is (recovery then reports where it breaks). Throws the
   * `corrupt` error when the only copy is a stored object that does not even unpack.
   */
  async best(branch: string, name: string): Promise<BestCopy | undefined> {
    let fallback: BestCopy | undefined;
    if (!SEGMENT.test(name)) {
      const local = this.localFile(branch, name);
      if (local) return { bytes: fs.readFileSync(local), file: local, from: local, ok: true, end: 0n };
    } else {
      for (const copy of this.localCopiesOf(branch, name)) {
        const size = holderSegmentSize(copy.holder);
        const end = copyEnd(copy, branch, size); // before reading: the file holds at least this much
        let bytes: Buffer;
        let identity: string;
        try {
          const fd = fs.openSync(copy.file, 'r');
          try {
            identity = fileIdentity(fs.fstatSync(fd));
            bytes = fs.readFileSync(fd);
          } finally {
            fs.closeSync(fd);
          }
        } catch {
          continue; // a .partial finished and renamed meanwhile
        }
        const { result, verdict } = await checkSegment(name, bytes, { upTo: end });
        const ok = result.ok;
        const found = { bytes, file: copy.file, from: copy.holder.name, ok, end, verdict, identity };
        if (ok) return found;
        fallback ??= found;
      }
    }
    if (!this.storage) return fallback;
    let damaged: unknown;
    for (const key of [walObjectKey(branch, name), partialObjectKey(branch, name)]) {
      if (!(await this.storage.head(key))) continue;
      let bytes: Buffer;
      try {
        bytes = await unpackWal(key, await readObject(this.storage, key));
      } catch (error) {
        damaged ??= error; // its gzip CRC fails: another copy may be good
        continue;
      }
      const partial = key.endsWith(`${PARTIAL}.gz`);
      const segment = SEGMENT.test(name) ? segmentSource(name, bytes) : undefined;
      const start = segment ? segmentStart(segment.first!, segment.segmentSize) : 0n;
      const end = segment ? start + BigInt(partial ? filledLength(bytes) : segment.segmentSize) : 0n;
      const checked = segment ? await checkSegment(name, bytes, { upTo: end }) : undefined;
      const ok = !checked || checked.result.ok;
      const found = { bytes, from: 'storage', ok, end, verdict: checked?.verdict };
      if (ok) return found;
      fallback ??= found;
    }
    // The only copy is damaged beyond reading: say so (a `corrupt` error naming the object) rather than "nobody
    // has it", which a reader would take for the end of the WAL.
    if (!fallback && damaged) throw damaged;
    return fallback;
  }

  /**
   * The bytes of a WAL file (`000000010000000000000003`, `00000002.history`), or undefined when nobody has it;
   * a `corrupt` error when its only copy is an object that does not unpack.
   */
  async read(branch: string, name: string): Promise<Buffer | undefined> {
    return (await this.best(branch, name))?.bytes;
  }

  /**
   * Put a copy of a WAL file at `target` (hard-linked when it is a finished local segment that verifies); returns
   * where it came from, or undefined when nobody has it. The verdict of a copy that verified is remembered for
   * the target, so that checking the staged WAL soon after does not walk this segment again.
   */
  async copyTo(branch: string, name: string, target: string): Promise<Omit<BestCopy, 'bytes'> | undefined> {
    const best = await this.best(branch, name);
    if (!best) return undefined;
    const placed = { from: best.from, ok: best.ok, end: best.end, file: best.file };
    if (best.file && !best.file.endsWith(PARTIAL)) {
      try {
        fs.linkSync(best.file, target);
        // Only if the link is to the very file verified (not one renamed over it meanwhile).
        const stat = fs.statSync(target);
        if (fileIdentity(stat) === best.identity) rememberSegmentVerdict(stat, best.verdict);
        return placed;
      } catch {
        // another filesystem: copy below
      }
    }
    fs.writeFileSync(target, best.bytes);
    rememberSegmentVerdict(fs.statSync(target), best.verdict);
    return placed;
  }
}
