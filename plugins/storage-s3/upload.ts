import { createHash } from 'node:crypto';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  HeadObjectCommand,
  PutObjectCommand,
  UploadPartCommand,
  type CompletedPart,
  type S3Client,
} from '@aws-sdk/client-s3';
import { codeOf, isConditionFailed } from './errors.js';
import { withRetry, type RetryStats } from './retry.js';

/** What one upload needs: the client, where the object goes, and the limits. */
export interface UploadTarget {
  client: S3Client;
  bucket: string;
  /** The full object key (storage prefix included). */
  key: string;
  partSize: number;
  concurrency: number;
  retries: number;
  /** Create only if absent: `If-None-Match: *` on the request that makes the object visible. */
  ifAbsent: boolean;
}

/** The conditional write lost: the object existed (or another conditional write won). */
export class ConditionFailed extends Error {}

/** Send an in-memory body with one PutObject; the Buffer can be resent, so every failure is retried. */
export async function putSingle(target: UploadTarget, data: Buffer): Promise<void> {
  const { client, bucket, key, ifAbsent } = target;
  const stats: RetryStats = { attempts: 0 };
  const send = () =>
    client.send(
      new PutObjectCommand({ Bucket: bucket, Key: key, Body: data, ContentLength: data.length, IfNoneMatch: ifAbsent ? '*' : undefined }),
    );
  try {
    await withRetry(send, target, stats);
  } catch (error) {
    if (!ifAbsent || !isConditionFailed(error)) throw error;
    // A retry after a lost answer finds our own first attempt: that is a success, not a conflict.
    if (stats.attempts > 1 && (await landed(target, `"${md5(data).toString('hex')}"`))) return;
    throw new ConditionFailed();
  }
}

/**
 * Upload parts from `nextPart` as one multipart upload, at most `concurrency` parts in flight; the object appears
 * atomically when CompleteMultipartUpload succeeds. Each part is a Buffer, so each part is retried on its own.
 * `nextPart` gets a free buffer when `pooled` (else undefined, for callers that slice their own Buffer) and
 * returns the part, or undefined at the end; `first` is a part the caller has already read. On any failure the upload is aborted (best effort; stores also expire them).
 */
export async function putMultipart(
  target: UploadTarget,
  nextPart: (free: Buffer | undefined) => Promise<Buffer | undefined>,
  options: { pooled: boolean; first?: Buffer },
): Promise<void> {
  const { client, bucket, key, ifAbsent } = target;
  const created = await withRetry(() => client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key })), target);
  const uploadId = created.UploadId!;
  const parts: CompletedPart[] = [];
  const digests: Buffer[] = [];
  const inFlight = new Set<Promise<void>>();
  // Part buffers are reused: memory stays at (concurrency + 1) × partSize whatever the object's size.
  const free: Buffer[] = [];
  let failure: unknown;
  let size = 0;
  try {
    for (let number = 1; ; number++) {
      const first = number === 1 ? options.first : undefined;
      const buffer = first ?? (options.pooled ? (free.pop() ?? Buffer.allocUnsafe(target.partSize)) : undefined);
      const data = first ?? (await nextPart(buffer));
      if (failure) throw failure;
      if (!data) break;
      size += data.length;
      if (ifAbsent) digests[number - 1] = md5(data);
      const upload = withRetry(
        () =>
          client.send(
            new UploadPartCommand({
              Bucket: bucket,
              Key: key,
              UploadId: uploadId,
              PartNumber: number,
              Body: data,
              ContentLength: data.length,
            }),
          ),
        target,
      ).then(
        (answer) => void (parts[number - 1] = { PartNumber: number, ETag: answer.ETag }),
        (error) => void (failure ??= error),
      );
      const tracked = upload.finally(() => {
        inFlight.delete(tracked);
        if (buffer) free.push(buffer);
      });
      inFlight.add(tracked);
      if (inFlight.size >= target.concurrency) await Promise.race(inFlight);
      if (failure) throw failure;
    }
    await Promise.all(inFlight);
    if (failure) throw failure;
    await complete(target, uploadId, parts, digests, size);
  } catch (error) {
    await Promise.allSettled(inFlight);
    await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId })).catch(() => undefined);
    throw error;
  }
}

async function complete(target: UploadTarget, uploadId: string, parts: CompletedPart[], digests: Buffer[], size: number): Promise<void> {
  const { client, bucket, key, ifAbsent } = target;
  const stats: RetryStats = { attempts: 0 };
  const etag = ifAbsent ? `"${md5(Buffer.concat(digests)).toString('hex')}-${digests.length}"` : undefined;
  try {
    await withRetry(
      () =>
        client.send(
          new CompleteMultipartUploadCommand({
            Bucket: bucket,
            Key: key,
            UploadId: uploadId,
            MultipartUpload: { Parts: parts },
            IfNoneMatch: ifAbsent ? '*' : undefined,
          }),
        ),
      target,
      stats,
    );
  } catch (error) {
    // After a lost answer the retry finds the upload gone (NoSuchUpload) or, when conditional, the object
    // present: if the object is ours, the first attempt did complete.
    const ambiguous = stats.attempts > 1 && (codeOf(error) === 'NoSuchUpload' || (ifAbsent && isConditionFailed(error)));
    if (ambiguous && (await landed(target, etag, size))) return;
    if (ifAbsent && isConditionFailed(error)) throw new ConditionFailed();
    throw error;
  }
}

/** True when the object now stored is the one we sent (same ETag, or same size when the ETag is unknown). */
async function landed(target: UploadTarget, etag: string | undefined, size?: number): Promise<boolean> {
  try {
    const head = await withRetry(() => target.client.send(new HeadObjectCommand({ Bucket: target.bucket, Key: target.key })), target);
    return etag ? head.ETag === etag : head.ContentLength === size;
  } catch {
    return false;
  }
}

function md5(data: Buffer): Buffer {
  return createHash('md5').update(data).digest();
}
