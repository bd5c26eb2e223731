import { NeonError, PluginError } from '../../core/errors.js';

/** Options of `storageS3()`. Each one falls back to a WAL-G environment variable, then to the AWS SDK's defaults. */
export interface StorageS3Options {
  /**
   * Endpoint of an S3-compatible store, e.g. `http://127.0.0.1:9000` for MinIO. Default: `AWS_ENDPOINT`, else
   * the SDK's own (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, else AWS for the region).
   */
  endpoint?: string;
  /** Region of the bucket. Default: `AWS_REGION`, `AWS_DEFAULT_REGION`, else `us-east-1`. */
  region?: string;
  /**
   * Address buckets as `endpoint/bucket` instead of `bucket.endpoint`. Default: `AWS_S3_FORCE_PATH_STYLE`, else
   * true when the endpoint is an IP address or `localhost` (no DNS name can carry a bucket there), else false.
   */
  forcePathStyle?: boolean;
  /** Access key. Default: `AWS_ACCESS_KEY_ID`, else the SDK's chain (shared profile, SSO, instance role, …). */
  accessKeyId?: string;
  /** Secret key, given together with `accessKeyId`. Default: `AWS_SECRET_ACCESS_KEY`. */
  secretAccessKey?: string;
  /** Session token of temporary credentials. Default: `AWS_SESSION_TOKEN`. */
  sessionToken?: string;
  /** Parts of one multipart upload in flight at once (default 4). Memory per upload is about concurrency × part size. */
  concurrency?: number;
  /** Size of one multipart part in MiB (default 8, at least 5 as S3 requires); larger puts are sent in parts. */
  partSizeMb?: number;
  /** Retries of a failed request on throttling, 5xx and dropped connections (default 5; 0 turns retrying off). */
  retries?: number;
}

export const OPTION_NAMES = [
  'endpoint',
  'region',
  'forcePathStyle',
  'accessKeyId',
  'secretAccessKey',
  'sessionToken',
  'concurrency',
  'partSizeMb',
  'retries',
] as const satisfies readonly (keyof StorageS3Options)[];

/** Static credentials; absent when the SDK's default chain should find them. */
export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** Everything the client and the storage need, resolved from options and environment once. */
export interface S3Settings {
  endpoint: string | undefined;
  region: string;
  forcePathStyle: boolean;
  credentials: S3Credentials | undefined;
  concurrency: number;
  /** Bytes per multipart part. */
  partSize: number;
  retries: number;
}

const MiB = 1024 * 1024;

/** Resolve options over environment variables (WAL-G's names) over defaults, refusing values that cannot work. */
export function resolveSettings(options: StorageS3Options, env: NodeJS.ProcessEnv = process.env): S3Settings {
  const endpoint = normaliseEndpoint(options.endpoint ?? (env.AWS_ENDPOINT || undefined));
  const accessKeyId = options.accessKeyId ?? (env.AWS_ACCESS_KEY_ID || undefined);
  const secretAccessKey = options.secretAccessKey ?? (env.AWS_SECRET_ACCESS_KEY || undefined);
  const sessionToken = options.sessionToken ?? (env.AWS_SESSION_TOKEN || undefined);
  if (options.accessKeyId !== undefined && options.secretAccessKey === undefined) {
    throw bad('accessKeyId is set but secretAccessKey is not: give both (or neither, to use AWS_* variables)');
  }
  if (Boolean(accessKeyId) !== Boolean(secretAccessKey)) {
    throw bad('only one of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY is set: set both, or neither to use the shared profile');
  }
  return {
    endpoint,
    region: options.region ?? (env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1'),
    forcePathStyle: options.forcePathStyle ?? flag(env.AWS_S3_FORCE_PATH_STYLE) ?? isLocalHost(endpoint),
    credentials: accessKeyId && secretAccessKey ? { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) } : undefined,
    concurrency: integer('concurrency', options.concurrency, 4, 1, 64),
    partSize: integer('partSizeMb', options.partSizeMb, 8, 5, 5 * 1024) * MiB,
    retries: integer('retries', options.retries, 5, 0, 20),
  };
}

/** The bucket and key prefix of `s3://bucket/prefix`, and the canonical URL (no credentials, no trailing slash). */
export function parseS3Url(url: string): { bucket: string; prefix: string; url: string } {
  const match = /^s3:\/\/([^/?#]*)\/*([^?#]*)$/i.exec(url.trim());
  // Credentials in a URL would end up in logs and the REST API: refuse them without echoing the URL.
  if (match?.[1].includes('@')) {
    throw new NeonError('bad_storage_url', 's3:// URLs must not carry credentials: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY instead');
  }
  if (!match || !/^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$/i.test(match[1])) {
    throw new NeonError(
      'bad_storage_url',
      `"${url}" is not s3://bucket/prefix with a valid bucket name (3-63 letters, digits, dots, dashes)`,
    );
  }
  const prefix = match[2].replace(/\/+$/, '');
  if (prefix && prefix.split('/').some((part) => part === '' || part === '.' || part === '..')) {
    throw new NeonError('bad_storage_url', `"${url}": the prefix must not have empty, "." or ".." parts`);
  }
  const bucket = match[1];
  return { bucket, prefix, url: prefix ? `s3://${bucket}/${prefix}` : `s3://${bucket}` };
}

function normaliseEndpoint(value: string | undefined): string | undefined {
  if (!value) return undefined;
  // WAL-G accepts a bare host:port; the SDK needs a scheme.
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `https://${value}`;
  let parsed: URL;
  try {
    parsed = new URL(withScheme);
  } catch {
    throw bad(`endpoint "${value}" is not a URL (expected e.g. http://127.0.0.1:9000)`);
  }
  if (parsed.username || parsed.password)
    throw bad('the endpoint must not carry credentials: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY');
  return withScheme.replace(/\/+$/, '');
}

function isLocalHost(endpoint: string | undefined): boolean {
  if (!endpoint) return false;
  const host = new URL(endpoint).hostname;
  return host === 'localhost' || /^\d+\.\d+\.\d+\.\d+$/.test(host) || host.startsWith('[');
}

function flag(value: string | undefined): boolean | undefined {
  if (value === undefined || value === '') return undefined;
  return /^(1|true|yes|on)$/i.test(value);
}

function integer(name: string, value: number | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < min || value > max)
    throw bad(`${name} must be an integer from ${min} to ${max}, not ${String(value)}`);
  return value;
}

function bad(message: string): PluginError {
  return PluginError.wrap('storage-s3', undefined, new NeonError('bad_plugin_option', message));
}
