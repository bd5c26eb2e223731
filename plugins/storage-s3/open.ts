import { HeadBucketCommand } from '@aws-sdk/client-s3';
import { createClient } from './client.js';
import { codeOf, noBucket, statusOf, toNeonError, type S3Target } from './errors.js';
import { parseS3Url, resolveSettings, type StorageS3Options } from './options.js';
import { S3Storage } from './storage.js';

/**
 * Open `s3://bucket/prefix`. The bucket is checked once here, so that a wrong endpoint, wrong keys or a missing
 * bucket fail at once with a line that says what to set, rather than in the middle of a command.
 */
export async function openS3(requestUrl: string, options: StorageS3Options): Promise<S3Storage> {
  const { bucket, prefix, url } = parseS3Url(requestUrl);
  const settings = resolveSettings(options);
  const target: S3Target = { bucket, endpoint: settings.endpoint, region: settings.region };
  const client = createClient(settings);
  try {
    await client.send(new HeadBucketCommand({ Bucket: bucket }));
  } catch (error) {
    client.destroy();
    // HEAD answers carry no body, so a missing bucket is a bare 404.
    if (statusOf(error) === 404 || codeOf(error) === 'NoSuchBucket') throw noBucket(target, error);
    throw toNeonError(error, target, 'access');
  }
  return new S3Storage(url, client, bucket, prefix, settings, target);
}
