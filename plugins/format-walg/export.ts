import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs/promises';
import { Readable } from 'node:stream';
import { type Codec, putCompressed, type TarMember, tarStream, withCodecExtension } from '../../core/archive.js';
import { NeonError } from '../../core/errors.js';
import {
  DB_STATES,
  findWalFile,
  inspectDataDir,
  isCleanShutdown,
  neededWal,
  walkDataDir,
  walSegmentName,
  type BackupFormat,
  type ExportOptions,
  type ExportResult,
} from '../../core/format.js';
import { importWalg } from './import.js';
import { backupName, BASEBACKUPS, EXCLUDED, FILES_METADATA, METADATA, partName, sentinelKey, stringifyU64, tarKey, WAL, type FileDescription } from './layout.js';

/** The WAL-G format's engine (loaded on first use by index.ts: it pulls in the archive code and codecs). */
export function walgFormat(compression: Codec = 'lz4', partitionSize = 1 << 30): BackupFormat {
  return {
    name: 'walg',
    exportTo: (options) => exportWalg(options, compression, partitionSize),
    importFrom: importWalg,
  };
}

async function exportWalg({ dataDir, walDir, storage, pgVersion, log, onProgress }: ExportOptions, codec: Codec, partitionSize: number): Promise<ExportResult> {
  const startTime = new Date();
  const { control } = await inspectDataDir(dataDir);
  if (!isCleanShutdown(control)) {
    throw new NeonError('not_stopped', `${dataDir} was not shut down cleanly (pg_control: ${DB_STATES[control.state] ?? control.state}): export needs a stopped cluster`);
  }
  const name = backupName(walSegmentName(control.timeline, control.redo, control.walSegmentSize));
  if (await storage.head(sentinelKey(name))) throw new NeonError('target_not_empty', `${storage.url} already holds WAL-G backup ${name}`);
  const entries = await walkDataDir(dataDir, (rel, isDir) => {
    const parts = rel.split('/');
    if (parts.slice(0, -1).some((p) => EXCLUDED.has(p))) return true; // contents of excluded folders
    return !isDir && EXCLUDED.has(parts.at(-1)!);
  });
  const files = entries.filter((e) => e.type === 'file' && e.rel !== 'global/pg_control');
  const uncompressedSize = files.reduce((a, e) => a + e.size, 0);
  let compressedSize = 0;
  let done = 0;
  const put = (key: string, source: Readable) => putCompressed(storage, key, source, codec, (n) => (compressedSize += n));
  const progress = (member: TarMember, chunk: Buffer) => onProgress?.({ step: 'tar_partitions', bytes: (done += chunk.length), totalBytes: uncompressedSize });

  // Tar partitions: folders in the first, files packed in walk order up to partitionSize bytes each.
  const tarFileSets: Record<string, string[]> = {};
  const partitions: TarMember[][] = [[]];
  let partBytes = 0;
  for (const entry of entries) {
    if (entry.rel === 'global/pg_control') continue;
    if (entry.type === 'directory') partitions[0].push({ path: entry.rel, type: 'directory', mtime: entry.mtime });
    else {
      if (partBytes > 0 && partBytes + entry.size > partitionSize) {
        partitions.push([]);
        partBytes = 0;
      }
      partitions.at(-1)!.push({ path: entry.rel, type: 'file', source: entry.abs, size: entry.size, mtime: entry.mtime });
      partBytes += entry.size;
    }
  }
  for (const [i, members] of partitions.entries()) {
    const file = withCodecExtension(partName(i + 1), codec);
    tarFileSets[file] = members.filter((m) => m.type === 'file').map((m) => m.path);
    await put(tarKey(name, file), tarStream(members, progress));
  }
  // bundle.go: pg_control in a tar of its own, extracted last by backup-fetch; backup_label.tar holds the
  // backup_label and tablespace_map of pg_backup_stop. A cleanly stopped cluster needs neither (a label would make
  // Postgres wait for a backup-end record that this WAL does not have), so that tar is empty.
  const controlTar = withCodecExtension('pg_control.tar', codec);
  await put(tarKey(name, controlTar), tarStream([{ path: 'global/pg_control', type: 'file', source: path.join(dataDir, 'global/pg_control') }]));
  tarFileSets[controlTar] = ['global/pg_control'];
  await put(tarKey(name, withCodecExtension('backup_label.tar', codec)), tarStream([]));

  // WAL that the restored cluster needs to start: wal_005/<segment>.<ext>.
  const wal = neededWal(control);
  for (const walName of wal) await put(WAL + withCodecExtension(walName, codec), Readable.from([await fs.readFile(await findWalFile(walName, dataDir, walDir))]));

  const finishTime = new Date();
  const systemId = BigInt(control.systemId);
  const pgVersionNum = pgVersion * 10000;
  const filesMeta: Record<string, FileDescription> = {};
  for (const e of [...files, { rel: 'global/pg_control', mtime: new Date() }]) filesMeta[e.rel] = { IsIncremented: false, IsSkipped: false, MTime: e.mtime.toISOString(), UpdatesCount: 0 };
  await storage.put(`${BASEBACKUPS}${name}/${FILES_METADATA}`, JSON.stringify({ Files: filesMeta, TarFileSets: tarFileSets }));
  const hostname = os.hostname();
  // backup_sentinel_dto.go ExtendedMetadataDto.
  await storage.put(
    `${BASEBACKUPS}${name}/${METADATA}`,
    stringifyU64({
      start_time: startTime.toISOString(),
      finish_time: finishTime.toISOString(),
      date_fmt: '%Y-%m-%dT%H:%M:%S.%fZ',
      hostname,
      data_dir: dataDir,
      pg_version: pgVersionNum,
      start_lsn: control.redo,
      finish_lsn: control.checkpoint,
      is_permanent: false,
      system_identifier: systemId,
      uncompressed_size: uncompressedSize,
      compressed_size: compressedSize,
    }),
  );
  // backup_sentinel_dto.go BackupSentinelDtoV2 (BackupSentinelDto + Version 2 fields), written last: a backup
  // without its stop sentinel does not exist for WAL-G.
  await storage.put(
    sentinelKey(name),
    stringifyU64({
      LSN: control.redo,
      PgVersion: pgVersionNum,
      FinishLSN: control.checkpoint,
      SystemIdentifier: systemId,
      UncompressedSize: uncompressedSize,
      CompressedSize: compressedSize,
      DataCatalogSize: uncompressedSize,
      ChkpNum: null,
      Version: 2,
      StartTime: startTime.toISOString(),
      FinishTime: finishTime.toISOString(),
      DateFmt: '%Y-%m-%dT%H:%M:%S.%fZ',
      Hostname: hostname,
      DataDir: dataDir,
      IsPermanent: false,
    }),
    { ifAbsent: true },
  );
  const description = `walg: backup ${name} (${partitions.length} tar partitions, ${codec}) and ${wal.length} WAL files to ${storage.url}`;
  log?.info(description);
  return { description, bytes: compressedSize };
}

