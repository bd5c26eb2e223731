import { createHash, type Hash } from 'node:crypto';
import { Readable, Transform, pipeline } from 'node:stream';
import { HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { codeOf, isConditionFailed } from './errors.js';
import { attemptsOf } from './retry.js';

/** What one upload needs: the client, where the object goes, and the limits. */
export interface UploadTarget {
  client: S3Client;
  bucket: string;
  /** The full object key (storage prefix included). */
  key: string;
  partSize: number;
  concurrency: number;
  /** Create only if absent: `If-None-Match: *` on the request that makes the object visible. */
  ifAbsent: boolean;
}

/** The conditional write lost: the object existed (or another conditional write won). */
export class ConditionFailed extends Error {}

/** The caller's stream failed; rethrown as it was, since it is not a storage error. */
export class SourceError extends Error {
  constructor(readonly error: unknown) {
    super('source stream failed');
  }
}

/**
 * Store `body` with `@aws-sdk/lib-storage`'s Upload: one PutObject up to `partSize`, else a multipart upload
 * with `concurrency` parts in flight, so memory stays near concurrency × partSize whatever the size (a stream
 * is cut into parts as it is read, never held whole). Each part is a Buffer, so the client's retry strategy
 * retries parts one by one; on failure Upload aborts the multipart upload (stores also expire them).
 *
 * With `ifAbsent`, `If-None-Match: *` goes on the PutObject or CompleteMultipartUpload. When that is refused
 * after a retry (the first attempt's answer was lost), the object found is compared with ours by ETag, so our
 * own landed first attempt is a success and not a conflict.
 */
export async function upload(target: UploadTarget, body: Buffer | Readable): Promise<void> {
  // A stream's digests are taken as it goes; a buffer's only when they are needed (after a lost answer), so that
  // the usual put does not MD5 every byte twice on the daemon's main thread.
  const digests = target.ifAbsent && body instanceof Readable ? new PartDigests(target.partSize) : undefined;
  let source: Readable | Buffer = body;
  let sourceError: unknown;
  if (body instanceof Readable) {
    body.once('error', (error) => (sourceError ??= error));
    // pipeline, not pipe: a failing source must end the tap with its error, or the upload would wait forever.
    if (digests) source = pipeline(body, digests.tap(), () => undefined);
  }
  const run = new Upload({
    client: target.client,
    params: { Bucket: target.bucket, Key: target.key, Body: source, IfNoneMatch: target.ifAbsent ? '*' : undefined },
    queueSize: target.concurrency,
    partSize: target.partSize,
    leavePartsOnError: false,
  });
  try {
    await run.done();
  } catch (error) {
    if (sourceError) throw new SourceError(sourceError);
    if (!target.ifAbsent) throw error;
    // After a lost answer the retry finds the object there (412) or, for a multipart upload, the upload gone.
    const ambiguous = attemptsOf(error) > 1 && (isConditionFailed(error) || codeOf(error) === 'NoSuchUpload');
    if (ambiguous && (await landed(target, (digests ?? PartDigests.of(body as Buffer, target.partSize)).etags()))) return;
    if (isConditionFailed(error)) throw new ConditionFailed();
    throw error;
  }
}

/**
 * The ETags a store may give the object, computed while it is sent: the MD5 of the body (a single PutObject, and
 * some S3-compatible stores for multipart too), and S3's multipart ETag, the MD5 of the parts' MD5s followed by
 * `-<parts>`. Parts are cut at `partSize` as lib-storage cuts them.
 */
class PartDigests {
  private readonly done: Buffer[] = [];
  private readonly whole: Hash = createHash('md5');
  private current: Hash = createHash('md5');
  private filled = 0;

  constructor(private readonly partSize: number) {}

  /** The digests of a whole buffer. */
  static of(body: Buffer, partSize: number): PartDigests {
    const digests = new PartDigests(partSize);
    digests.update(body);
    return digests;
  }

  /** A pass-through stream that hashes what goes through it. */
  tap(): Transform {
    return new Transform({
      transform: (chunk: Buffer, _encoding, callback) => {
        this.update(chunk);
        callback(null, chunk);
      },
    });
  }

  update(data: Buffer): void {
    this.whole.update(data);
    for (let at = 0; at < data.length;) {
      if (this.filled === this.partSize) this.next();
      const piece = data.subarray(at, at + this.partSize - this.filled);
      this.current.update(piece);
      this.filled += piece.length;
      at += piece.length;
    }
  }

  etags(): string[] {
    const whole = `"${this.whole.digest('hex')}"`;
    if (!this.done.length) return [whole];
    const parts = [...this.done, this.current.digest()];
    return [whole, `"${createHash('md5').update(Buffer.concat(parts)).digest('hex')}-${parts.length}"`];
  }

  private next(): void {
    this.done.push(this.current.digest());
    this.current = createHash('md5');
    this.filled = 0;
  }
}

/** True when the object now stored is the one we sent (one of the ETags it may have). */
async function landed(target: UploadTarget, etags: string[]): Promise<boolean> {
  try {
    const head = await target.client.send(new HeadObjectCommand({ Bucket: target.bucket, Key: target.key }));
    return etags.includes(head.ETag ?? '');
  } catch {
    return false;
  }
}
