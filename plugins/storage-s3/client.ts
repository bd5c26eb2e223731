import { S3Client } from '@aws-sdk/client-s3';
import type { S3Settings } from './options.js';
import { retryStrategy } from './retry.js';

/** A socket that stays silent this long is treated as dropped (and the request retried). */
const IDLE_TIMEOUT_MS = 30_000;
/** Connecting takes milliseconds on a working network; a black-holed endpoint should not hang a command. */
const CONNECT_TIMEOUT_MS = 5_000;

/**
 * Build the S3 client for resolved settings.
 *
 * - `retryStrategy`: the plugin's policy ({@link retryStrategy}) decides about every retry, the parts of
 *   multipart uploads included; the SDK's default strategy (3 attempts, no reset handling of its own) is not used.
 * - Checksums `WHEN_REQUIRED`: since 2025 the SDK adds CRC32 headers (and trailers on streamed bodies) to every
 *   request and validates them on responses; several S3-compatible stores reject or mangle those, and S3 itself
 *   does not require them. Content integrity is covered by SigV4 and the stores' own MD5 ETags.
 * - No `credentials` when none were given: the SDK's default chain (env, shared profile, SSO, instance role) runs.
 * - `followRegionRedirects`: a bucket in another region than configured still works on AWS.
 * - Plenty of sockets: a multipart upload runs `concurrency` parts at once, and callers run several transfers.
 */
export function createClient(settings: S3Settings): S3Client {
  // neon supports Node 20 on purpose; the SDK's multi-line "upgrade to Node 22" warning would otherwise print in
  // the middle of every CLI command that touches S3. It changes nothing else; a user's own setting wins.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  return new S3Client({
    region: settings.region,
    endpoint: settings.endpoint,
    forcePathStyle: settings.forcePathStyle,
    credentials: settings.credentials,
    maxAttempts: settings.retries + 1,
    retryStrategy: retryStrategy(settings),
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    followRegionRedirects: true,
    requestHandler: {
      connectionTimeout: CONNECT_TIMEOUT_MS,
      socketTimeout: IDLE_TIMEOUT_MS,
      httpAgent: { keepAlive: true, maxSockets: Math.max(16, settings.concurrency * 2) },
      httpsAgent: { keepAlive: true, maxSockets: Math.max(16, settings.concurrency * 2) },
    },
  });
}
