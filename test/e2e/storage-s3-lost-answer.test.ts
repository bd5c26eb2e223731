/**
 * A conditional put (`ifAbsent`) whose answer is lost on the way back: the store kept the object, the client saw
 * a reset connection and retried, and the retry is refused because the object is there. That refusal is our own
 * first attempt, not another writer: the put succeeds. What a user would otherwise see is a push failing with
 * "another writer stored it first" on a flaky network, with nobody else writing.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { NeonError } from '../../core/errors.js';
import { readObject, type Storage } from '../../core/storage.js';
import storageS3 from '../../plugins/storage-s3/index.js';
import { startS3, type S3Fixture } from '../../testkit/s3.js';

const MiB = 1024 * 1024;

/** A proxy that forwards everything, but drops the answer of the next request `drop` matches (after the store acted). */
interface LossyProxy {
  endpoint: string;
  drop: ((method: string, url: URL) => boolean) | undefined;
  dropped: number;
  close(): Promise<void>;
}

async function startLossyProxy(target: string): Promise<LossyProxy> {
  const upstream = new URL(target);
  const proxy: LossyProxy = { endpoint: '', drop: undefined, dropped: 0, close: async () => undefined };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    const lose = proxy.drop?.(req.method!, url) ?? false;
    if (lose) proxy.drop = undefined;
    const forward = http.request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        if (lose) {
          // The store has done the work; the client never hears about it.
          answer.resume();
          answer.on('end', () => {
            proxy.dropped++;
            req.socket.destroy();
          });
          return;
        }
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    forward.on('error', () => req.socket.destroy());
    req.pipe(forward);
  });
  server.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  proxy.endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  proxy.close = async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  };
  return proxy;
}

const ctx = { s3: undefined as unknown as S3Fixture, proxy: undefined as unknown as LossyProxy, storage: undefined as unknown as Storage };
const test = suite('storage-s3: a conditional put whose answer was lost', ctx);

test.before(async (c) => {
  c.s3 = await startS3();
  c.proxy = await startLossyProxy(c.s3.endpoint);
  const url = `s3://${c.s3.bucket}/lossy`;
  c.storage = (await storageS3({ ...c.s3.options, endpoint: c.proxy.endpoint, partSizeMb: 5 }).resolveStorage!.handler({
    scheme: 's3',
    url,
    raw: url,
  })) as Storage;
});

test.after(async (c) => {
  (c.storage as Storage & { destroy(): void }).destroy();
  await c.proxy.close();
  await c.s3.close();
});

test('a single PutObject that landed before its answer was lost succeeds, with the content intact', async ({ proxy, storage }) => {
  const body = randomBytes(100_000);
  proxy.drop = (method, url) => method === 'PUT' && url.pathname.endsWith('/lossy/small') && !url.searchParams.has('uploadId');
  await storage.put('small', body, { ifAbsent: true });
  assert.is(proxy.dropped, 1, 'the first answer was dropped');
  assert.ok((await readObject(storage, 'small')).equals(body));
});

test('a multipart upload whose CompleteMultipartUpload answer was lost succeeds (Buffer and stream)', async ({ proxy, storage }) => {
  for (const [key, streamed] of [
    ['big-buffer', false],
    ['big-stream', true],
  ] as const) {
    const body = randomBytes(12 * MiB + 5);
    const before = proxy.dropped;
    proxy.drop = (method, url) => method === 'POST' && url.pathname.endsWith(`/lossy/${key}`) && url.searchParams.has('uploadId');
    await storage.put(key, streamed ? Readable.from([body.subarray(0, 7 * MiB), body.subarray(7 * MiB)]) : body, { ifAbsent: true });
    assert.is(proxy.dropped - before, 1, `${key}: the completion's answer was dropped`);
    assert.ok((await readObject(storage, key)).equals(body), `${key} is intact`);
  }
});

test("another writer's object is still a conflict, and keeps its content", async ({ storage }) => {
  await storage.put('taken', 'first');
  const error = await storage.put('taken', randomBytes(6 * MiB), { ifAbsent: true }).catch((e: unknown) => e);
  assert.instance(error, NeonError);
  assert.is((error as NeonError).code, 'conflict');
  assert.is((await readObject(storage, 'taken')).toString(), 'first');
});

test.run();
