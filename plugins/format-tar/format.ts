import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { type Codec, codecOfName, decompress, extractTar, putCompressed, type TarMember, tarStream, withCodecExtension } from '../../core/archive.js';
import { NeonError } from '../../core/errors.js';
import {
  checkEmptyTarget,
  DB_STATES,
  emptyDir,
  ensurePgDirs,
  findWalFile,
  inspectDataDir,
  isCleanShutdown,
  neededWal,
  walkDataDir,
  walSegmentName,
  type BackupFormat,
  type ExportOptions,
  type ExportResult,
  type ImportOptions,
  type ImportResult,
} from '../../core/format.js';
import { readObject, type Storage } from '../../core/storage.js';
import { buildManifest, checksummer, parseManifest, type Checksummer, type ManifestFile } from './manifest.js';

/** Contents pg_basebackup leaves out (basebackup.c excludeDirContents / excludeFiles); their folders stay. */
const EXCLUDED_CONTENTS = ['pg_wal', 'pg_replslot', 'pg_stat_tmp', 'pg_dynshmem', 'pg_notify', 'pg_serial', 'pg_snapshots', 'pg_subtrans'];
const EXCLUDED_FILES = new Set(['postmaster.pid', 'postmaster.opts', 'backup_label', 'tablespace_map', 'backup_manifest', 'postgresql.auto.conf.tmp', 'current_logfiles.tmp']);

/** The tar format's engine (loaded on first use by index.ts: it pulls in the archive code and codecs). */
export function tarFormat(compression: Codec = 'none'): BackupFormat {
  return {
    name: 'tar',

    async exportTo({ dataDir, walDir, storage, log, onProgress }: ExportOptions): Promise<ExportResult> {
      const { control } = await inspectDataDir(dataDir);
      if (!isCleanShutdown(control)) {
        throw new NeonError('not_stopped', `${dataDir} was not shut down cleanly (pg_control: ${DB_STATES[control.state] ?? control.state}): export needs a stopped cluster`);
      }
      const baseName = withCodecExtension('base.tar', compression);
      const walName = withCodecExtension('pg_wal.tar', compression);
      for (const key of [baseName, walName, 'backup_manifest']) {
        if (await storage.head(key)) throw new NeonError('target_not_empty', `${storage.url} already holds ${key}: export into an empty location`);
      }
      const entries = await walkDataDir(dataDir, (rel, isDir) => {
        const parent = rel.split('/').slice(0, -1).join('/');
        if (EXCLUDED_CONTENTS.includes(parent) && !(rel === 'pg_wal/archive_status' || rel === 'pg_wal/summaries')) return true;
        if (rel.startsWith('pg_wal/') && parent !== 'pg_wal') return true; // archive_status/summaries contents
        const name = path.basename(rel);
        return !isDir && (EXCLUDED_FILES.has(rel) || name.startsWith('pgsql_tmp') || name === 'pg_internal.init');
      });
      // global/pg_control goes last, as pg_basebackup sends it.
      entries.sort((a, b) => Number(a.rel === 'global/pg_control') - Number(b.rel === 'global/pg_control'));
      const totalBytes = entries.reduce((a, e) => a + e.size, 0);
      const sums = new Map<string, Checksummer>();
      let bytes = 0;
      const members: TarMember[] = entries.map((e) =>
        e.type === 'directory' ? { path: e.rel, type: 'directory', mtime: e.mtime } : { path: e.rel, type: 'file', source: e.abs, size: e.size, mtime: e.mtime },
      );
      let stored = 0;
      const put = (key: string, stream: Readable) => putCompressed(storage, key, stream, compression, (n) => (stored += n));
      await put(
        baseName,
        tarStream(members, (member, chunk) => {
          let sum = sums.get(member.path);
          if (!sum) sums.set(member.path, (sum = checksummer('SHA256')!));
          sum.update(chunk);
          bytes += chunk.length;
          onProgress?.({ step: baseName, bytes, totalBytes });
        }),
      );
      const walFiles = await Promise.all(neededWal(control).map(async (name) => ({ name, abs: await findWalFile(name, dataDir, walDir) })));
      await put(walName, tarStream(walFiles.map((w) => ({ path: w.name, type: 'file' as const, source: w.abs }))));
      onProgress?.({ step: walName, bytes, totalBytes });
      const checkpointSegment = walFiles.find((w) => w.name === walSegmentName(control.timeline, control.checkpoint, control.walSegmentSize))!;
      const end = await recordEnd(checkpointSegment.abs, control.checkpoint, control.walSegmentSize);
      const files: ManifestFile[] = entries
        .filter((e) => e.type === 'file')
        .map((e) => ({ path: e.rel, size: e.size, mtime: e.mtime, algorithm: 'SHA256', checksum: (sums.get(e.rel) ?? checksummer('SHA256')!).digest() }));
      const manifest = buildManifest(files, [{ timeline: control.timeline, start: control.redo, end }]);
      // The manifest is written last: a storage without one holds no finished export.
      await storage.put('backup_manifest', manifest, { ifAbsent: true });
      stored += manifest.length;
      const description = `tar: ${baseName} (${files.length} files), ${walName} (${walFiles.length} WAL files), backup_manifest to ${storage.url}`;
      log?.info(description);
      return { description, bytes: stored };
    },

    async importFrom({ storage, dataDir, force, log, onProgress }: ImportOptions): Promise<ImportResult> {
      const base = await findArchive(storage, 'base.tar');
      if (!base) throw new NeonError('bad_backup', `${storage.url} holds no base.tar (nor base.tar.gz, .lz4, .zst): not a pg_basebackup -Ft backup`);
      const wal = await findArchive(storage, 'pg_wal.tar');
      let manifest: ReturnType<typeof parseManifest> | undefined;
      if (await storage.head('backup_manifest')) {
        manifest = parseManifest((await readObject(storage, 'backup_manifest')).toString('utf8'), `${storage.url}/backup_manifest`);
        for (const needed of ['PG_VERSION', 'global/pg_control']) {
          if (!manifest.files.has(needed)) throw new NeonError('bad_backup', `${storage.url}: the backup manifest lists no ${needed}: not a Postgres data directory backup`);
        }
      }
      await checkEmptyTarget(dataDir);
      try {
        const sums = new Map<string, { sum?: Checksummer; size: number }>();
        const onChunk = manifest
          ? (rel: string, chunk: Buffer) => {
              let entry = sums.get(rel);
              if (!entry) sums.set(rel, (entry = { sum: checksummer(manifest!.files.get(rel)?.algorithm ?? 'NONE'), size: 0 }));
              entry.sum?.update(chunk);
              entry.size += chunk.length;
            }
          : undefined;
        let bytes = 0;
        const totalBytes = undefined;
        const onBytes = (n: number) => onProgress?.({ step: base.key, bytes: (bytes += n), totalBytes });
        await extractTar(decompress(await storage.get(base.key), base.codec, base.key), dataDir, { name: base.key, onChunk, onBytes });
        if (wal) {
          await fs.mkdir(path.join(dataDir, 'pg_wal'), { recursive: true, mode: 0o700 });
          await extractTar(decompress(await storage.get(wal.key), wal.codec, wal.key), path.join(dataDir, 'pg_wal'), { name: wal.key, overwrite: true, onBytes });
        }
        if (manifest) verifyAgainst(manifest.files, sums, storage.url);
        const { pgVersion, control } = await inspectDataDir(dataDir);
        if (manifest?.systemId && manifest.systemId !== control.systemId) {
          throw new NeonError('bad_backup', `${storage.url}: backup_manifest is for system ${manifest.systemId}, pg_control says ${control.systemId}`);
        }
        const hasLabel = await fs.stat(path.join(dataDir, 'backup_label')).then(() => true, () => false);
        if (!hasLabel && !isCleanShutdown(control) && !force) {
          throw new NeonError('unclean_shutdown', `${storage.url}: base.tar has no backup_label and pg_control says "${DB_STATES[control.state]}": not a consistent backup (pass --force to import it anyway)`);
        }
        await ensurePgDirs(dataDir, pgVersion);
        const needsRecovery = hasLabel || !isCleanShutdown(control);
        const description = `tar: ${base.key}${wal ? ` + ${wal.key}` : ''} of PostgreSQL ${pgVersion} (system ${control.systemId})${manifest ? `, ${manifest.files.size} files verified against backup_manifest` : ''}`;
        log?.info(description);
        return { pgVersion, systemId: control.systemId, needsRecovery, description };
      } catch (error) {
        await emptyDir(dataDir);
        throw error;
      }
    },
  };
}

/** `name` or `name.gz|.lz4|.zst` in the storage root. */
async function findArchive(storage: Storage, name: string): Promise<{ key: string; codec: Codec } | undefined> {
  for (const ext of ['', '.gz', '.lz4', '.zst']) {
    if (await storage.head(name + ext)) return { key: name + ext, codec: codecOfName(name + ext).codec };
  }
  return undefined;
}

function verifyAgainst(files: Map<string, ManifestFile>, seen: Map<string, { sum?: Checksummer; size: number }>, where: string): void {
  for (const [rel, expected] of files) {
    const got = seen.get(rel);
    if (!got && expected.size === 0) continue; // an empty file sends no chunk
    if (!got) throw new NeonError('bad_backup', `${where}: ${rel} is in backup_manifest but not in the archive`);
    if (got.size !== expected.size) throw new NeonError('bad_backup', `${where}: ${rel} is ${got.size} bytes, backup_manifest says ${expected.size}`);
    if (expected.algorithm !== 'NONE') {
      if (!got.sum) throw new NeonError('bad_backup', `${where}: ${rel} uses checksum algorithm ${expected.algorithm}, which neon does not know`);
      const actual = got.sum.digest();
      if (actual !== expected.checksum?.toLowerCase()) throw new NeonError('bad_backup', `${where}: ${rel} fails its ${expected.algorithm} checksum (backup_manifest ${expected.checksum}, archive ${actual})`);
    }
  }
}

/** The end LSN of the WAL record at `lsn` (its xl_tot_len, counting the page headers it crosses). */
async function recordEnd(segmentFile: string, lsn: bigint, segmentSize: number): Promise<bigint> {
  const segment = await fs.readFile(segmentFile);
  const page = 8192n;
  const total = segment.readUInt32LE(Number(lsn % BigInt(segmentSize)));
  if (total < 24 || total > 1 << 20) throw new NeonError('bad_wal', `${segmentFile}: no WAL record at ${lsn.toString(16)} (xl_tot_len ${total})`);
  let remaining = BigInt(total);
  let pos = lsn;
  for (;;) {
    const pageEnd = (pos / page + 1n) * page;
    const take = remaining < pageEnd - pos ? remaining : pageEnd - pos;
    pos += take;
    remaining -= take;
    if (remaining === 0n) return pos;
    pos += pos % BigInt(segmentSize) === 0n ? 40n : 24n; // long header at a segment start, short elsewhere
  }
}
