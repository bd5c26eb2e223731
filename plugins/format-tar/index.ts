import type { Codec } from '../../core/archive.js';
import { NeonError } from '../../core/errors.js';
import type { BackupFormat } from '../../core/format.js';
import { checkPluginOptions, type NeonPlugin } from '../../core/plugin.js';

/** Options of {@link formatTar}. */
export interface FormatTarOptions {
  /** Compression of base.tar and pg_wal.tar on export: none (default, what pg_verifybackup reads), gzip, lz4 or zstd. */
  compression?: 'none' | 'gzip' | 'lz4' | 'zstd';
}

/**
 * Backup format `tar`: what `pg_basebackup -Ft -X stream` writes. Import takes `base.tar[.gz|.lz4|.zst]`,
 * `pg_wal.tar[…]` and, when present, checks every file against `backup_manifest`. Export writes `base.tar`,
 * `pg_wal.tar` and a version 1 `backup_manifest` (SHA256 checksums) that pg_verifybackup accepts once extracted.
 */
export default function formatTar(options?: FormatTarOptions): NeonPlugin {
  const { compression = 'none' } = checkPluginOptions('format-tar', options, ['compression']);
  if (!['none', 'gzip', 'lz4', 'zstd'].includes(compression)) {
    throw new NeonError('bad_plugin_option', `[plugin format-tar] compression must be none, gzip, lz4 or zstd, not ${JSON.stringify(compression)}`);
  }
  const format = tarFormat(compression);
  return { name: 'format-tar', resolveFormat: { formats: ['tar'], handler: () => format } };
}

/**
 * The tar format. Its engine (archive code, codecs) is imported on the first export or import, not when the
 * plugin is applied: every neon command applies the built-in plugins.
 */
export function tarFormat(compression: Codec = 'none'): BackupFormat {
  const engine = async () => (await import('./format.js')).tarFormat(compression);
  return {
    name: 'tar',
    exportTo: async (options) => (await engine()).exportTo!(options),
    importFrom: async (options) => (await engine()).importFrom!(options),
  };
}
