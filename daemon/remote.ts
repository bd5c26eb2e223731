import { NeonError, messageOf } from '../core/errors.js';
import { readObject, type Storage } from '../core/storage.js';
import { DEFAULT_SEGMENT_SIZE, isWalFileName, parseLsn, parseSegmentName, segmentOf, walFileOfKey } from '../core/wal.js';
import type { Branch, Snapshot } from '../pageserver/history.js';
import { decodeManifest, lsnOfImageKey, type ImageManifest } from '../pageserver/manifest.js';
import type { WalSpan } from '../pageserver/recovery.js';
import { readStoredRepository } from './storage-sync.js';

/*
 * What a storage holds besides packs, images and WAL (the storage_dest layout, see storage-sync.ts): one record
 * per pushed snapshot, `snapshots/<name>.json`, written after every object it names. A snapshot is in a storage
 * exactly when its record is, so a reader never sees a half-pushed one, and an interrupted push leaves only
 * objects that the next push skips.
 */

/** A WAL file a snapshot needs, by the branch it is stored under. */
export interface WalFileRef {
  branch: string;
  name: string;
  /** Only an unfinished copy exists (`<name>.partial.gz`). */
  partial: boolean;
}

/** `snapshots/<name>.json`: everything a reader needs to bring the snapshot back. */
export interface RemoteSnapshot {
  format: 'neon-snapshot';
  version: 1;
  snapshot: Snapshot;
  systemId: string;
  pgVersion: number;
  /** Key of the base image the snapshot is reached from. */
  image: string;
  /** The WAL from that image's start up to the snapshot, along its line of branches. */
  wal: WalFileRef[];
  pushedAt: string;
}

export const SNAPSHOTS_PREFIX = 'snapshots/';

/** Key of a snapshot's record. */
export function snapshotKey(name: string): string {
  return `${SNAPSHOTS_PREFIX}${name}.json`;
}

/** Parse a snapshot record, refusing one written by a newer neon. */
export function parseRecord(storage: Storage, key: string, body: Buffer): RemoteSnapshot {
  let record: RemoteSnapshot;
  try {
    record = JSON.parse(body.toString('utf8')) as RemoteSnapshot;
  } catch (error) {
    throw new NeonError('corrupt', `${storage.url}/${key} is not valid JSON (${messageOf(error)})`, { status: 502 });
  }
  if (record.format !== 'neon-snapshot') throw new NeonError('bad_format', `${storage.url}/${key} is not a neon snapshot record`);
  if (record.version !== 1) {
    throw new NeonError(
      'bad_format',
      `${storage.url}/${key} was written by a newer neon (format version ${record.version}; this neon reads 1): upgrade neon`,
    );
  }
  return record;
}

/** The snapshot records of a storage, oldest first. */
export async function listRecords(storage: Storage): Promise<RemoteSnapshot[]> {
  const records: RemoteSnapshot[] = [];
  for await (const object of storage.list(SNAPSHOTS_PREFIX)) {
    if (!/^snapshots\/[^/]+\.json$/.test(object.key)) continue;
    records.push(parseRecord(storage, object.key, await readObject(storage, object.key)));
  }
  return records.sort((a, b) => (a.snapshot.createdAt < b.snapshot.createdAt ? -1 : 1));
}

interface StoredHistory {
  branches: Record<string, Branch>;
  snapshots: Record<string, Snapshot>;
}

/** The history a repository pushed to its storage_dest (history.json), if any. */
export async function readStoredHistory(storage: Storage): Promise<StoredHistory | undefined> {
  if (!(await storage.head('history.json'))) return undefined;
  return JSON.parse((await readObject(storage, 'history.json')).toString('utf8')) as StoredHistory;
}

/** The line of branches of `name` in a history: ancestors first, with the LSNs each serves (as History.chain). */
export function chainOf(branches: Record<string, Branch>, name: string): WalSpan[] {
  const lineage: Branch[] = [];
  for (let b: Branch | undefined = branches[name]; b; b = b.parent ? branches[b.parent] : undefined) lineage.unshift(b);
  return lineage.map((branch, i) => ({
    branch: branch.name,
    from: branch.forkLsn ? parseLsn(branch.forkLsn) : 0n,
    to: lineage[i + 1]?.forkLsn ? parseLsn(lineage[i + 1].forkLsn!) : undefined,
  }));
}

/**
 * The WAL files a recovery from `start` to `until` needs along `spans`, chosen from `names` (per branch) as
 * stageWal chooses them: each branch's segments within its span, and every timeline history file.
 */
export function neededWal(spans: WalSpan[], start: bigint, until: bigint, names: (branch: string) => Iterable<string>): WalFileRef[] {
  const size = DEFAULT_SEGMENT_SIZE;
  const first = segmentOf(start, size);
  const needed: WalFileRef[] = [];
  for (const span of spans) {
    const stop = span.to === undefined || until < span.to ? until : span.to;
    const lo = segmentOf(span.from, size);
    const hi = segmentOf(stop, size);
    for (const name of names(span.branch)) {
      const segment = parseSegmentName(name, size);
      if (segment && (segment.segno < first || segment.segno < lo || segment.segno > hi)) continue;
      if (segment || isWalFileName(name)) needed.push({ branch: span.branch, name, partial: false });
    }
  }
  return needed;
}

/**
 * A record for a snapshot that a repository's background sync pushed (its storage_dest: history.json, image
 * manifests, offloaded WAL) rather than `neon snapshot push`: the newest image and the WAL, found by listing.
 */
export async function recordFromHistory(storage: Storage, name: string): Promise<RemoteSnapshot | undefined> {
  const history = await readStoredHistory(storage);
  const snapshot = history?.snapshots[name];
  const stored = await readStoredRepository(storage);
  if (!history || !snapshot || !stored) return undefined;
  const lsn = parseLsn(snapshot.lsn);
  const spans = chainOf(history.branches, snapshot.branch);
  let image: string | undefined;
  for (const span of [...spans].reverse()) {
    const limit = span.to === undefined || lsn < span.to ? lsn : span.to;
    for await (const object of storage.list(`images/${span.branch}/`)) {
      const end = lsnOfImageKey(object.key);
      if (end !== undefined && end <= limit && (!image || end > lsnOfImageKey(image)!)) image = object.key;
    }
    if (image) break;
  }
  if (!image)
    throw new NeonError('no_image', `storage ${storage.url} holds no base image from which snapshot ${name} can be reached`, {
      status: 409,
    });
  const files = new Map<string, Map<string, boolean>>();
  for (const span of spans) {
    const found = new Map<string, boolean>();
    for await (const object of storage.list(`wal/${span.branch}/`)) {
      const file = walFileOfKey(span.branch, object.key);
      if (file && !(found.get(file.name) === false)) found.set(file.name, file.partial);
    }
    files.set(span.branch, found);
  }
  const start = parseLsn((await readRemoteImage(storage, image)).startLsn);
  const wal = neededWal(spans, start, lsn, (branch) => files.get(branch)!.keys()).map((ref) => ({
    ...ref,
    partial: files.get(ref.branch)!.get(ref.name)!,
  }));
  return {
    format: 'neon-snapshot',
    version: 1,
    snapshot,
    systemId: stored.systemId,
    pgVersion: stored.pgVersion,
    image,
    wal,
    pushedAt: '',
  };
}

/** Read and check an image manifest in a storage. */
export async function readRemoteImage(storage: Storage, key: string): Promise<ImageManifest> {
  return decodeManifest(`${key} in ${storage.url}`, await readObject(storage, key));
}

/** The record of snapshot `name` in a storage (the newest one when no name is given), pushed or synced. */
export async function findRemoteSnapshot(storage: Storage, name?: string): Promise<RemoteSnapshot> {
  const stored = await readStoredRepository(storage);
  if (!stored)
    throw new NeonError('no_repository', `storage ${storage.url} holds no neon repository (nothing was pushed there)`, { status: 404 });
  const records = await listRecords(storage);
  if (name) {
    const found = records.find((r) => r.snapshot.name === name) ?? (await recordFromHistory(storage, name));
    if (found) return found;
    const known = records.map((r) => r.snapshot.name).join(', ') || 'none';
    throw new NeonError('snapshot_not_found', `storage ${storage.url} holds no snapshot named ${name} (it holds: ${known})`, {
      status: 404,
    });
  }
  if (records.length) return records[records.length - 1];
  const history = await readStoredHistory(storage);
  const newest = Object.values(history?.snapshots ?? {})
    .sort((a, b) => (a.createdAt < b.createdAt ? -1 : 1))
    .pop();
  const record = newest && (await recordFromHistory(storage, newest.name));
  if (!record)
    throw new NeonError('no_snapshot', `storage ${storage.url} holds no snapshot yet: push one with neon snapshot push NAME --to ...`, {
      status: 404,
    });
  return record;
}
