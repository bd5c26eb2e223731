import type { Codec } from '../../core/archive.js';
import { NeonError } from '../../core/errors.js';
import type { BackupFormat } from '../../core/format.js';
import { checkPluginOptions, type NeonPlugin } from '../../core/plugin.js';

/** Options of {@link formatWalg}. */
export interface FormatWalgOptions {
  /** Compression of exported objects, as WALG_COMPRESSION_METHOD: lz4 (default), zstd, brotli, lzma or none. */
  compression?: 'lz4' | 'zstd' | 'brotli' | 'lzma' | 'none';
  /** Bytes of files per tar partition (WALG_TAR_SIZE_THRESHOLD; default 1 GiB). */
  partitionSize?: number;
}

/**
 * Backup format `walg`: WAL-G's storage layout (basebackups_005 + wal_005). Export writes a full backup that
 * `wal-g backup-fetch LATEST` and `wal-g wal-fetch` restore; import reads what `wal-g backup-push` writes, delta
 * chains included, the newest backup (by its stop sentinel) unless `backup` names one, with the WAL it needs.
 */
export default function formatWalg(options?: FormatWalgOptions): NeonPlugin {
  const { compression = 'lz4', partitionSize = 1 << 30 } = checkPluginOptions('format-walg', options, ['compression', 'partitionSize']);
  if (!['lz4', 'zstd', 'brotli', 'lzma', 'none'].includes(compression)) {
    throw new NeonError('bad_plugin_option', `[plugin format-walg] compression must be lz4, zstd, brotli, lzma or none, not ${JSON.stringify(compression)}`);
  }
  const format = walgFormat(compression, partitionSize);
  return { name: 'format-walg', resolveFormat: { formats: ['walg'], handler: () => format } };
}

/**
 * The WAL-G format. Its engine (archive code, codecs) is imported on the first export or import, not when the
 * plugin is applied: every neon command applies the built-in plugins.
 */
export function walgFormat(compression: Codec = 'lz4', partitionSize = 1 << 30): BackupFormat {
  const engine = async () => (await import('./export.js')).walgFormat(compression, partitionSize);
  return {
    name: 'walg',
    exportTo: async (options) => (await engine()).exportTo!(options),
    importFrom: async (options) => (await engine()).importFrom!(options),
  };
}
