import { Readable } from 'node:stream';
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { NeonError } from '../../core/errors.js';
import { checkKey, type PutOptions, type Storage, type StorageObject } from '../../core/storage.js';
import { isNotFound, toNeonError, type S3Target } from './errors.js';
import { resumable } from './resume.js';
import type { S3Settings } from './options.js';
import { ConditionFailed, SourceError, upload, type UploadTarget } from './upload.js';

/**
 * A {@link Storage} over one bucket and key prefix: key `k` is the object `prefix/k`.
 *
 * Puts are atomic because S3 makes an object visible only when PutObject or CompleteMultipartUpload succeeds.
 * Bodies up to one part (8 MiB by default) go in one PutObject; larger ones as a multipart upload (lib-storage's
 * Upload, see upload.ts) whose parts are retried one by one, so a stream is never re-read nor held whole in
 * memory. Every request is retried by the client's strategy (retry.ts).
 */
export class S3Storage implements Storage {
  private readonly root: string;

  constructor(
    readonly url: string,
    private readonly client: S3Client,
    private readonly bucket: string,
    prefix: string,
    private readonly settings: S3Settings,
    private readonly target: S3Target,
  ) {
    this.root = prefix ? `${prefix}/` : '';
  }

  async put(key: string, body: Buffer | string | Readable, options: PutOptions = {}): Promise<void> {
    const target: UploadTarget = {
      ...this.settings,
      client: this.client,
      bucket: this.bucket,
      key: this.full(key),
      ifAbsent: !!options.ifAbsent,
    };
    try {
      // If-None-Match is the real guard, but some stores ignore it: a HEAD first refuses the common case on
      // those too (two writers racing between HEAD and PUT can still both succeed there), and spares
      // uploading a body that would be refused.
      if (options.ifAbsent && (await this.head(key))) throw new ConditionFailed();
      await upload(target, typeof body === 'string' ? Buffer.from(body) : body);
    } catch (error) {
      if (error instanceof SourceError) throw error.error;
      if (error instanceof ConditionFailed) {
        throw new NeonError('conflict', `${key} already exists in ${this.url}: another writer stored it first`, { status: 409 });
      }
      throw toNeonError(error, this.target, `the put of "${key}"`);
    }
  }

  async get(key: string): Promise<Readable> {
    const Key = this.full(key);
    try {
      const answer = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key }));
      // In Node the SDK's body is the HTTP response itself: a stream, nothing is buffered here. A connection
      // lost mid-body resumes with a ranged GET of the same version (If-Match on its ETag).
      const reopen = async (from: number) => {
        const range = new GetObjectCommand({ Bucket: this.bucket, Key, Range: `bytes=${from}-`, IfMatch: answer.ETag });
        return (await this.client.send(range)).Body as Readable;
      };
      const fail = (error: unknown) => toNeonError(error, this.target, `the get of "${key}"`);
      return resumable(answer.Body as Readable, answer.ContentLength, reopen, this.settings.retries, fail);
    } catch (error) {
      if (isNotFound(error)) throw this.notFound(key);
      throw toNeonError(error, this.target, `the get of "${key}"`);
    }
  }

  async head(key: string): Promise<StorageObject | undefined> {
    const Key = this.full(key);
    try {
      const answer = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }));
      return { key, size: answer.ContentLength ?? 0, mtime: answer.LastModified };
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw toNeonError(error, this.target, `the head of "${key}"`);
    }
  }

  async *list(prefix = ''): AsyncIterable<StorageObject> {
    // Same rule as the folder backend: the part up to the last slash must be a valid key.
    const cut = prefix.lastIndexOf('/');
    if (cut >= 0) checkKey(prefix.slice(0, cut));
    let token: string | undefined;
    do {
      const page = await this.client
        .send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.root + prefix, ContinuationToken: token }))
        .catch((error: unknown) => {
          throw toNeonError(error, this.target, `listing "${prefix}"`);
        });
      // S3 returns keys in UTF-8 byte order, page after page, which is the key order the contract asks for.
      for (const object of page.Contents ?? []) {
        const key = object.Key!.slice(this.root.length);
        // Objects other tools made that no key can name (console "folder" markers ending in /, a//b) are skipped.
        if (!isPlainKey(key)) continue;
        yield { key, size: object.Size ?? 0, mtime: object.LastModified };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(key: string): Promise<void> {
    const Key = this.full(key);
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key }));
    } catch (error) {
      // S3 answers 204 for a missing key; a few compatibles answer 404, which is the same outcome.
      if (isNotFound(error)) return;
      throw toNeonError(error, this.target, `the delete of "${key}"`);
    }
  }

  /** Close the client's sockets; the storage is not usable afterwards. */
  destroy(): void {
    this.client.destroy();
  }

  private full(key: string): string {
    return this.root + checkKey(key);
  }

  private notFound(key: string): NeonError {
    return new NeonError('not_found', `${key} not found in ${this.url}`, { status: 404 });
  }
}

function isPlainKey(key: string): boolean {
  try {
    checkKey(key);
    return true;
  } catch {
    return false;
  }
}
