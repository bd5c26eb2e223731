import { HeadBucketCommand } from '@aws-sdk/client-s3';
import { checkPluginOptions, type NeonPlugin } from '../../core/plugin.js';
import { createClient } from './client.js';
import { noBucket, statusOf, codeOf, toNeonError, type S3Target } from './errors.js';
import { OPTION_NAMES, parseS3Url, resolveSettings, type StorageS3Options } from './options.js';
import { withRetry } from './retry.js';
import { S3Storage } from './storage.js';

export type { StorageS3Options } from './options.js';
export { S3Storage } from './storage.js';

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
        const { bucket, prefix, url } = parseS3Url(request.url);
        const settings = resolveSettings(checked);
        const target: S3Target = { bucket, endpoint: settings.endpoint, region: settings.region };
        const client = createClient(settings);
        try {
          await withRetry(() => client.send(new HeadBucketCommand({ Bucket: bucket })), settings);
        } catch (error) {
          client.destroy();
          // HEAD answers carry no body, so a missing bucket is a bare 404.
          if (statusOf(error) === 404 || codeOf(error) === 'NoSuchBucket') throw noBucket(target, error);
          throw toNeonError(error, target, 'access');
        }
        return new S3Storage(url, client, bucket, prefix, settings, target);
      },
    },
  };
}
