import { checkPluginOptions, type NeonPlugin } from '../../core/plugin.js';
import { OPTION_NAMES, type StorageS3Options } from './options.js';

export type { StorageS3Options } from './options.js';

/**
 * Storage in S3 or any S3-compatible store (MinIO, Ceph, R2, …), for `s3://bucket/prefix` URLs (WAL-G's
 * `S3_PREFIX=` spelling is accepted by the core). Settings come from the options, else from WAL-G's environment
 * variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_S3_FORCE_PATH_STYLE`, `AWS_ACCESS_KEY_ID`,
 * `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), else from the AWS SDK's defaults (shared profile, …).
 *
 * Opening a storage checks the bucket once, so that a wrong endpoint, wrong keys or a missing bucket fail at
 * once with a line that says what to set, rather than in the middle of a command.
 *
 * @example
 * ```ts
 * // neon.config.ts
 * import storageS3 from 'neon-local/plugins/storage-s3';
 * export default defineConfig({ plugins: [storageS3({ endpoint: 'http://127.0.0.1:9000', partSizeMb: 16 })] });
 * ```
 */
export default function storageS3(options?: StorageS3Options): NeonPlugin {
  const checked = checkPluginOptions('storage-s3', options, OPTION_NAMES);
  // Resolved when a storage is opened, not here: the config is loaded for every command, S3 or not.
  return {
    name: 'storage-s3',
    resolveStorage: {
      schemes: ['s3'],
      async handler(request) {
        // The AWS SDK is loaded only when an s3:// storage is opened: every command loads the built-in plugins.
        const { openS3 } = await import('./open.js');
        return openS3(request.url, checked);
      },
    },
  };
}
