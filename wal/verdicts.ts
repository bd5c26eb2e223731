// Verdicts of segment files verified moments ago, so that a compute's creation checks each segment once: the
// WAL store verifies the copy it serves (./store.ts), and the check of the staged WAL before recovery
// (./reach.ts) then walks only the records that cross from one segment into the next. A verdict is tied to the
// file's identity (device, inode, size, mtime): a hard link to the verified file shares it, a rewritten file
// does not. Verdicts expire after minutes: `neon verify` never uses them (it looks for bytes that rot on disk).
import fs from 'node:fs';

/** What verifying one segment from its first record found, as far as a walk over several segments needs it. */
export interface SegmentVerdict {
  /** The segment's first record, and the end of the range checked (the segment's end, or a flush point). */
  first: number;
  end: number;
  /** Where the walk stopped (a record running past `end`, or `end` itself) and the record before it. */
  resumeAt: number;
  resumePrev: number;
  /** Records checked, and the end of the last of them. */
  records: number;
  lastValid: number;
  /** Page header context after the last page checked. */
  magic: number;
  tli: number;
  lastPage: number;
}

const TTL_MS = 10 * 60_000;
const MAX_ENTRIES = 4096;
const cache = new Map<string, { verdict: SegmentVerdict; at: number }>();

/** The identity a verdict is tied to. */
export function fileIdentity(stat: fs.Stats): string {
  return `${stat.dev}:${stat.ino}:${stat.size}:${stat.mtimeMs}`;
}

/** Remember a verdict for the file of identity `identity`. */
export function rememberVerdict(identity: string, verdict: SegmentVerdict): void {
  cache.delete(identity);
  if (cache.size >= MAX_ENTRIES) cache.delete(cache.keys().next().value!);
  cache.set(identity, { verdict, at: Date.now() });
}

/** The recent verdict of a file as it is now, if any. */
export function verdictOf(file: string): SegmentVerdict | undefined {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch {
    return undefined;
  }
  const hit = cache.get(fileIdentity(stat));
  if (!hit) return undefined;
  if (Date.now() - hit.at > TTL_MS) {
    cache.delete(fileIdentity(stat));
    return undefined;
  }
  return hit.verdict;
}
