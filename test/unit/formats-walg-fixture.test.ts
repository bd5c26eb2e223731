/**
 * WAL-G compatibility without a wal-g binary: every object name and JSON field is checked against WAL-G's source
 * (github.com/wal-g/wal-g, read at commit 43fb039f); each assertion names the file and struct it follows.
 * A delta chain is built by hand the way `wal-g backup-push` writes one, then imported.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { suite } from 'uvu';
import { compressStream, decompress, extractTar, streamToBuffer, tarStream, type Codec, type TarMember } from '../../core/archive.js';
import type { Storage } from '../../core/storage.js';
import { walgFormat } from '../../plugins/format-walg/index.js';
import { buildIncrement } from '../../plugins/format-walg/layout.js';
import { FileStorage } from '../../plugins/storage-file/index.js';

const SYSTEM_ID = '7300000000000000001'; // past 2^53: must survive JSON as digits

/** A pg_control as ControlFileData lays it out (offsets of PostgreSQL 15–17). */
function pgControl(state: number, redo: number, checkpoint: number): Buffer {
  const b = Buffer.alloc(8192);
  b.writeBigUInt64LE(BigInt(SYSTEM_ID), 0);
  b.writeUInt32LE(1700, 8);
  b.writeUInt32LE(state, 16);
  b.writeBigUInt64LE(BigInt(checkpoint), 32);
  b.writeBigUInt64LE(BigInt(redo), 40);
  b.writeUInt32LE(1, 48);
  b.writeUInt32LE(8192, 216);
  b.writeUInt32LE(16 << 20, 228);
  return b;
}
const page = (byte: number) => Buffer.alloc(8192, byte);
const pages = (...bytes: number[]) => Buffer.concat(bytes.map(page));

async function packed(codec: Codec, members: TarMember[]): Promise<Buffer> {
  return streamToBuffer(tarStream(members).pipe(compressStream(codec)));
}
const file = (p: string, source: Buffer): TarMember => ({ path: p, type: 'file', source });
const json = (value: unknown) => JSON.stringify(value).replace(/"@(\d+)"/g, '$1');

let root: string;
let storage: FileStorage;
const fixture = suite('walg: hand-built delta chain (what wal-g backup-push writes)');
fixture.before.each(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'neon-walg-'));
  storage = new FileStorage(path.join(root, 'store'), 'file://' + path.join(root, 'store'), false);
});
fixture.after.each(() => fs.rmSync(root, { recursive: true, force: true }));

const FULL = 'base_000000010000000000000002';
const DELTA = 'base_000000010000000000000004_D_000000010000000000000002';

async function writeChain(options: { badIncrement?: boolean } = {}): Promise<void> {
  const label = (lsn: string, seg: string) =>
    `START WAL LOCATION: ${lsn} (file ${seg})\nCHECKPOINT LOCATION: ${lsn}\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2024-01-01 00:00:00 UTC\nLABEL: 2024-01-01 00:00:00.000000 +00:00\nSTART TIMELINE: 1\n`;
  // internal/storage_tar_ball.go GetBackupTarPath: <backup>/tar_partitions/<part_NNN.tar.ext>; bundle.go
  // names pg_control.tar and backup_label.tar; compression/lz4/compressor.go FileExtension "lz4".
  const put = (key: string, body: Buffer | string) => storage.put(key, body);
  await put(`basebackups_005/${FULL}/tar_partitions/part_001.tar.lz4`, await packed('lz4', [
    { path: 'base', type: 'directory' },
    { path: 'base/5', type: 'directory' },
    { path: 'pg_wal', type: 'directory' },
    file('PG_VERSION', Buffer.from('17\n')),
    file('base/5/16384', pages(1, 2, 3)),
    file('base/5/16385', page(0xaa)),
    file('base/5/deleted', page(0xdd)),
  ]));
  await put(`basebackups_005/${FULL}/tar_partitions/pg_control.tar.lz4`, await packed('lz4', [file('global/pg_control', pgControl(6, 0x2000028, 0x2000060))]));
  await put(`basebackups_005/${FULL}/tar_partitions/backup_label.tar.lz4`, await packed('lz4', [file('backup_label', Buffer.from(label('0/2000028', '000000010000000000000002')))]));
  // backup_sentinel_dto.go FilesMetadataDto { Files map[string]BackupFileDescription; TarFileSets }.
  const desc = (IsIncremented: boolean, IsSkipped: boolean) => ({ IsIncremented, IsSkipped, MTime: '2024-01-01T00:00:00Z', UpdatesCount: 0 });
  await put(`basebackups_005/${FULL}/files_metadata.json`, JSON.stringify({
    Files: { PG_VERSION: desc(false, false), 'base/5/16384': desc(false, false), 'base/5/16385': desc(false, false), 'base/5/deleted': desc(false, false), 'global/pg_control': desc(false, false) },
    TarFileSets: { 'part_001.tar.lz4': ['PG_VERSION', 'base/5/16384', 'base/5/16385', 'base/5/deleted'] },
  }));
  // backup_sentinel_dto.go BackupSentinelDto: LSN, FinishLSN, PgVersion, SystemIdentifier (uint64 numbers).
  await put(`basebackups_005/${FULL}_backup_stop_sentinel.json`, json({ LSN: '@33554472', PgVersion: 170002, FinishLSN: '@33554688', SystemIdentifier: `@${SYSTEM_ID}`, UncompressedSize: 1, CompressedSize: 1, ChkpNum: null }));

  // The delta: increments (pagefile.go format) for changed relation files, skipped files left out of the tars.
  const increment = buildIncrement(4 * 8192, new Map([[1, page(0xb1)], [3, page(0xb3)]]));
  if (options.badIncrement) increment[3] = 0x00; // SignatureMagicNumber broken
  await put(`basebackups_005/${DELTA}/tar_partitions/part_001.tar.zst`, await packed('zstd', [
    { path: 'base', type: 'directory' },
    { path: 'base/5', type: 'directory' },
    file('PG_VERSION', Buffer.from('17\n')),
    file('base/5/16384', increment),
    file('base/5/16386', page(0xcc)),
  ]));
  await put(`basebackups_005/${DELTA}/tar_partitions/pg_control.tar.zst`, await packed('zstd', [file('global/pg_control', pgControl(6, 0x4000028, 0x4000060))]));
  await put(`basebackups_005/${DELTA}/tar_partitions/backup_label.tar.zst`, await packed('zstd', [file('backup_label', Buffer.from(label('0/4000028', '000000010000000000000004')))]));
  await put(`basebackups_005/${DELTA}/files_metadata.json`, JSON.stringify({
    Files: { PG_VERSION: desc(false, false), 'base/5/16384': desc(true, false), 'base/5/16385': desc(false, true), 'base/5/16386': desc(false, false), 'global/pg_control': desc(false, false) },
  }));
  // WAL for both backups: wal_005/<segment>.<ext> (utility.go WalPath).
  for (const seg of ['000000010000000000000002', '000000010000000000000004']) {
    await put(`wal_005/${seg}.lz4`, await streamToBuffer(Readable.from([Buffer.alloc(16 << 20)]).pipe(compressStream('lz4'))));
  }
  // backup_sentinel_dto.go: DeltaFrom, DeltaFullName, DeltaLSN, DeltaCount; the sentinel goes last.
  await put(`basebackups_005/${DELTA}_backup_stop_sentinel.json`, json({
    LSN: '@67108904', DeltaLSN: '@33554472', DeltaFrom: FULL, DeltaFullName: FULL, DeltaCount: 1, PgVersion: 170002, FinishLSN: '@67109120',
    SystemIdentifier: `@${SYSTEM_ID}`, UncompressedSize: 1, CompressedSize: 1, ChkpNum: null, DeltaChkpNum: null,
  }));
}

fixture('LATEST is the delta: increments applied, skipped files from the base, deleted files gone, WAL fetched', async () => {
  await writeChain();
  const dataDir = path.join(root, 'data');
  const result = await walgFormat().importFrom!({ storage, dataDir });
  assert.equal(result.systemId, SYSTEM_ID);
  assert.equal(result.pgVersion, 17);
  assert.equal(result.needsRecovery, true);
  assert.match(result.description, /chain of 2/);
  const read = (rel: string) => fs.readFileSync(path.join(dataDir, rel));
  assert.ok(read('base/5/16384').equals(pages(1, 0xb1, 3, 0xb3)), 'pagefile.go ApplyFileIncrement: truncate to the new size, pages at their blocks');
  assert.ok(read('base/5/16385').equals(page(0xaa)), 'IsSkipped: the file comes from the base backup');
  assert.ok(read('base/5/16386').equals(page(0xcc)));
  assert.equal(fs.existsSync(path.join(dataDir, 'base/5/deleted')), false);
  assert.match(read('backup_label').toString(), /START WAL LOCATION: 0\/4000028/);
  assert.equal(read('pg_wal/000000010000000000000004').length, 16 << 20);
  assert.equal(fs.statSync(path.join(dataDir, 'pg_wal/archive_status')).isDirectory(), true);
});

fixture('a named backup restores that backup only', async () => {
  await writeChain();
  const dataDir = path.join(root, 'data');
  await walgFormat().importFrom!({ storage, dataDir, backup: FULL });
  assert.ok(fs.readFileSync(path.join(dataDir, 'base/5/16384')).equals(pages(1, 2, 3)));
  assert.ok(fs.existsSync(path.join(dataDir, 'pg_wal/000000010000000000000002')));
  assert.ok(fs.existsSync(path.join(dataDir, 'base/5/deleted')));
});

fixture('a broken increment, a missing parent and a missing backup are errors; the target is left empty', async () => {
  await writeChain({ badIncrement: true });
  const dataDir = path.join(root, 'data');
  await assert.rejects(walgFormat().importFrom!({ storage, dataDir }), /increment of base\/5\/16384: invalid increment file header/);
  assert.deepEqual(fs.readdirSync(dataDir), []);
  await storage.delete(`basebackups_005/${FULL}_backup_stop_sentinel.json`);
  await assert.rejects(walgFormat().importFrom!({ storage, dataDir }), /backup base_000000010000000000000002 is missing.*down to its full one/);
  await assert.rejects(walgFormat().importFrom!({ storage, dataDir, backup: 'base_000000010000000000000009' }), /holds no WAL-G backup base_000000010000000000000009/);
});

fixture.run();

const exported = suite('walg: export layout against WAL-G source');
exported.before.each(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'neon-walg-'));
  storage = new FileStorage(path.join(root, 'store'), 'file://' + path.join(root, 'store'), false);
});
exported.after.each(() => fs.rmSync(root, { recursive: true, force: true }));

/** A cleanly stopped (synthetic) data directory at 0/3000028. */
function dataDirFixture(): string {
  const dir = path.join(root, 'pgdata');
  for (const sub of ['base/5', 'global', 'pg_wal/archive_status', 'pg_replslot/slot', 'pg_stat_tmp']) fs.mkdirSync(path.join(dir, sub), { recursive: true });
  fs.writeFileSync(path.join(dir, 'PG_VERSION'), '17\n');
  fs.writeFileSync(path.join(dir, 'global/pg_control'), pgControl(1, 0x3000028, 0x3000028));
  fs.writeFileSync(path.join(dir, 'base/5/16384'), pages(7, 8));
  fs.writeFileSync(path.join(dir, 'postmaster.opts'), 'postgres');
  fs.writeFileSync(path.join(dir, 'pg_replslot/slot/state'), 'x');
  fs.writeFileSync(path.join(dir, 'pg_wal/000000010000000000000003'), Buffer.alloc(16 << 20, 9));
  return dir;
}

exported('object names, sentinel last, JSON fields, compression formats', async () => {
  const dataDir = dataDirFixture();
  const order: string[] = [];
  const recording: Storage = { ...storage, url: storage.url, put: (key, body, o) => (order.push(key), storage.put(key, body, o)), get: (k) => storage.get(k), head: (k) => storage.head(k), list: (p) => storage.list(p), delete: (k) => storage.delete(k) };
  await walgFormat().exportTo!({ dataDir, storage: recording, pgVersion: 17 });
  const name = 'base_000000010000000000000003'; // utility.go BackupNamePrefix + WAL segment of the start LSN
  assert.deepEqual([...order].sort(), [
    `basebackups_005/${name}/files_metadata.json`, // backup.go FilesMetadataName
    `basebackups_005/${name}/metadata.json`, // utility.go MetadataFileName
    `basebackups_005/${name}/tar_partitions/backup_label.tar.lz4`, // bundle.go UploadLabelFiles
    `basebackups_005/${name}/tar_partitions/part_001.tar.lz4`, // storage_tar_ball.go part_%0.3d.tar, maker counts from 1
    `basebackups_005/${name}/tar_partitions/pg_control.tar.lz4`, // bundle.go UploadPgControl
    `basebackups_005/${name}_backup_stop_sentinel.json`, // utility.go SentinelSuffix
    'wal_005/000000010000000000000003.lz4', // utility.go WalPath; compression/lz4 FileExtension
  ]);
  assert.equal(order.at(-1), `basebackups_005/${name}_backup_stop_sentinel.json`, 'backup_push_handler.go uploads the sentinel after everything else');

  const text = (key: string) => fs.readFileSync(path.join(root, 'store', key), 'utf8');
  const sentinelText = text(`basebackups_005/${name}_backup_stop_sentinel.json`);
  const sentinel = JSON.parse(sentinelText);
  // backup_sentinel_dto.go BackupSentinelDto + BackupSentinelDtoV2 (Version, StartTime, FinishTime, DateFmt, Hostname, DataDir, IsPermanent).
  for (const field of ['LSN', 'PgVersion', 'FinishLSN', 'SystemIdentifier', 'UncompressedSize', 'CompressedSize', 'ChkpNum', 'Version', 'StartTime', 'FinishTime', 'DateFmt', 'Hostname', 'DataDir', 'IsPermanent']) {
    assert.ok(field in sentinel, `sentinel field ${field}`);
  }
  assert.equal(sentinel.LSN, 0x3000028, 'LSN is a JSON number (lsn.go: type LSN uint64)');
  assert.equal(sentinel.Version, 2);
  assert.equal(sentinel.PgVersion, 170000, 'PgVersion is server_version_num');
  assert.ok(!('DeltaFrom' in sentinel), 'a full backup has no DeltaFrom (omitempty)');
  assert.match(sentinelText, new RegExp(`"SystemIdentifier": ${SYSTEM_ID}\\b`), 'uint64 written as exact digits');
  // backup_sentinel_dto.go ExtendedMetadataDto json tags.
  const meta = JSON.parse(text(`basebackups_005/${name}/metadata.json`));
  assert.deepEqual(Object.keys(meta).sort(), ['compressed_size', 'data_dir', 'date_fmt', 'finish_lsn', 'finish_time', 'hostname', 'is_permanent', 'pg_version', 'start_lsn', 'start_time', 'system_identifier', 'uncompressed_size']);
  // backup_file_description.go BackupFileDescription (IsIncremented, IsSkipped, MTime, UpdatesCount).
  const files = JSON.parse(text(`basebackups_005/${name}/files_metadata.json`));
  assert.deepEqual(Object.keys(files.Files['base/5/16384']).sort(), ['IsIncremented', 'IsSkipped', 'MTime', 'UpdatesCount']);
  assert.deepEqual(files.TarFileSets['part_001.tar.lz4'], ['PG_VERSION', 'base/5/16384']);

  // compression/lz4/compressor.go uses pierrec/lz4's frame writer: LZ4 frame magic 0x184D2204.
  const part = fs.readFileSync(path.join(root, 'store', `basebackups_005/${name}/tar_partitions/part_001.tar.lz4`));
  assert.equal(part.readUInt32LE(0), 0x184d2204);
  // bundle.go ExcludedFilenames: pg_wal, pg_replslot, pg_stat_tmp contents and postmaster.opts stay out.
  const out = path.join(root, 'part');
  fs.mkdirSync(out);
  const got = await extractTar(decompress(Readable.from([part]), 'lz4', 'part'), out, { name: 'part' });
  assert.deepEqual(got.files.sort(), ['PG_VERSION', 'base/5/16384']);
  for (const dir of ['pg_wal', 'pg_replslot', 'pg_stat_tmp']) assert.deepEqual(fs.readdirSync(path.join(out, dir)), []);

  // compression/lzma/compressor.go: ulikunitz/xz/lzma classic header (properties byte 0x5D for lc=3 lp=0 pb=2).
  await walgFormat('lzma').exportTo!({ dataDir, storage: new FileStorage(path.join(root, 'lzma'), 'file://' + path.join(root, 'lzma'), false), pgVersion: 17 });
  assert.equal(fs.readFileSync(path.join(root, 'lzma', 'wal_005/000000010000000000000003.lzma'))[0], 0x5d);

  // And it reads back.
  const back = path.join(root, 'back');
  const result = await walgFormat().importFrom!({ storage: new FileStorage(path.join(root, 'lzma'), 'file://' + path.join(root, 'lzma'), false), dataDir: back });
  assert.equal(result.needsRecovery, false);
  assert.ok(fs.readFileSync(path.join(back, 'base/5/16384')).equals(pages(7, 8)));
  assert.equal(fs.readFileSync(path.join(back, 'pg_wal/000000010000000000000003')).length, 16 << 20);
});

exported.run();
