import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pullPacks, pushPacks } from '../chunkstore/sync.js';
import { eachLimit } from '../chunkstore/pool.js';
import { NeonError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fs-atomic.js';
import type { Storage } from '../core/storage.js';
import { DEFAULT_SEGMENT_SIZE, packWal, parseLsn, partialObjectKey, segmentName, segmentOf, walObjectKey } from '../core/wal.js';
import { chunkSetOf, encodeManifest, imageKey } from '../pageserver/manifest.js';
import type { Snapshot } from '../pageserver/history.js';
import type { Pageserver } from '../pageserver/pageserver.js';
import type { DaemonContext } from './context.js';
import type { OperationHandle } from './operations.js';
import { trace } from '../lib/trace.js';
import { countingStorage, traced } from './transfer-progress.js';
import { fetchWal } from './transfer-wal.js';
import {
  findRemoteSnapshot,
  neededWal,
  parseRecord,
  readRemoteImage,
  snapshotKey,
  type RemoteSnapshot,
  type WalFileRef,
} from './remote.js';
import { primaryOfBranch } from './snapshots.js';
import { readStoredRepository, type StoredRepository } from './storage-sync.js';
import type { StorageRegistry } from './storages.js';
import { readObject } from '../core/storage.js';

/** What a push or a pull moved. */
export interface TransferResult {
  snapshot: string;
  storage: string;
  /** Bytes sent or received (objects that were there already cost nothing). */
  bytes: number;
  objects: number;
  /** The local branch a pulled snapshot is on. */
  branch?: string;
  /** Nothing to do: the other side had it all. */
  upToDate: boolean;
}

// WAL objects are 16 MB segments before compression: a few at a time keep memory bounded.
const WAL_TRANSFERS = 4;

/** Put unless present; a conflict (another writer's copy of a content-addressed object) counts as present. */
async function putOnce(storage: Storage, key: string, body: Buffer | string): Promise<void> {
  await storage.put(key, body, { ifAbsent: true }).catch((error) => {
    if (!(error instanceof NeonError && error.code === 'conflict')) throw error;
  });
}

/**
 * The segment holding `lsn` becomes a finished file before a push names it: a finished segment never changes, so
 * it is pushed once and pulled once. While the branch's primary runs it switches to a new segment; otherwise
 * the unfinished copy is pushed as it is.
 */
async function finishSegment(daemon: DaemonContext, branch: string, timeline: number, lsn: bigint): Promise<void> {
  const name = segmentName(timeline, segmentOf(lsn, DEFAULT_SEGMENT_SIZE), DEFAULT_SEGMENT_SIZE);
  if (await daemon.wal.isFinished(branch, name)) return;
  const primary = primaryOfBranch(daemon, branch);
  if (primary?.state !== 'running') return;
  await primary.query('select pg_switch_wal()');
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; await sleep(50)) {
    if (await daemon.wal.isFinished(branch, name)) return;
  }
}

/** Refuse a storage that holds another database system's history. */
function checkSystem(storage: Storage, stored: StoredRepository | undefined, systemId: string): void {
  if (stored && stored.systemId !== systemId) {
    throw new NeonError(
      'system_mismatch',
      `storage ${storage.url} holds the history of database system ${stored.systemId}, not ${systemId}`,
      { status: 409 },
    );
  }
}

/**
 * Push snapshot `name` to `storage`: the packs its image references that the storage lacks, the base image
 * manifest, the WAL from the image to the snapshot, and last the snapshot record. Every object is skipped when it
 * is there, so a push that was interrupted continues where it stopped.
 */
export async function pushSnapshot(daemon: DaemonContext, target: Storage, name: string, given: OperationHandle): Promise<TransferResult> {
  const op = traced(given, `push ${name}`);
  const { pageserver } = daemon;
  const snapshot = pageserver.history.snapshot(name);
  const lsn = parseLsn(snapshot.lsn);
  // Independent look-ups at once: each is a round trip to the store (or a large manifest to read).
  const [image, stored, existing] = await Promise.all([
    pageserver.chooseImage(snapshot.branch, { lsn }),
    readStoredRepository(target),
    target.head(snapshotKey(name)),
  ]);
  checkSystem(target, stored, image.systemId);
  let moved = { bytes: 0, objects: 0 };
  const storage = countingStorage(target, (bytes, objects) => {
    moved = { bytes: moved.bytes + bytes, objects: moved.objects + objects };
    op.add(bytes, objects);
  });
  if (existing) {
    const there = parseRecord(target, snapshotKey(name), await readObject(target, snapshotKey(name)));
    if (there.snapshot.lsn !== snapshot.lsn || there.systemId !== image.systemId) {
      throw new NeonError(
        'snapshot_exists',
        `storage ${target.url} holds another snapshot named ${name} (at ${there.snapshot.lsn}): rename yours`,
        {
          status: 409,
        },
      );
    }
    return { snapshot: name, storage: target.url, bytes: 0, objects: 0, upToDate: true };
  }
  op.step('checking');
  // The segment switch waits for the safekeepers; it runs beside the pack upload, which does not need it.
  const finishing = finishSegment(daemon, snapshot.branch, snapshot.timeline, lsn);
  finishing.catch(() => undefined); // awaited below; this only keeps an early failure from being unhandled
  // Only the packs this snapshot's image references: other snapshots' data stays local until they are pushed.
  const chunks = chunkSetOf([image]);
  await pushPacks(pageserver.store, storage, { chunks, onPlan: (bytes) => op.step('packs', bytes) });
  await finishing;
  op.step('image');
  const key = imageKey(image.branch, parseLsn(image.endLsn));
  if (!(await target.head(key))) await putOnce(storage, key, fs.readFileSync(path.join(pageserver.dir, ...key.split('/'))));
  op.step('wal', null); // compressed sizes are known only once compressed
  const refs = await pushWal(daemon, storage, snapshot, parseLsn(image.startLsn));
  op.step('record');
  // repository.json is only ever created, never changed: one found at the start needs no second look.
  if (!stored) {
    checkSystem(target, await readStoredRepository(target), image.systemId);
    const login = daemon.compute('main').record;
    const repository: StoredRepository = {
      format: 'neon-repository',
      version: 1,
      systemId: image.systemId,
      pgVersion: image.pgVersion,
      createdAt: new Date().toISOString(),
      login: { user: login.user, database: login.database },
    };
    await putOnce(storage, 'repository.json', JSON.stringify(repository, null, 2));
  }
  const record: RemoteSnapshot = {
    format: 'neon-snapshot',
    version: 1,
    snapshot,
    systemId: image.systemId,
    pgVersion: image.pgVersion,
    image: key,
    wal: refs.sort((a, b) => (a.branch + a.name < b.branch + b.name ? -1 : 1)),
    pushedAt: new Date().toISOString(),
  };
  await storage.put(snapshotKey(name), JSON.stringify(record, null, 2));
  trace('transfer', `push ${name}: done`);
  return { snapshot: name, storage: target.url, ...moved, upToDate: false };
}

/**
 * Send the WAL from `start` to the snapshot along its line of branches: finished segments the storage lacks
 * (once), and the unfinished copy of a segment still being written (replaced: it grows). Returns what the
 * snapshot record names.
 */
async function pushWal(daemon: DaemonContext, storage: Storage, snapshot: Snapshot, start: bigint): Promise<WalFileRef[]> {
  const spans = daemon.pageserver.history.chain(snapshot.branch);
  const local = new Map<string, Set<string>>();
  for (const span of spans) local.set(span.branch, await daemon.wal.names(span.branch));
  const wal = neededWal(spans, start, parseLsn(snapshot.lsn), (branch) => local.get(branch)!);
  const remote = new Set<string>();
  for await (const object of storage.list('wal/')) remote.add(object.key);
  const refs: WalFileRef[] = [];
  await eachLimit(wal, WAL_TRANSFERS, async (ref) => {
    const finished = await daemon.wal.isFinished(ref.branch, ref.name);
    refs.push({ ...ref, partial: !finished });
    if (finished && remote.has(walObjectKey(ref.branch, ref.name))) return;
    const best = await daemon.wal.best(ref.branch, ref.name);
    if (!best) {
      throw new NeonError(
        'wal_missing',
        `WAL file ${ref.name} of branch ${ref.branch} is gone: snapshot ${snapshot.name} cannot be pushed`,
        {
          status: 409,
        },
      );
    }
    const packed = await packWal(best.bytes);
    if (finished) await putOnce(storage, walObjectKey(ref.branch, ref.name), packed);
    else await storage.put(partialObjectKey(ref.branch, ref.name), packed); // it grows: the newest copy replaces
  });
  return refs;
}

/** What a pull writes into. */
export interface PullTarget {
  pageserver: Pageserver;
  repoDir: string;
  registry: StorageRegistry;
  pgVersion: number;
}

/** The local root branch a pulled snapshot lives on. */
export function pulledBranchName(snapshot: string): string {
  return `pulled.${snapshot}`.slice(0, 63);
}

/**
 * Pull a snapshot from `source` into the repository: the packs holding chunks it lacks, the WAL from the image to
 * the snapshot (into `<repo>/pulled/wal/<branch>/`; a file pulled before with another snapshot from the same
 * storage is linked, not fetched), the image manifest, and last the branch and the snapshot in the history, so
 * an interrupted pull leaves no snapshot and the next one skips what is there.
 */
export async function pullSnapshot(
  into: PullTarget,
  source: Storage,
  storageName: string | null,
  wanted: string | undefined,
  given: OperationHandle,
  options: { branch?: string; rename?: boolean } = {},
): Promise<TransferResult & { branch: string; record: RemoteSnapshot }> {
  const op = traced(given, `pull ${wanted ?? 'newest'}`);
  op.step('checking');
  const record = await findRemoteSnapshot(source, wanted);
  const { snapshot } = record;
  if (record.pgVersion !== into.pgVersion) {
    throw new NeonError(
      'bad_pg_version',
      `snapshot ${snapshot.name} in ${source.url} is of PostgreSQL ${record.pgVersion}; this repository runs ${into.pgVersion}`,
    );
  }
  const { history } = into.pageserver;
  const pulled = await into.registry.pulled();
  const same = (name: string) => {
    const local = history.hasSnapshot(name) ? history.snapshot(name) : undefined;
    return local && pulled[local.branch]?.url === source.url && local.lsn === snapshot.lsn ? local : undefined;
  };
  let localName = snapshot.name;
  // A name taken here by another snapshot: refused for an explicit pull; for a compute, the copy gets a name of its own.
  if (history.hasSnapshot(localName) && !same(localName) && options.rename)
    localName = `${snapshot.name}.${storageName ?? 'pulled'}`.slice(0, 63);
  const already = same(localName);
  if (already) return { snapshot: localName, storage: source.url, bytes: 0, objects: 0, branch: already.branch, record, upToDate: true };
  if (history.hasSnapshot(localName)) {
    throw new NeonError('snapshot_exists', `this repository already has a snapshot named ${localName}: delete or rename it first`, {
      status: 409,
    });
  }
  const branch = options.branch ?? pulledBranchName(localName);
  if (history.hasBranch(branch) && pulled[branch]?.url !== source.url) {
    throw new NeonError('branch_exists', `a branch named ${branch} already exists here`, { status: 409 });
  }
  let moved = { bytes: 0, objects: 0 };
  const storage = countingStorage(source, (bytes, objects) => {
    moved = { bytes: moved.bytes + bytes, objects: moved.objects + objects };
    op.add(bytes, objects);
  });
  const manifest = await readRemoteImage(storage, record.image);
  op.step('packs');
  await pullPacks(into.pageserver.store, storage, chunkSetOf([manifest]));
  op.step('wal');
  const walDir = path.join(into.repoDir, 'pulled', 'wal');
  const siblings = Object.entries(pulled)
    .filter(([, p]) => p.url === source.url)
    .map(([b]) => path.join(walDir, b));
  fs.mkdirSync(path.join(walDir, branch), { recursive: true });
  await eachLimit(record.wal, WAL_TRANSFERS, async (ref) => {
    const file = ref.name + (ref.partial ? '.partial' : '');
    const target = path.join(walDir, branch, file);
    if (fs.existsSync(target)) return;
    const earlier = ref.partial ? undefined : siblings.map((dir) => path.join(dir, file)).find((f) => fs.existsSync(f));
    if (earlier) return fs.linkSync(earlier, target);
    const key = ref.partial ? partialObjectKey(ref.branch, ref.name) : walObjectKey(ref.branch, ref.name);
    await fetchWal(storage, key, target);
  });
  op.step('history');
  const localKey = imageKey(branch, parseLsn(manifest.endLsn));
  const { checksum: _checksum, ...rest } = manifest;
  const file = path.join(into.pageserver.dir, ...localKey.split('/'));
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await writeFileAtomic(file, await encodeManifest({ ...rest, branch }));
  await into.registry.recordPulled(branch, {
    storage: storageName,
    url: source.url,
    snapshot: localName,
    lsn: snapshot.lsn,
    pulledAt: new Date().toISOString(),
  });
  if (!history.hasBranch(branch))
    await history.addBranch({ name: branch, parent: null, forkLsn: null, createdAt: new Date().toISOString() });
  await history.addSnapshot({ ...snapshot, name: localName, branch, auto: false });
  trace('transfer', `pull ${localName}: done`);
  return { snapshot: localName, storage: source.url, ...moved, branch, record, upToDate: false };
}
