import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
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
  parseControlFile,
  parsePgVersion,
  walkDataDir,
  type BackupFormat,
  type ExportOptions,
  type ExportResult,
  type ImportOptions,
  type ImportResult,
} from '../../core/format.js';
import { checkPluginOptions, type NeonPlugin } from '../../core/plugin.js';
import { checkKey, readObject, type Storage } from '../../core/storage.js';

/** Options of {@link formatPgdata}; none yet. */
export type FormatPgdataOptions = Record<string, never>;

/** Files a copy of a data directory leaves out: they describe a running server, not the data. */
const SKIP = new Set(['postmaster.pid', 'postmaster.opts']);

/**
 * Backup format `pgdata`: a plain data directory. Import takes a cleanly stopped cluster's $PGDATA or the output
 * of `pg_basebackup -Fp` (with its backup_label); export writes a directory that `pg_ctl start` runs as is. A
 * local folder (`file://`) is copied file by file (reflinks where the file system has them); any other storage
 * holds one object per file, keyed by its path.
 */
export default function formatPgdata(options?: FormatPgdataOptions): NeonPlugin {
  checkPluginOptions('format-pgdata', options, []);
  return {
    name: 'format-pgdata',
    resolveFormat: { formats: ['pgdata'], handler: () => pgdataFormat },
  };
}

const localRoot = (storage: Storage) => (storage.url.startsWith('file://') ? fileURLToPath(storage.url) : undefined);

export const pgdataFormat: BackupFormat = {
  name: 'pgdata',

  async exportTo({ dataDir, walDir, storage, log, onProgress }: ExportOptions): Promise<ExportResult> {
    const { control } = await inspectDataDir(dataDir);
    if (!isCleanShutdown(control)) {
      throw new NeonError('not_stopped', `${dataDir} was not shut down cleanly (pg_control: ${DB_STATES[control.state] ?? control.state}): export needs a stopped cluster`);
    }
    const entries = await walkDataDir(dataDir, (rel) => SKIP.has(rel) || rel.startsWith('pg_wal/'));
    const wal = await Promise.all(neededWal(control).map(async (name) => ({ name, abs: await findWalFile(name, dataDir, walDir) })));
    const files = [
      ...entries.filter((e) => e.type === 'file' && e.rel !== 'global/pg_control').map((e) => ({ rel: e.rel, abs: e.abs })),
      ...wal.map((w) => ({ rel: `pg_wal/${w.name}`, abs: w.abs })),
      // pg_control last: a copy cut short has none and is refused on import.
      { rel: 'global/pg_control', abs: path.join(dataDir, 'global/pg_control') },
    ];
    const sizes = await Promise.all(files.map(async (f) => (await fs.stat(f.abs)).size));
    const totalBytes = sizes.reduce((a, b) => a + b, 0);
    let bytes = 0;
    const root = localRoot(storage);
    if (root) {
      const existing = await fs.readdir(root).catch(() => []);
      if (existing.length) throw new NeonError('target_not_empty', `cannot export into ${root}: it is not empty`);
      await fs.mkdir(root, { recursive: true, mode: 0o700 });
      await fs.chmod(root, 0o700);
      for (const dir of [...entries.filter((e) => e.type === 'directory').map((e) => e.rel), 'pg_wal', 'pg_wal/archive_status']) {
        await fs.mkdir(path.join(root, dir), { recursive: true, mode: 0o700 });
      }
      for (const [i, file] of files.entries()) {
        const target = path.join(root, file.rel);
        await fs.copyFile(file.abs, target, constants.COPYFILE_FICLONE);
        await fs.chmod(target, 0o600);
        bytes += sizes[i];
        onProgress?.({ step: 'copy', bytes, totalBytes });
      }
    } else {
      for (const [i, file] of files.entries()) {
        await storage.put(file.rel, (await fs.open(file.abs)).createReadStream());
        bytes += sizes[i];
        onProgress?.({ step: 'upload', bytes, totalBytes });
      }
    }
    const description = `pgdata: ${files.length} files, ${bytes} bytes to ${storage.url}`;
    log?.info(description);
    return { description, bytes };
  },

  async importFrom({ storage, dataDir, force, log, onProgress }: ImportOptions): Promise<ImportResult> {
    // Validate before anything is written.
    const read = async (key: string) => {
      if (!(await storage.head(key))) throw new NeonError('bad_backup', `${storage.url} is not a Postgres data directory: ${key} is missing`);
      return readObject(storage, key);
    };
    const pgVersion = parsePgVersion((await read('PG_VERSION')).toString('utf8'), `${storage.url}/PG_VERSION`);
    const control = parseControlFile(await read('global/pg_control'), `${storage.url}/global/pg_control`);
    const root = localRoot(storage);
    if (root) await refuseRunning(root);
    const hasLabel = Boolean(await storage.head('backup_label'));
    let needsRecovery = hasLabel;
    if (!hasLabel && !isCleanShutdown(control)) {
      const state = DB_STATES[control.state] ?? String(control.state);
      if (!force) {
        throw new NeonError(
          'unclean_shutdown',
          `${storage.url} was not shut down cleanly (pg_control: ${state}): stop the server with pg_ctl stop (mode fast or smart), or pass --force to import it anyway and let Postgres run crash recovery from its pg_wal`,
        );
      }
      log?.warn(`importing ${storage.url} although it was not shut down cleanly (${state}): Postgres will run crash recovery`);
      needsRecovery = true;
    }
    await checkEmptyTarget(dataDir);
    try {
      let bytes = 0;
      let files = 0;
      if (root) {
        const entries = await walkDataDir(root, (rel) => SKIP.has(rel));
        const totalBytes = entries.reduce((a, e) => a + e.size, 0);
        for (const entry of entries) {
          const target = path.join(dataDir, entry.rel);
          if (entry.type === 'directory') await fs.mkdir(target, { mode: 0o700 });
          else {
            await fs.copyFile(entry.abs, target, constants.COPYFILE_FICLONE);
            await fs.chmod(target, 0o600);
            bytes += entry.size;
            files++;
            onProgress?.({ step: 'copy', bytes, totalBytes });
          }
        }
      } else {
        const objects = [];
        for await (const object of storage.list('')) if (!SKIP.has(object.key)) objects.push(object);
        const totalBytes = objects.reduce((a, o) => a + o.size, 0);
        for (const object of objects) {
          const target = path.join(dataDir, ...checkKey(object.key).split('/'));
          await fs.mkdir(path.dirname(target), { recursive: true, mode: 0o700 });
          await pipeline(await storage.get(object.key), (await fs.open(target, 'wx', 0o600)).createWriteStream());
          bytes += object.size;
          files++;
          onProgress?.({ step: 'download', bytes, totalBytes });
        }
      }
      await ensurePgDirs(dataDir, pgVersion);
      const kind = hasLabel ? 'a pg_basebackup -Fp copy' : needsRecovery ? 'an uncleanly stopped data directory' : 'a cleanly stopped data directory';
      const description = `pgdata: ${kind} of PostgreSQL ${pgVersion} (system ${control.systemId}), ${files} files, ${bytes} bytes`;
      log?.info(description);
      return { pgVersion, systemId: control.systemId, needsRecovery, description };
    } catch (error) {
      await emptyDir(dataDir);
      throw error;
    }
  },
};

/** Refuse a data directory whose postmaster.pid names a live postmaster. */
async function refuseRunning(root: string): Promise<void> {
  let text: string;
  try {
    text = await fs.readFile(path.join(root, 'postmaster.pid'), 'utf8');
  } catch {
    return;
  }
  const pid = Number(text.split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0) return;
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return; // gone: a stale pid file left by a crash
  }
  const comm = await fs.readFile(`/proc/${pid}/comm`, 'utf8').catch(() => 'postgres');
  if (!/postgres|postmaster/.test(comm)) return; // the pid was reused by another program
  throw new NeonError(
    'cluster_running',
    `${root} is in use by a running Postgres server (postmaster.pid names process ${pid}): stop it first (pg_ctl stop -D ${root}), then import`,
  );
}
