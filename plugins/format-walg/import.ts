import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { codecOfName, decompress, extractTar, streamToBuffer } from '../../core/archive.js';
import { NeonError } from '../../core/errors.js';
import {
  checkEmptyTarget,
  emptyDir,
  ensurePgDirs,
  inspectDataDir,
  isCleanShutdown,
  neededWal,
  parseLsn,
  walSegmentName,
  type ImportOptions,
  type ImportResult,
} from '../../core/format.js';
import { readObject, type Storage } from '../../core/storage.js';
import { BASEBACKUPS, FILES_METADATA, INCREMENT_HEADER, majorOf, PAGE_SIZE, parseSentinel, SENTINEL_SUFFIX, sentinelKey, TAR_PARTITIONS, WAL, type FilesMetadata, type Sentinel } from './layout.js';

interface Backup {
  name: string;
  sentinel: Sentinel;
  files?: FilesMetadata;
  tars: string[];
}

/** Read a WAL-G backup (a delta chain from its full backup) and the WAL it needs into `dataDir`. */
export async function importWalg({ storage, dataDir, backup: wanted, log, onProgress }: ImportOptions): Promise<ImportResult> {
  // Validate before writing: the backup exists, its chain is complete, its version is supported.
  const name = await chooseBackup(storage, wanted);
  const chain: Backup[] = [];
  for (let next: string | undefined = name; next; ) {
    if (chain.length > 1000 || chain.some((b) => b.name === next)) throw new NeonError('bad_backup', `${storage.url}: delta chain of ${name} loops at ${next}`);
    const backup = await loadBackup(storage, next);
    chain.unshift(backup);
    next = backup.sentinel.DeltaFrom;
  }
  const target = chain.at(-1)!;
  const major = majorOf(target.sentinel.PgVersion);
  if (major < 15) throw new NeonError('bad_backup', `${storage.url}: backup ${name} is of PostgreSQL ${major}; neon imports 15 or newer`);
  if (target.sentinel.Spec && Object.keys(target.sentinel.Spec as object).some((k) => k !== 'base_prefix' && k !== 'tablespaces')) {
    log?.warn(`backup ${name} lists tablespaces: they are not supported and their links will be refused`);
  }
  const controlTar = target.tars.find((t) => /^pg_control\.tar(\.|$)/.test(t));
  if (!controlTar) throw new NeonError('bad_backup', `${storage.url}: backup ${name} has no pg_control.tar: it is incomplete`);

  await checkEmptyTarget(dataDir);
  try {
    let bytes = 0;
    const onBytes = (n: number) => onProgress?.({ step: 'tar_partitions', bytes: (bytes += n) });
    for (const backup of chain) {
      const isDelta = Boolean(backup.sentinel.DeltaFrom);
      const parts = backup.tars.filter((t) => !/^(pg_control|backup_label)\.tar(\.|$)/.test(t));
      for (const tar of parts) {
        const key = BASEBACKUPS + backup.name + TAR_PARTITIONS + tar;
        await extractTar(decompress(await storage.get(key), codecOfName(tar).codec, key), dataDir, {
          name: key,
          overwrite: true,
          onBytes,
          onFile: (rel, _entry, abs) => (isDelta && backup.files?.Files?.[rel]?.IsIncremented ? (data) => applyIncrement(data, abs, key, rel) : undefined),
        });
      }
    }
    // Files that the newest backup no longer lists were deleted since its base.
    const listed = target.files?.Files;
    if (listed && Object.keys(listed).length && chain.length > 1) {
      for (const backup of chain.slice(0, -1)) {
        for (const rel of Object.keys(backup.files?.Files ?? {})) if (!(rel in listed)) await fs.rm(path.join(dataDir, rel), { force: true });
      }
    }
    for (const tar of [target.tars.find((t) => /^backup_label\.tar(\.|$)/.test(t)), controlTar]) {
      if (!tar) continue;
      const key = BASEBACKUPS + target.name + TAR_PARTITIONS + tar;
      await extractTar(decompress(await storage.get(key), codecOfName(tar).codec, key), dataDir, { name: key, overwrite: true, onBytes });
    }
    const { pgVersion, control } = await inspectDataDir(dataDir);
    if (target.sentinel.SystemIdentifier && target.sentinel.SystemIdentifier !== control.systemId) {
      throw new NeonError('bad_backup', `${storage.url}: backup ${name} says system ${target.sentinel.SystemIdentifier}, its pg_control says ${control.systemId}`);
    }
    const label = await fs.readFile(path.join(dataDir, 'backup_label'), 'utf8').catch(() => undefined);
    // WAL to reach consistency: from the backup's start to its finish (a label), or redo to checkpoint (a clean stop).
    let wal: string[];
    if (label) {
      const start = parseLsn(/START WAL LOCATION: (\S+)/.exec(label)?.[1] ?? '0/0');
      const timeline = Number(/START TIMELINE: (\d+)/.exec(label)?.[1] ?? control.timeline);
      const finish = target.sentinel.FinishLSN > start ? target.sentinel.FinishLSN : start;
      const seg = BigInt(control.walSegmentSize);
      wal = [];
      for (let lsn = (start / seg) * seg; lsn <= finish; lsn += seg) wal.push(walSegmentName(timeline, lsn, control.walSegmentSize));
      if (timeline > 1) wal.push(timeline.toString(16).toUpperCase().padStart(8, '0') + '.history');
    } else {
      wal = neededWal(control);
    }
    await fs.mkdir(path.join(dataDir, 'pg_wal'), { recursive: true, mode: 0o700 });
    for (const walName of wal) {
      const object = await findWal(storage, walName);
      if (!object) throw new NeonError('wal_missing', `${storage.url}: ${WAL}${walName} (needed to make backup ${name} consistent) is missing`);
      const data = await streamToBuffer(decompress(await storage.get(object), codecOfName(object).codec, object));
      await fs.writeFile(path.join(dataDir, 'pg_wal', walName), data, { mode: 0o600, flag: 'wx' });
      onProgress?.({ step: 'wal', bytes: (bytes += data.length) });
    }
    await ensurePgDirs(dataDir, pgVersion);
    const needsRecovery = Boolean(label) || !isCleanShutdown(control);
    const kind = chain.length > 1 ? `delta backup ${name} (chain of ${chain.length} from ${chain[0].name})` : `backup ${name}`;
    const description = `walg: ${kind} of PostgreSQL ${pgVersion} (system ${control.systemId}) with ${wal.length} WAL files`;
    log?.info(description);
    return { pgVersion, systemId: control.systemId, needsRecovery, description };
  } catch (error) {
    await emptyDir(dataDir);
    throw error;
  }
}

/** internal/backup_util.go GetLatestBackup: the backup whose stop sentinel is newest; else the one named. */
async function chooseBackup(storage: Storage, wanted?: string): Promise<string> {
  if (wanted && wanted !== 'LATEST') {
    if (!/^[A-Za-z0-9_.-]+$/.test(wanted)) throw new NeonError('bad_backup', `"${wanted}" is not a WAL-G backup name`);
    if (!(await storage.head(sentinelKey(wanted)))) throw new NeonError('bad_backup', `${storage.url} holds no WAL-G backup ${wanted} (no ${sentinelKey(wanted)})`);
    return wanted;
  }
  let best: { name: string; time: number } | undefined;
  for await (const object of storage.list(BASEBACKUPS)) {
    const rest = object.key.slice(BASEBACKUPS.length);
    if (rest.includes('/') || !rest.endsWith(SENTINEL_SUFFIX)) continue;
    const time = object.mtime?.getTime() ?? 0;
    const name = rest.slice(0, -SENTINEL_SUFFIX.length);
    if (!best || time > best.time || (time === best.time && name > best.name)) best = { name, time };
  }
  if (!best) throw new NeonError('bad_backup', `${storage.url} holds no WAL-G backup (no ${BASEBACKUPS}*${SENTINEL_SUFFIX})`);
  return best.name;
}

async function loadBackup(storage: Storage, name: string): Promise<Backup> {
  const key = sentinelKey(name);
  if (!(await storage.head(key))) throw new NeonError('bad_backup', `${storage.url}: backup ${name} is missing (no ${key}); a delta chain needs every backup down to its full one`);
  const sentinel = parseSentinel((await readObject(storage, key)).toString('utf8'), key);
  let files: FilesMetadata | undefined;
  const filesKey = `${BASEBACKUPS}${name}/${FILES_METADATA}`;
  if (!sentinel.FilesMetadataDisabled && (await storage.head(filesKey))) {
    try {
      files = JSON.parse((await readObject(storage, filesKey)).toString('utf8')) as FilesMetadata;
    } catch (error) {
      throw new NeonError('bad_backup', `${filesKey} is not valid JSON: ${(error as Error).message}`);
    }
  }
  if (sentinel.DeltaFrom && !files?.Files) throw new NeonError('bad_backup', `${storage.url}: delta backup ${name} has no ${FILES_METADATA}: which files are increments is unknown`);
  const tars: string[] = [];
  const prefix = BASEBACKUPS + name + TAR_PARTITIONS;
  for await (const object of storage.list(prefix)) tars.push(object.key.slice(prefix.length));
  if (!tars.length) throw new NeonError('bad_backup', `${storage.url}: backup ${name} has no tar partitions`);
  return { name, sentinel, files, tars: tars.sort() };
}

async function findWal(storage: Storage, walName: string): Promise<string | undefined> {
  for await (const object of storage.list(WAL + walName)) {
    const rest = object.key.slice(WAL.length + walName.length);
    if (rest === '' || /^\.[a-z0-9]+$/.test(rest)) return object.key;
  }
  return undefined;
}

/**
 * Apply a WAL-G increment (pagefile.go ApplyFileIncrement): check the header, truncate the file to its new size,
 * write each changed page at its block, and refuse trailing data.
 */
async function applyIncrement(data: AsyncIterable<Buffer>, abs: string, archive: string, rel: string): Promise<void> {
  const reader = new ByteReader(data);
  const fail = (why: string) => new NeonError('bad_backup', `${archive}: increment of ${rel}: ${why}`);
  const header = await reader.read(4);
  if (!header || header[0] !== INCREMENT_HEADER[0] || header[1] !== INCREMENT_HEADER[1] || header[3] !== INCREMENT_HEADER[3]) throw fail('invalid increment file header');
  if (header[2] !== INCREMENT_HEADER[2]) throw fail(`unknown increment format version ${String.fromCharCode(header[2])}`);
  const sizes = await reader.read(12);
  if (!sizes) throw fail('truncated header');
  const fileSize = sizes.readBigUInt64LE(0);
  const count = sizes.readUInt32LE(8);
  if (fileSize > 1n << 40n || count > Number(fileSize) / PAGE_SIZE) throw fail(`implausible size ${fileSize} with ${count} changed blocks`);
  const map = await reader.read(4 * count);
  if (!map) throw fail('truncated block list');
  const { O_RDWR, O_NOFOLLOW } = constants;
  let handle;
  try {
    handle = await fs.open(abs, O_RDWR | O_NOFOLLOW);
  } catch (error) {
    throw fail(`the file it changes is not in the base backup (${(error as Error).message})`);
  }
  try {
    await handle.truncate(Number(fileSize));
    for (let i = 0; i < count; i++) {
      const block = map.readUInt32LE(4 * i);
      if ((block + 1) * PAGE_SIZE > Number(fileSize)) throw fail(`block ${block} lies past the file's size ${fileSize}`);
      const page = await reader.read(PAGE_SIZE);
      if (!page) throw fail(`truncated at page ${i + 1} of ${count}`);
      await handle.write(page, 0, PAGE_SIZE, block * PAGE_SIZE);
    }
    if (await reader.read(1)) throw fail('data after the last page');
  } finally {
    await handle.close();
  }
}

/** Exact-length reads from a stream of chunks; undefined at the end of the stream. */
class ByteReader {
  private iterator: AsyncIterator<Buffer>;
  private buffer: Buffer = Buffer.alloc(0);
  constructor(source: AsyncIterable<Buffer>) {
    this.iterator = source[Symbol.asyncIterator]();
  }
  async read(n: number): Promise<Buffer | undefined> {
    while (this.buffer.length < n) {
      const next = await this.iterator.next();
      if (next.done) return undefined;
      this.buffer = Buffer.concat([this.buffer, next.value]);
    }
    const out = this.buffer.subarray(0, n);
    this.buffer = this.buffer.subarray(n);
    return out;
  }
}
