import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, pipeline, type Readable } from 'node:stream';
import { NeonError } from '../core/errors.js';
import { tempNameFor } from '../core/fs-atomic.js';
import { readObject, type Storage } from '../core/storage.js';
import { corrupt, decodeIndex, isHash, type PackEntries } from './format.js';
import { isMissing } from './files.js';
import { sharedBuffer, type ChunkStore } from './index.js';
import { eachLimit } from './pool.js';

/*
 * Packs in storage: `<prefix><id>.pack` and `<prefix><id>.idx`, the same bytes as on disk. The pack is uploaded
 * before its index, so an index in storage means its pack is complete; readers only consider packs that have
 * both. Both are content-addressed, so a conditional put that finds the object there already is a success.
 */

/** What {@link pushPacks} sent. */
export interface PushResult {
  /** Ids of the packs of which something was uploaded. */
  uploaded: string[];
  /** Bytes uploaded (packs and indexes). */
  bytes: number;
}

/** What {@link pullPacks} fetched. */
export interface PullResult {
  /** Ids of the packs downloaded and installed. */
  downloaded: string[];
  /** Bytes downloaded (packs and the indexes that were not cached). */
  bytes: number;
}

const PACK_KEY = /^([0-9a-f]{64})\.(pack|idx)$/;
// Object stores answer many requests at once; a few in flight hide their latency without hogging memory.
const UPLOADS = 4;
const DOWNLOADS = 4;
const INDEX_FETCHES = 8;

interface RemotePack {
  pack?: number;
  idx?: number;
}

/** The packs under `prefix`, by id, with the sizes of their objects. One listing. */
async function listRemote(storage: Storage, prefix: string): Promise<Map<string, RemotePack>> {
  const found = new Map<string, RemotePack>();
  for await (const object of storage.list(prefix)) {
    if (!object.key.startsWith(prefix)) continue;
    const match = PACK_KEY.exec(object.key.slice(prefix.length));
    if (!match) continue;
    const entry = found.get(match[1]) ?? {};
    entry[match[2] as 'pack' | 'idx'] = object.size;
    found.set(match[1], entry);
  }
  return found;
}

/** Put `body` under `key` unless it is there; false when it was (a conflict is another writer's identical copy). */
async function putOnce(storage: Storage, key: string, body: Buffer | Readable, replace: boolean): Promise<boolean> {
  try {
    await storage.put(key, body, replace ? {} : { ifAbsent: true });
    return true;
  } catch (error) {
    if (error instanceof NeonError && error.code === 'conflict') return false;
    throw error;
  }
}

/** Options of {@link pushPacks}. */
export interface PushOptions {
  /** Key prefix of the packs in storage (default `chunks/`). */
  prefix?: string;
  /**
   * Push only the packs holding these chunks (what one snapshot's image references) rather than every local
   * pack. Rejects with `chunk_missing` when the store lacks one of them.
   */
  chunks?: Iterable<string>;
  /** Told the bytes about to be sent, once the remote was listed (for progress totals). */
  onPlan?: (bytes: number) => void;
}

/**
 * Upload the packs of `store` (all, or those holding `options.chunks`) that `storage` lacks: seals the pending
 * pack, lists the storage once, then for each missing pack uploads the pack, checked against its id as it
 * streams so that a damaged local file is never published, and then its index. A pack object of the wrong size
 * (a damaged upload) is replaced: its content is fixed by its id.
 */
export async function pushPacks(store: ChunkStore, storage: Storage, options: PushOptions = {}): Promise<PushResult> {
  const prefix = options.prefix ?? 'chunks/';
  await store.flush();
  const ids = options.chunks ? packsHolding(store, options.chunks) : store.packs();
  const remote = await listRemote(storage, prefix);
  const plan: { id: string; pack?: number; replace: boolean; index: boolean }[] = [];
  let planned = 0;
  for (const id of ids) {
    const there = remote.get(id);
    const size = (await fs.stat(store.packFile(id))).size;
    const step = { id, pack: there?.pack !== size ? size : undefined, replace: there?.pack !== undefined, index: there?.idx === undefined };
    if (step.pack === undefined && !step.index) continue;
    plan.push(step);
    planned += (step.pack ?? 0) + (step.index ? (await fs.stat(store.indexFile(id))).size : 0);
  }
  options.onPlan?.(planned);
  let bytes = 0;
  await eachLimit(plan, UPLOADS, async ({ id, pack, replace, index }) => {
    if (pack !== undefined) {
      const packFile = store.packFile(id);
      // Hashed on its way out rather than read twice: a mismatch fails the stream, so the put publishes nothing.
      // (Reading the whole pack into a reused buffer and hashing it on a worker first was slower and held more
      // memory in an A/B: reading, hashing and sending no longer overlapped.)
      const body = pipeline(createReadStream(packFile), checkedAgainst(id, packFile), () => undefined);
      if (await putOnce(storage, `${prefix}${id}.pack`, body, replace)) bytes += pack;
    }
    if (index) {
      const indexFile = store.indexFile(id);
      const data = await fs.readFile(indexFile);
      decodeIndex(data, indexFile, id); // never publish a damaged index
      if (await putOnce(storage, `${prefix}${id}.idx`, data, false)) bytes += data.length;
    }
  });
  return { uploaded: plan.map((step) => step.id), bytes };
}

/** Ids of the written packs holding `chunks`, in the store's pack order. */
function packsHolding(store: ChunkStore, chunks: Iterable<string>): string[] {
  const ids = new Set<string>();
  for (const hash of chunks) {
    const pack = store.locate(hash)?.pack;
    if (pack) ids.add(pack);
    // Held but in no pack: a chunk every store holds implicitly (the zero page), nothing to send.
    else if (!store.has(hash)) {
      throw new NeonError('chunk_missing', `chunk ${hash} is not in the chunk store ${store.dir}: it cannot be pushed`, { status: 404 });
    }
  }
  return store.packs().filter((id) => ids.has(id));
}

/** A pass-through that fails at the end unless what went through hashes (SHA-256) to `id`. */
function checkedAgainst(id: string, file: string): Transform {
  const hash = createHash('sha256');
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      hash.update(chunk);
      done(null, chunk);
    },
    flush(done) {
      const got = hash.digest('hex');
      done(got === id ? null : corrupt(`${file} is damaged (its content does not hash to its name); it was not uploaded`));
    },
  });
}

/**
 * Fetch from `storage` the packs holding the chunks of `hashes` that `store` lacks. The indexes of the remote
 * packs are read (and cached in `<dir>/remote-idx/`, they never change) until every wanted chunk is found;
 * rejects with `chunk_missing` before downloading anything when some are in no pack. Each pack is checked
 * against its id and every chunk against its hash before it is installed; a damaged one is refused with
 * `corrupt` and nothing of it is installed (packs verified before it stay: they are valid).
 */
export async function pullPacks(store: ChunkStore, storage: Storage, hashes: Iterable<string>, prefix = 'chunks/'): Promise<PullResult> {
  const wanted = new Set<string>();
  for (const hash of hashes) {
    if (!isHash(hash)) throw new NeonError('bad_hash', `"${hash}" is not a chunk hash (64 lowercase hex digits)`);
    if (!store.has(hash)) wanted.add(hash);
  }
  if (!wanted.size) return { downloaded: [], bytes: 0 };
  const remote = await listRemote(storage, prefix);
  const local = new Set(store.packs());
  const candidates = [...remote].filter(([id, r]) => r.pack !== undefined && r.idx !== undefined && !local.has(id)).map(([id]) => id);
  const cache = path.join(store.dir, 'remote-idx');
  await fs.mkdir(cache, { recursive: true });
  let bytes = 0;
  const chosen: string[] = [];
  await eachLimit(candidates, INDEX_FETCHES, async (id) => {
    if (!wanted.size) return;
    const { entries, fetched } = await remoteIndex(storage, `${prefix}${id}.idx`, id, path.join(cache, `${id}.idx`));
    bytes += fetched;
    let useful = false;
    for (let i = 0; i < entries.count; i++) if (wanted.delete(entries.hashes[i])) useful = true;
    if (useful) chosen.push(id);
  });
  if (wanted.size) {
    const example = wanted.values().next().value;
    throw new NeonError(
      'chunk_missing',
      `${wanted.size} wanted chunk(s) are in no pack under ${storage.url} ${prefix} (e.g. ${example}); nothing was downloaded`,
      {
        status: 404,
      },
    );
  }
  const downloaded: string[] = [];
  const buffers = new BufferPool(Math.max(...chosen.map((id) => remote.get(id)!.pack!)));
  await eachLimit(chosen, DOWNLOADS, async (id) => {
    const key = `${prefix}${id}.pack`;
    const buffer = buffers.take();
    try {
      const body = await readSized(storage, key, remote.get(id)!.pack!, buffer);
      bytes += body.length;
      await store.importPack(body, { id, source: `${key} in ${storage.url}` });
    } finally {
      buffers.give(buffer);
    }
    downloaded.push(id);
    // The pack's own index is now local: the cached copy is no longer needed.
    await fs.rm(path.join(cache, `${id}.idx`), { force: true });
  });
  return { downloaded, bytes };
}

/** The index of remote pack `id`: from the local cache when it is there and intact, else from storage. */
async function remoteIndex(storage: Storage, key: string, id: string, cached: string): Promise<{ entries: PackEntries; fetched: number }> {
  try {
    return { entries: decodeIndex(await fs.readFile(cached), cached, id).entries, fetched: 0 };
  } catch (error) {
    if (!isMissing(error) && !(error instanceof NeonError && error.code === 'corrupt')) throw error;
  }
  const body = await readObject(storage, key);
  const { entries } = decodeIndex(body, `${key} in ${storage.url}`, id);
  // A cache, checked by its checksum when read: a rename keeps readers from half a file, no fsync is needed.
  const temp = tempNameFor(cached);
  await fs.writeFile(temp, body);
  await fs.rename(temp, cached);
  return { entries, fetched: body.length };
}

/**
 * Pack buffers, reused pack after pack: touching fresh memory is what a pull cost most here (16 MiB of new pages
 * took 150–1000 ms on this machine's VM, the same copy into reused memory 2 ms), so a pull allocates one
 * buffer per download in flight, in shared memory so that the hashing workers hash it in place.
 */
class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(private readonly size: number) {}

  take(): Buffer {
    return this.free.pop() ?? sharedBuffer(this.size);
  }

  give(buffer: Buffer): void {
    this.free.push(buffer);
  }
}

/**
 * Read an object the listing said is `size` bytes into `out` (at least that long), rather than a list of pieces
 * concatenated at the end (a copy of every pack). A shorter object is left for the caller's hash check to refuse.
 */
async function readSized(storage: Storage, key: string, size: number, out: Buffer): Promise<Buffer> {
  let at = 0;
  for await (const chunk of await storage.get(key)) {
    const piece = chunk as Buffer;
    if (at + piece.length > size)
      throw corrupt(`${key} in ${storage.url} is longer than listed (${size} bytes); nothing of it was installed`);
    piece.copy(out, at);
    at += piece.length;
  }
  return out.subarray(0, at);
}
