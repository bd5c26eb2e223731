import fs from 'node:fs';
import path from 'node:path';
import { Parser, type ReadEntry } from 'tar';
import type { ChunkStore } from '../chunkstore/index.js';
import { NeonError } from '../core/errors.js';
import { WireConnection } from '../replication/connection.js';
import { baseBackup } from '../replication/base-backup.js';
import { DEFAULT_SEGMENT_SIZE, formatLsn, segmentName, segmentOf } from '../core/wal.js';
import { identifySystem } from '../replication/stream.js';
import type { PrimaryInfo } from '../safekeeper/safekeeper.js';
import { ImageBuilder } from './image-builder.js';
import type { ImageMirror } from './image-cache.js';
import type { ImageManifest } from './manifest.js';
import { isCleanShutdown, readControlFile } from './pg-control.js';

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

/** The manifest of an image whose files the builder holds (all its chunks flushed by now). */
function finish(
  source: ImageSource,
  builder: ImageBuilder,
  storedBefore: number,
  point: { timeline: number; startLsn: bigint; endLsn: bigint; systemId: string; kind: NewImage['kind'] },
): NewImage {
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
    await builder.finish();
    await store.flush();
    return finish(source, builder, before, {
      timeline: result.timeline,
      startLsn: result.startLsn,
      endLsn: result.endLsn,
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
  const buffer = Buffer.allocUnsafe(1024 * 1024);
  const walk = async (relative: string): Promise<void> => {
    const entries = fs.readdirSync(path.join(dataDir, relative), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const entry of entries) {
      const rel = relative ? path.join(relative, entry.name) : entry.name;
      const full = path.join(dataDir, rel);
      const stat = fs.lstatSync(full);
      if (entry.isDirectory()) {
        builder.addDir(rel, stat.mode & 0o7777);
        if (!EMPTY_DIRS.has(rel)) await walk(rel);
        else if (rel === 'pg_wal') for (const wal of keepWal) if (fs.existsSync(path.join(dataDir, wal))) await addFile(wal);
      } else if (entry.isSymbolicLink()) {
        builder.addSymlink(rel, fs.readlinkSync(full), stat.mode & 0o7777);
      } else if (entry.isFile() && !(relative === '' && SKIP_FILES.has(entry.name))) {
        await addFile(rel);
      }
    }
  };
  const addFile = async (rel: string) => {
    const full = path.join(dataDir, rel);
    builder.beginFile(rel, fs.statSync(full).mode & 0o7777);
    const fd = fs.openSync(full, 'r');
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
  await walk('');
  await builder.finish();
  await store.flush();
  return finish(source, builder, before, {
    timeline: control.timeline,
    startLsn: control.redo,
    endLsn: control.checkpoint,
    systemId: control.systemId,
    kind: 'offline',
  });
}
