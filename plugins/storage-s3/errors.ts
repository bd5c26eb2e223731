import { NeonError } from '../../core/errors.js';

/** Where a failed request went, so that a message can name what the user should check. */
export interface S3Target {
  bucket: string;
  /** The configured endpoint, or undefined for AWS itself. */
  endpoint: string | undefined;
  region: string;
}

/** What the SDK attaches to its errors (service errors carry `$metadata`, network errors carry `code`). */
interface SdkError {
  name?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  Code?: string;
}

/** HTTP status of a service answer, undefined when no answer came (a dropped or refused connection). */
export function statusOf(error: unknown): number | undefined {
  return (error as SdkError)?.$metadata?.httpStatusCode;
}

/** The S3 error code (`NoSuchKey`, `SlowDown`, …) or the Node network code (`ECONNRESET`, …). */
export function codeOf(error: unknown): string {
  const e = (error ?? {}) as SdkError;
  return e.Code ?? e.code ?? e.name ?? '';
}

const NETWORK_TRANSIENT = new Set([
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ESOCKETTIMEDOUT',
  'ECONNABORTED',
  'TimeoutError',
  'RequestTimeout',
]);
// Refused or unresolvable: usually a wrong endpoint, sometimes a store that is restarting. Retried only a few times.
const NETWORK_UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);
const THROTTLED = new Set(['SlowDown', 'Throttling', 'ThrottlingException', 'RequestLimitExceeded', 'TooManyRequests', 'InternalError']);

/** How a failure should be retried: `no`, `yes`, or `few` (a refused connection: only a couple of attempts). */
export function retryKind(error: unknown): 'no' | 'yes' | 'few' {
  if (error instanceof NeonError) return 'no';
  const status = statusOf(error);
  const code = codeOf(error);
  if (NETWORK_UNREACHABLE.has(code) || NETWORK_UNREACHABLE.has(causeCode(error))) return 'few';
  if (status === 429 || (status !== undefined && status >= 500)) return 'yes';
  if (THROTTLED.has(code) || NETWORK_TRANSIENT.has(code) || NETWORK_TRANSIENT.has(causeCode(error))) return 'yes';
  // A dropped connection, as Node words it when no code is set.
  if (status === undefined && /socket hang up|ECONNRESET|EPIPE|aborted|premature close/i.test(String((error as Error)?.message)))
    return 'yes';
  return 'no';
}

function causeCode(error: unknown): string {
  return codeOf((error as { cause?: unknown })?.cause);
}

/** True when S3 answered "no such object" (404 without a body on HEAD, `NoSuchKey` on GET). */
export function isNotFound(error: unknown): boolean {
  const code = codeOf(error);
  return code === 'NoSuchKey' || code === 'NotFound' || (statusOf(error) === 404 && code !== 'NoSuchBucket' && code !== 'NoSuchUpload');
}

/** True when a conditional write lost: 412 PreconditionFailed, or 409 while another conditional write ran. */
export function isConditionFailed(error: unknown): boolean {
  const code = codeOf(error);
  return code === 'PreconditionFailed' || code === 'ConditionalRequestConflict' || statusOf(error) === 412;
}

const CREDENTIAL_CODES = new Set([
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'InvalidToken',
  'ExpiredToken',
  'TokenRefreshRequired',
  'CredentialsProviderError',
]);

/**
 * Turn an SDK error into a one-line `NeonError` naming what to set. Credentials never appear: the SDK's
 * messages do not carry the secret, and ours name only the variables.
 */
export function toNeonError(error: unknown, target: S3Target, what: string): NeonError {
  if (error instanceof NeonError) return error;
  const status = statusOf(error);
  const code = codeOf(error);
  const where = target.endpoint ? `S3 endpoint ${target.endpoint}` : `AWS S3 (region ${target.region})`;
  if (
    CREDENTIAL_CODES.has(code) ||
    code === 'AccessDenied' ||
    status === 403 ||
    /Could not load credentials/i.test(String((error as Error)?.message))
  ) {
    const reason = code && !/^\d+$/.test(code) && code !== 'UnknownError' && code !== 'Unknown' ? code : `HTTP ${status ?? '403'}`;
    return new NeonError(
      's3_credentials',
      `${where} refused ${what} in bucket "${target.bucket}" (${reason}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY` +
        ` (and AWS_SESSION_TOKEN) or accessKeyId / secretAccessKey of storageS3(), and that the key may use this bucket`,
      { status: 502, cause: error },
    );
  }
  if (code === 'NoSuchBucket') return noBucket(target, error);
  if (status === undefined && retryKind(error) !== 'no') {
    const net = NETWORK_UNREACHABLE.has(code) ? code : causeCode(error) || code || 'no answer';
    return new NeonError(
      's3_unreachable',
      `cannot reach ${where} (${net}): check AWS_ENDPOINT (or the endpoint option of storageS3()) and the network`,
      { status: 502, cause: error },
    );
  }
  const detail = (error as Error)?.message && (error as Error).message !== code ? `: ${(error as Error).message}` : '';
  return new NeonError('s3_error', `${where} failed ${what} in bucket "${target.bucket}" (${code || `HTTP ${status}`}${detail})`, {
    status: 502,
    cause: error,
  });
}

/** The bucket does not exist: name it and where we looked. */
export function noBucket(target: S3Target, cause?: unknown): NeonError {
  const where = target.endpoint ? `at ${target.endpoint}` : `in AWS S3 (region ${target.region})`;
  return new NeonError(
    's3_no_bucket',
    `bucket "${target.bucket}" does not exist ${where}: create it, or fix the bucket in the storage URL`,
    {
      status: 404,
      cause,
    },
  );
}
