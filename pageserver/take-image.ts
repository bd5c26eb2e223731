import fs from 'node:fs';
import path from 'node:path';
import { Parser, type ReadEntry } from 'tar';
import type { ChunkStore } from '../chunkstore/index.js';
import { NeonError } from '../core/errors.js';
import { textRows, WireConnection } from '../replication/connection.js';
import { baseBackup } from '../replication/base-backup.js';
import { DEFAULT_SEGMENT_SIZE, formatLsn, type Lsn, parseLsn, segmentName, segmentOf } from '../core/wal.js';
import { identifySystem } from '../replication/stream.js';
import type { PrimaryInfo } from '../safekeeper/safekeeper.js';
import { ImageBuilder } from './image-builder.js';
import type { ImageMirror } from './image-cache.js';
import type { ImageManifest } from './manifest.js';
import { isCleanShutdown, readControlFile } from './pg-control.js';
import { UNSYNCED } from './unsynced.js';

/** A manifest before its checksum is computed (see encodeManifest). */
export type NewImage = Omit<ImageManifest, 'checksum'>;

/** Where an image comes from. */
export interface ImageSource {
  store: ChunkStore;
  branch: string;
  pgVersion: number;
  /** A plain-file copy to write as the image is taken (see ImageCache). */
  mirror?: ImageMirror;
}

/** Input bytes between two checks that the hashing workers and the pack writes keep up. */
const DRAIN_EVERY = 8 * 1024 * 1024;

/** Wait until every chunk the builder was given is packed and durable; the manifest of its image. */
async function finish(
  source: ImageSource,
  builder: ImageBuilder,
  storedBefore: number,
  point: { timeline: number; startLsn: bigint; endLsn: bigint; systemId: string; kind: NewImage['kind'] },
): Promise<NewImage> {
  await builder.finish();
  await source.store.flush();
  return {
    format: 'neon-image',
    version: 2,
    branch: source.branch,
    timeline: point.timeline,
    startLsn: formatLsn(point.startLsn),
    endLsn: formatLsn(point.endLsn),
    systemId: point.systemId,
    pgVersion: source.pgVersion,
    kind: point.kind,
    createdAt: new Date().toISOString(),
    files: builder.files,
    rawBytes: builder.rawBytes,
    newBytes: source.store.stats().storedBytes - storedBefore,
  };
}

/**
 * Commit a transaction that writes WAL, after a checkpoint an image starts from and before the image is consistent.
 *
 * Why: a transaction that has written its commit record but still waits for the safekeepers (synchronous
 * replication) is listed as running in the running-xacts record of a checkpoint made meanwhile. A hot standby
 * starting from that checkpoint skips it as committed (pg_xact says so) but takes the record's latestCompletedXid
 * as the newest finished transaction, so its snapshots hide that transaction until it replays a later commit or
 * abort: a read-only compute paused at a point soon after the image did not see a table created just before it.
 * This commit, of a transaction newer than any listed, must come before every point the image serves: the image is
 * consistent from no earlier than the returned LSN, which is past the commit. With `wait`, the commit also waits
 * for the safekeepers, so they hold every WAL byte written before it.
 */
export async function commitAfterCheckpoint(connection: WireConnection, wait = false): Promise<Lsn> {
  // A transaction that only takes an xid (txid_current()) writes no WAL before its commit record, and such a
  // commit waits for nobody: the logical message makes it a commit that writes WAL.
  await connection.query(
    `begin; ${wait ? '' : 'set local synchronous_commit = local; '}select pg_logical_emit_message(true, 'neon', 'image'); commit`,
  );
  const [row] = textRows(await connection.query('select pg_current_wal_insert_lsn()::text as lsn'));
  return parseLsn(row.lsn!);
}

const normalise = (entryPath: string) => entryPath.replace(/^\.\//, '').replace(/\/+$/, '');

/**
 * Take a base image of a running primary with BASE_BACKUP: the tar stream is parsed as it arrives and each file is
 * cut into page chunks for the store, so nothing is staged on disk and memory stays bounded.
 */
export async function takeOnlineImage(source: ImageSource & { primary: PrimaryInfo }): Promise<NewImage> {
  const { store } = source;
  const connection = await WireConnection.connect({ ...source.primary, replication: 'true', applicationName: 'neon-pageserver' });
  try {
    const system = await identifySystem(connection);
    const builder = new ImageBuilder(store, source.mirror);
    const before = store.stats().storedBytes;
    let parser: Parser | undefined;
    let marked: Promise<Lsn> | undefined;
    let received = 0;
    let drainedAt = 0;
    const onEntry = (entry: ReadEntry) => {
      const entryPath = normalise(entry.path);
      if (entry.type === 'Directory') builder.addDir(entryPath, entry.mode ?? 0o700);
      else if (entry.type === 'SymbolicLink') builder.addSymlink(entryPath, entry.linkpath ?? '', entry.mode ?? 0o777);
      else if (entry.type === 'File' || entry.type === 'OldFile' || entry.type === 'ContiguousFile') {
        builder.beginFile(entryPath, entry.mode ?? 0o600);
        entry.on('data', (data: Buffer) => builder.write(data));
        entry.on('end', () => builder.endFile());
        return;
      }
      entry.resume();
    };
    const result = await baseBackup(
      connection,
      { label: `neon image of ${source.branch}` },
      {
        archive(name) {
          if (name !== 'base.tar') {
            throw new NeonError(
              'tablespaces_unsupported',
              `the primary has a tablespace (${name}); neon images cover the main data directory only`,
            );
          }
          parser = new Parser({ strict: true, onReadEntry: onEntry });
          // The backup's checkpoint is made: commit after it before the backup can end (the stream waits).
          connection.pause();
          marked = WireConnection.connect({ ...source.primary, database: 'postgres', applicationName: 'neon-pageserver' })
            .then((sql) => commitAfterCheckpoint(sql).finally(() => sql.close()))
            .finally(() => connection.resume());
          marked.catch(() => undefined); // handled where it is awaited, after the stream
        },
        data(chunk) {
          parser!.write(chunk);
          // Pages are hashed and packs written in the background; every few MB stop reading until they have
          // caught up (at once when they have).
          received += chunk.length;
          if (received - drainedAt > DRAIN_EVERY) {
            drainedAt = received;
            connection.pause();
            builder.drain().then(
              () => connection.resume(),
              () => connection.resume(), // the failure is reported by finish()
            );
          }
        },
      },
    );
    parser?.end();
    const visible = (await marked) ?? 0n;
    return finish(source, builder, before, {
      timeline: result.timeline,
      startLsn: result.startLsn,
      endLsn: visible > result.endLsn ? visible : result.endLsn, // a tiny backup may end before the commit
      systemId: system.systemId,
      kind: 'online',
    });
  } finally {
    connection.close();
  }
}

// What a base image leaves out (as BASE_BACKUP does): runtime files, and folders whose contents Postgres
// rebuilds or that belong to a running server. neon.conf is rewritten before every start.
export const SKIP_FILES = new Set([
  'postmaster.pid',
  'postmaster.opts',
  'neon.conf',
  'standby.signal',
  'recovery.signal',
  'backup_label.old',
  UNSYNCED,
]);
export const EMPTY_DIRS = new Set([
  'pg_wal',
  'pg_replslot',
  'pg_stat_tmp',
  'pg_dynshmem',
  'pg_notify',
  'pg_serial',
  'pg_snapshots',
  'pg_subtrans',
]);

/**
 * Take a base image of a stopped data directory (the fresh cluster of `neon init`). It is consistent at its
 * checkpoint; the WAL segments holding that checkpoint go into the image, so it can start with no WAL store.
 */
export async function takeOfflineImage(source: ImageSource & { dataDir: string }): Promise<NewImage> {
  const { store, dataDir } = source;
  const control = readControlFile(dataDir);
  if (!isCleanShutdown(control)) {
    throw new NeonError('not_shut_down', `${dataDir} was not shut down cleanly: an offline image needs a stopped server`);
  }
  const segmentSize = DEFAULT_SEGMENT_SIZE;
  const keepWal = new Set<string>();
  for (let segno = segmentOf(control.redo, segmentSize); segno <= segmentOf(control.checkpoint, segmentSize); segno++) {
    keepWal.add(path.join('pg_wal', segmentName(control.timeline, segno, segmentSize)));
  }
  const builder = new ImageBuilder(store, source.mirror);
  const before = store.stats().storedBytes;
  await copyTree(builder, dataDir, (rel, entry) => {
    if (entry.isDirectory() && EMPTY_DIRS.has(rel)) return rel === 'pg_wal' ? [...keepWal] : [];
    if (!entry.isDirectory() && path.dirname(rel) === '.' && SKIP_FILES.has(entry.name)) return 'skip';
    return 'copy';
  });
  return finish(source, builder, before, {
    timeline: control.timeline,
    startLsn: control.redo,
    endLsn: control.checkpoint,
    systemId: control.systemId,
    kind: 'offline',
  });
}

/**
 * What to do with an entry of a data directory being read (`rel`: its path in it): copy it; skip it; or, for a
 * folder, create it empty but for the files and (empty) folders listed (paths in the data directory).
 */
type Choice = 'copy' | 'skip' | string[];

/**
 * Feed the folders, symlinks and files of `dataDir` to `builder`, in name order, as `choose` says. With `live` the
 * server is running: a file or folder that vanishes meanwhile (a dropped table, a finished temp file) is left out,
 * as BASE_BACKUP does; a file read while it is written may hold torn pages, which the WAL from the backup's start
 * repairs.
 */
async function copyTree(builder: ImageBuilder, dataDir: string, choose: (rel: string, entry: fs.Dirent) => Choice, live = false): Promise<void> {
  const buffer = Buffer.allocUnsafe(1024 * 1024);
  const gone = (error: unknown) => live && (error as NodeJS.ErrnoException).code === 'ENOENT';
  const addFile = async (rel: string) => {
    const full = path.join(dataDir, rel);
    let fd: number;
    let mode: number;
    try {
      fd = fs.openSync(full, 'r');
      mode = fs.fstatSync(fd).mode & 0o7777;
    } catch (error) {
      if (gone(error)) return;
      throw error;
    }
    builder.beginFile(rel, mode);
    try {
      for (let read; (read = fs.readSync(fd, buffer, 0, buffer.length, null)) > 0;) {
        builder.write(buffer.subarray(0, read));
        if (builder.busy) await builder.drain();
      }
    } finally {
      fs.closeSync(fd);
    }
    builder.endFile();
    await builder.drain();
  };
  const addListed = async (rel: string) => {
    const stat = fs.statSync(path.join(dataDir, rel), { throwIfNoEntry: false });
    if (stat?.isDirectory()) builder.addDir(rel, stat.mode & 0o7777);
    else if (stat) await addFile(rel);
  };
  const walk = async (relative: string): Promise<void> => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(path.join(dataDir, relative), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
    } catch (error) {
      if (gone(error)) return;
      throw error;
    }
    for (const entry of entries) {
      const rel = relative ? path.join(relative, entry.name) : entry.name;
      const full = path.join(dataDir, rel);
      const choice = choose(rel, entry);
      if (choice === 'skip') continue;
      try {
        if (entry.isDirectory()) {
          builder.addDir(rel, fs.statSync(full).mode & 0o7777);
          if (choice === 'copy') await walk(rel);
          else for (const item of choice) await addListed(item);
        } else if (entry.isSymbolicLink()) {
          builder.addSymlink(rel, fs.readlinkSync(full), fs.lstatSync(full).mode & 0o7777);
        } else if (entry.isFile()) {
          await addFile(rel);
        }
      } catch (error) {
        if (!gone(error)) throw error;
      }
    }
  };
  await walk('');
}

// What BASE_BACKUP leaves out of a running server's data directory (PostgreSQL's basebackup.c), beside SKIP_FILES
// and the contents of EMPTY_DIRS: files rewritten at start, or that only mean something to the running server.
const LIVE_SKIP_FILES = new Set(['postgresql.auto.conf.tmp', 'current_logfiles.tmp', 'backup_label', 'tablespace_map']);
const TEMP_RELATION = /^t\d+_\d+/;
const RELATION_FILE = /^(\d+)(?:_(?:fsm|vm|init))?(?:\.\d+)?$/;

/**
 * What of a running server's data directory goes into an image: everything BASE_BACKUP sends. Unlogged relations
 * keep only their init fork (Postgres resets them from it after recovery), temporary ones and temp files nothing.
 */
function liveChoice(dataDir: string): (rel: string, entry: fs.Dirent) => Choice {
  const unloggedIn = new Map<string, Set<string>>();
  const unlogged = (dir: string) => {
    let found = unloggedIn.get(dir);
    if (!found) {
      found = new Set();
      try {
        for (const name of fs.readdirSync(path.join(dataDir, dir))) if (name.endsWith('_init')) found.add(name.slice(0, -5));
      } catch {
        // the database was dropped meanwhile: its files are gone too
      }
      unloggedIn.set(dir, found);
    }
    return found;
  };
  return (rel, entry) => {
    if (entry.name.startsWith('pgsql_tmp')) return 'skip'; // temp files, and their folder (base/pgsql_tmp)
    if (entry.isDirectory()) {
      if (rel === 'pg_wal') return ['pg_wal/archive_status', 'pg_wal/summaries']; // no segment: as BASE_BACKUP sends it
      return EMPTY_DIRS.has(rel) ? [] : 'copy';
    }
    const name = entry.name;
    if (name === 'pg_internal.init' || LIVE_SKIP_FILES.has(name)) return 'skip';
    if (path.dirname(rel) === '.' && SKIP_FILES.has(name)) return 'skip';
    const dir = path.dirname(rel);
    if (dir.startsWith('base/') || dir === 'global') {
      if (TEMP_RELATION.test(name)) return 'skip';
      const node = RELATION_FILE.exec(name)?.[1];
      if (node && !name.endsWith('_init') && unlogged(dir).has(node)) return 'skip';
    }
    return 'copy';
  };
}

/**
 * Take a base image of a running primary by reading its data directory's files (`dataDir`, on this machine)
 * between pg_backup_start and pg_backup_stop, as pgBackRest does, instead of through BASE_BACKUP: the files are
 * read straight from the file system (the page cache, mostly) rather than read by a walsender, framed into a
 * tar stream, sent over a socket and parsed again, which took a core of its own. What goes into the image is what
 * BASE_BACKUP sends (see liveChoice), and the backup_label comes from pg_backup_stop.
 */
export async function takeDirectImage(source: ImageSource & { primary: PrimaryInfo; dataDir: string }): Promise<NewImage> {
  const { store, dataDir } = source;
  const connection = await WireConnection.connect({ ...source.primary, database: 'postgres', applicationName: 'neon-pageserver' });
  try {
    const major = parseInt(connection.parameters.server_version ?? '', 10);
    if (major < 15) throw new Error(`pg_backup_start: the server is PostgreSQL ${major}; neon needs 15 or newer`);
    if (fs.readdirSync(path.join(dataDir, 'pg_tblspc')).length) {
      throw new NeonError('tablespaces_unsupported', 'the primary has a tablespace; neon images cover the main data directory only');
    }
    const [{ system }] = textRows(await connection.query('select system_identifier::text as system from pg_control_system()'));
    const label = `neon image of ${source.branch}`.replace(/'/g, "''");
    await connection.query(`select pg_backup_start('${label}', true)`);
    await commitAfterCheckpoint(connection); // before pg_backup_stop: the image is consistent after it
    const builder = new ImageBuilder(store, source.mirror);
    const before = store.stats().storedBytes;
    await copyTree(builder, dataDir, liveChoice(dataDir), true);
    const [stop] = textRows(await connection.query('select lsn::text, labelfile from pg_backup_stop(false)'));
    const labelFile = stop.labelfile ?? '';
    builder.beginFile('backup_label', 0o600);
    builder.write(Buffer.from(labelFile));
    builder.endFile();
    const start = /^START WAL LOCATION: (\S+)/m.exec(labelFile)?.[1];
    const timeline = /^START TIMELINE: (\d+)/m.exec(labelFile)?.[1];
    if (!start || !timeline || !stop.lsn) throw new Error(`pg_backup_stop returned a backup_label neon cannot read: ${JSON.stringify(labelFile)}`);
    return finish(source, builder, before, {
      timeline: Number(timeline),
      startLsn: parseLsn(start),
      endLsn: parseLsn(stop.lsn),
      systemId: system!,
      kind: 'online',
    });
  } finally {
    connection.close();
  }
}
