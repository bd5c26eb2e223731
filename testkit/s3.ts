import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';

// s3rver ships no types; everything used of it is typed at the point of use below.
type S3rver = any;
const S3rver = createRequire(import.meta.url)('s3rver') as new (options: object) => S3rver;

/** A running in-process S3 stand-in (s3rver) and how to reach it. */
export interface S3Fixture {
  /** `http://127.0.0.1:<port>`. */
  endpoint: string;
  /** A bucket that exists. */
  bucket: string;
  /** The environment a neon process needs to use it (WAL-G names). */
  env: Record<string, string>;
  /** Options for `storageS3()` that reach it without touching `process.env`. */
  options: { endpoint: string; region: string; forcePathStyle: boolean; accessKeyId: string; secretAccessKey: string };
  /** The folder s3rver stores objects in. */
  directory: string;
  /** Stop the server and remove its folder. */
  close(): Promise<void>;
}

/** Options of {@link startS3}. */
export interface StartS3Options {
  bucket?: string;
  /**
   * Answer `If-None-Match: *` on PutObject / CompleteMultipartUpload with 412 when the key exists, as S3 and
   * MinIO do (default true). s3rver itself ignores the header; turn this off to test a store that ignores it.
   */
  conditionalWrites?: boolean;
}

/** The key pair s3rver knows. It checks that the access key exists, but not SigV4 signatures. */
export const S3RVER_KEYS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

/**
 * Start s3rver on 127.0.0.1 (a free port) over a temp folder, with one bucket. Gaps between s3rver and S3 are
 * closed here so that tests exercise S3's documented behaviour: listings come in UTF-8 key order across pages
 * (s3rver walks its folders, which puts `a/b` before `a-z`), ListObjectsV2 pages past 1000 keys (s3rver's
 * continuation tokens use a cipher OpenSSL 3 no longer has), and conditional writes are honoured.
 */
export async function startS3(options: StartS3Options = {}): Promise<S3Fixture> {
  const bucket = options.bucket ?? 'neon-test';
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'neon-s3rver-'));
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: process.env.S3RVER_DEBUG !== '1',
    directory,
    configureBuckets: [{ name: bucket }],
  });
  sortListings(server);
  // Before s3rver's router (the last middleware), inside its XML encoder: bodies are still plain objects here.
  const extra = [listV2Pages, ...(options.conditionalWrites !== false ? [ifNoneMatch(server)] : [])];
  server.middleware.splice(server.middleware.length - 1, 0, ...extra);
  const address = (await server.run()) as AddressInfo;
  const endpoint = `http://127.0.0.1:${address.port}`;
  const region = 'us-east-1';
  return {
    endpoint,
    bucket,
    directory,
    env: {
      AWS_ENDPOINT: endpoint,
      AWS_REGION: region,
      AWS_S3_FORCE_PATH_STYLE: 'true',
      AWS_ACCESS_KEY_ID: S3RVER_KEYS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: S3RVER_KEYS.secretAccessKey,
    },
    options: { endpoint, region, forcePathStyle: true, ...S3RVER_KEYS },
    async close() {
      // Keep-alive sockets of clients would hold close() open: end them.
      server.httpServer?.closeAllConnections?.();
      await server.close();
      fs.rmSync(directory, { recursive: true, force: true });
    },
  };
}

interface ListResult {
  objects: { key: string }[];
  commonPrefixes: string[];
  isTruncated: boolean;
}

/** Make s3rver list in S3's order (UTF-8 bytes) and paginate on that order. */
function sortListings(server: S3rver): void {
  const store = server.store;
  const list = store.listObjects.bind(store) as (bucket: string, options: any) => Promise<ListResult>;
  store.listObjects = async (bucket: string, options: any): Promise<ListResult> => {
    if (options.delimiter) return list(bucket, options);
    const all = await list(bucket, { ...options, startAfter: '', maxKeys: Infinity });
    const after = options.startAfter ? Buffer.from(options.startAfter) : undefined;
    const sorted = all.objects
      .map((object) => ({ object, bytes: Buffer.from(object.key) }))
      .sort((a, b) => Buffer.compare(a.bytes, b.bytes))
      .filter(({ bytes }) => !after || Buffer.compare(bytes, after) > 0)
      .map(({ object }) => object);
    const max = options.maxKeys ?? 1000;
    return { objects: sorted.slice(0, max), commonPrefixes: [], isTruncated: sorted.length > max };
  };
}

/**
 * Serve ListObjectsV2 through s3rver's V1 listing: the continuation token is the last key (base64url), passed
 * to V1 as `marker`, and the answer is given V2's fields.
 */
async function listV2Pages(ctx: any, next: () => Promise<void>): Promise<void> {
  const isBucketGet = ctx.method === 'GET' && /^\/[^/]+\/?$/.test(ctx.path);
  if (!isBucketGet || ctx.query['list-type'] !== '2') return next();
  const { 'list-type': _, 'continuation-token': token, 'start-after': startAfter, ...rest } = ctx.query;
  const marker = token ? Buffer.from(String(token), 'base64url').toString() : startAfter;
  ctx.query = marker ? { ...rest, marker } : rest;
  await next();
  const result = ctx.body?.ListBucketResult;
  if (!result) return;
  delete result.Marker;
  delete result.NextMarker;
  result.KeyCount = result.Contents.length;
  if (token) result.ContinuationToken = token;
  if (result.IsTruncated) result.NextContinuationToken = Buffer.from(result.Contents.at(-1).Key).toString('base64url');
}

/**
 * A Koa middleware in front of s3rver's router: a PutObject or CompleteMultipartUpload with `If-None-Match: *`
 * on an existing key answers 412 PreconditionFailed. Writes of one key are serialised meanwhile, so that of two
 * racing conditional writes exactly one wins, as on S3.
 */
function ifNoneMatch(server: S3rver) {
  const locks = new Map<string, Promise<void>>();
  return async (ctx: any, next: () => Promise<void>) => {
    const conditional = ctx.get('if-none-match') === '*';
    const isPut = ctx.method === 'PUT' && !('partNumber' in ctx.query) && !('uploadId' in ctx.query);
    const isComplete = ctx.method === 'POST' && 'uploadId' in ctx.query;
    const [, bucket, ...rest] = ctx.path.split('/');
    if (!conditional || !(isPut || isComplete) || !rest.length) return next();
    const key = rest.map(decodeURIComponent).join('/');
    const id = `${bucket}/${key}`;
    while (locks.has(id)) await locks.get(id);
    let release!: () => void;
    locks.set(id, new Promise<void>((resolve) => (release = resolve)));
    try {
      const file = server.store.getResourcePath(decodeURIComponent(bucket), key, 'object');
      if (fs.existsSync(file)) {
        ctx.status = 412;
        ctx.type = 'application/xml';
        ctx.body =
          '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PreconditionFailed</Code>' +
          '<Message>At least one of the pre-conditions you specified did not hold</Message><Condition>If-None-Match</Condition></Error>';
        ctx.req.resume();
        return;
      }
      await next();
    } finally {
      locks.delete(id);
      release();
    }
  };
}
