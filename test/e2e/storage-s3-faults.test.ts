/**
 * storage-s3 against a bad network and bad input: s3rver behind a proxy that fails requests (5xx, throttling,
 * resets, delays), and wrong credentials, a missing bucket, an unreachable endpoint. What a user sees: data
 * that arrives intact despite the faults, and one clear line naming what to fix when it cannot.
 */
import { createHash, randomBytes } from 'node:crypto';
import net, { type AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { NeonError, PluginError } from '../../core/errors.js';
import { readObject, type Storage } from '../../core/storage.js';
import storageS3, { type StorageS3Options } from '../../plugins/storage-s3/index.js';
import { startFaultProxy, type FaultProxy } from '../../testkit/fault-proxy.js';
import { startS3, type S3Fixture } from '../../testkit/s3.js';
import { keys } from '../../testkit/assert.js';

const MiB = 1024 * 1024;

type S3Storage = Storage & { destroy(): void };

/** Open `url` through the plugin, as the storage hook does. */
async function open(url: string, options: StorageS3Options): Promise<S3Storage> {
  return (await storageS3(options).resolveStorage!.handler({ scheme: 's3', url, raw: url })) as S3Storage;
}

/** The NeonError that `promise` rejects with, and how long it took. */
async function failure(promise: Promise<unknown>): Promise<{ error: NeonError; ms: number }> {
  const start = Date.now();
  const error = await promise.then(
    () => 'resolved',
    (e: unknown) => e,
  );
  assert.instance(error, NeonError, `expected a NeonError, got ${String(error)}`);
  return { error: error as NeonError, ms: Date.now() - start };
}

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');


/** A loopback port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const ctx = { s3: undefined as unknown as S3Fixture, proxy: undefined as unknown as FaultProxy };

const faults = suite('storage-s3 through a faulty network', ctx);

faults.before(async (c) => {
  c.s3 = await startS3();
  c.proxy = await startFaultProxy({ target: c.s3.endpoint, seed: 7 });
});
faults.after.each(({ proxy }) => proxy.configure(0));

faults(
  'with 30% of requests failing (500, 503 SlowDown, 429, resets), puts, gets and lists return identical content',
  async ({ s3, proxy }) => {
    proxy.configure(0.3, ['error500', 'slowdown503', 'throttle429', 'reset']);
    const storage = await open(`s3://${s3.bucket}/flaky`, {
      ...s3.options,
      endpoint: proxy.endpoint,
      partSizeMb: 5,
      concurrency: 2,
      retries: 10,
    });
    try {
      const small = Array.from({ length: 12 }, (_, i) => [`small/${i}`, randomBytes(1000 + i)] as const);
      const big = randomBytes(12 * MiB + 7);
      const streamed = randomBytes(11 * MiB + 3);
      for (const [key, body] of small) await storage.put(key, body);
      await storage.put('big/buffer', big);
      await storage.put('big/stream', Readable.from(chunksOf(streamed, 100_000)));
      await storage.put('once', 'first', { ifAbsent: true });
      for (const [key, body] of small) assert.ok((await readObject(storage, key)).equals(body), key);
      assert.is(sha(await readObject(storage, 'big/buffer')), sha(big), 'the multipart Buffer is intact');
      assert.is(sha(await readObject(storage, 'big/stream')), sha(streamed), 'the multipart stream is intact');
      assert.is((await storage.head('big/stream'))?.size, streamed.length);
      assert.equal(await keys(storage), ['big/buffer', 'big/stream', 'once', ...small.map(([k]) => k).sort()]);
      assert.is((await failure(storage.put('once', 'second', { ifAbsent: true }))).error.code, 'conflict');
      await storage.delete('small/0');
      assert.is(await storage.head('small/0'), undefined);
      const injected = Object.values(proxy.injected).reduce((a, b) => a + b, 0);
      assert.ok(injected >= 10, `faults were really injected (${JSON.stringify(proxy.injected)})`);
      for (const kind of ['error500', 'slowdown503', 'throttle429', 'reset'] as const) assert.ok(proxy.injected[kind] > 0, `some ${kind}`);
    } finally {
      storage.destroy();
    }
  },
);

faults('requests held for 2 s still complete, with the same content', async ({ s3, proxy }) => {
  const storage = await open(`s3://${s3.bucket}/slow`, { ...s3.options, endpoint: proxy.endpoint });
  const before = proxy.injected.delay;
  proxy.configure(0.3, ['delay']);
  try {
    const bodies = Array.from({ length: 8 }, (_, i) => randomBytes(5000 + i));
    const start = Date.now();
    await Promise.all(bodies.map((body, i) => storage.put(`k${i}`, body)));
    const got = await Promise.all(bodies.map((_, i) => readObject(storage, `k${i}`)));
    got.forEach((data, i) => assert.ok(data.equals(bodies[i]), `k${i}`));
    assert.is((await keys(storage)).length, 8);
    assert.ok(proxy.injected.delay > before, 'some requests were delayed');
    assert.ok(Date.now() - start >= 2000, 'the delays happened');
  } finally {
    storage.destroy();
  }
});

faults(
  'a store that keeps answering 503 SlowDown: the put gives up after the configured retries, naming the code',
  async ({ s3, proxy }) => {
    const storage = await open(`s3://${s3.bucket}/busy`, { ...s3.options, endpoint: proxy.endpoint, retries: 2 });
    try {
      proxy.answer({ status: 503, code: 'SlowDown', message: 'Please reduce your request rate.' });
      const seen = proxy.requests;
      const { error, ms } = await failure(storage.put('k', 'v'));
      assert.is(error.code, 's3_error');
      assert.match(error.message, /SlowDown/);
      assert.is(proxy.requests - seen, 3, 'one attempt and two retries');
      assert.ok(ms < 2000, `gave up in ${ms} ms`);
    } finally {
      proxy.answer(undefined);
      storage.destroy();
    }
  },
);

faults('a download dropped halfway resumes where it stopped and returns identical content', async ({ s3, proxy }) => {
  const storage = await open(`s3://${s3.bucket}/cut`, { ...s3.options, endpoint: proxy.endpoint, partSizeMb: 5 });
  try {
    const body = randomBytes(7 * MiB + 11);
    await storage.put('obj', body);
    proxy.configure(1, ['cut']);
    const before = proxy.injected.cut;
    const got = await readObject(storage, 'obj');
    proxy.configure(0);
    assert.ok(proxy.injected.cut - before >= 2, `the body was cut more than once (${proxy.injected.cut - before})`);
    assert.is(got.length, body.length);
    assert.is(sha(got), sha(body), 'the resumed download is byte-identical');
  } finally {
    storage.destroy();
  }
});

faults('credentials refused in the middle of work (403 InvalidAccessKeyId) are s3_credentials, not retried', async ({ s3, proxy }) => {
  const storage = await open(`s3://${s3.bucket}/creds`, { ...s3.options, endpoint: proxy.endpoint });
  try {
    proxy.answer({ status: 403, code: 'InvalidAccessKeyId', message: 'The AWS Access Key Id you provided does not exist in our records.' });
    const seen = proxy.requests;
    const { error } = await failure(storage.get('k'));
    assert.is(error.code, 's3_credentials');
    assert.match(error.message, /InvalidAccessKeyId.*check AWS_ACCESS_KEY_ID \/ AWS_SECRET_ACCESS_KEY/);
    assert.is(proxy.requests - seen, 1, 'a refusal is not retried');
  } finally {
    proxy.answer(undefined);
    storage.destroy();
  }
});

faults.after(async ({ s3, proxy }) => {
  await proxy.close();
  await s3.close();
});

const input = suite('storage-s3 bad input', ctx);

input.before(async (c) => {
  c.s3 = await startS3();
});

input('wrong credentials: one line, code s3_credentials, naming the variables and never the secret', async ({ s3 }) => {
  const secret = 'do-not-print-this-secret';
  const { error, ms } = await failure(
    open(`s3://${s3.bucket}/x`, { ...s3.options, accessKeyId: 'NOT-A-KEY', secretAccessKey: secret, retries: 1 }),
  );
  assert.is(error.code, 's3_credentials');
  assert.match(error.message, /check AWS_ACCESS_KEY_ID \/ AWS_SECRET_ACCESS_KEY/);
  assert.match(error.message, s3.endpoint);
  assert.not.match(error.message, secret);
  assert.not.match(error.message, '\n');
  assert.ok(ms < 2000, `answered in ${ms} ms`);
});

input('a missing bucket: s3_no_bucket naming the bucket and the endpoint', async ({ s3 }) => {
  const { error, ms } = await failure(open('s3://no-such-bucket/prefix', { ...s3.options, retries: 1 }));
  assert.is(error.code, 's3_no_bucket');
  assert.match(error.message, /bucket "no-such-bucket" does not exist at http:\/\/127\.0\.0\.1:\d+/);
  assert.not.match(error.message, '\n');
  assert.ok(ms < 2000, `answered in ${ms} ms`);
});

input('an unreachable endpoint: s3_unreachable naming the endpoint and AWS_ENDPOINT, quickly', async ({ s3 }) => {
  const endpoint = `http://127.0.0.1:${await closedPort()}`;
  const { error, ms } = await failure(open(`s3://${s3.bucket}/x`, { ...s3.options, endpoint, retries: 5 }));
  assert.is(error.code, 's3_unreachable');
  assert.match(error.message, `cannot reach S3 endpoint ${endpoint}`);
  assert.match(error.message, /ECONNREFUSED.*check AWS_ENDPOINT/);
  assert.not.match(error.message, '\n');
  assert.ok(ms < 3000, `a refused connection is retried only a few times (${ms} ms)`);
});

input('settings come from WAL-G environment variables when no option is given', async ({ s3 }) => {
  const saved = { ...process.env };
  Object.assign(process.env, s3.env);
  try {
    const storage = await open(`s3://${s3.bucket}/from-env/`, {});
    assert.is(storage.url, `s3://${s3.bucket}/from-env`);
    await storage.put('k', 'v');
    assert.is((await readObject(storage, 'k')).toString(), 'v');
    storage.destroy();
  } finally {
    for (const name of Object.keys(s3.env)) if (saved[name] === undefined) delete process.env[name];
    Object.assign(process.env, saved);
  }
});

input('a store that ignores If-None-Match still refuses ifAbsent on an existing key (HEAD check)', async () => {
  const lax = await startS3({ conditionalWrites: false });
  const storage = await open(`s3://${lax.bucket}/lax`, lax.options);
  try {
    await storage.put('k', 'old');
    assert.is((await failure(storage.put('k', 'new', { ifAbsent: true }))).error.code, 'conflict');
    assert.is((await readObject(storage, 'k')).toString(), 'old');
  } finally {
    storage.destroy();
    await lax.close();
  }
});

input('bad options and URLs are refused with the plugin name, never echoing credentials', async () => {
  assert.throws(() => storageS3({ bogus: 1 } as never), /\[plugin storage-s3\] unknown option "bogus"/);
  const options: [StorageS3Options, RegExp][] = [
    [{ partSizeMb: 4 }, /partSizeMb must be an integer from 5/],
    [{ concurrency: 0 }, /concurrency must be an integer from 1/],
    [{ retries: -1 }, /retries must be an integer from 0/],
    [{ accessKeyId: 'a' }, /secretAccessKey is not/],
    [{ endpoint: 'http://user:pw-XYZ@host' }, /endpoint must not carry credentials/],
  ];
  for (const [given, pattern] of options) {
    const { error } = await failure(open('s3://bucket/p', given));
    assert.instance(error, PluginError);
    assert.is(error.code, 'bad_plugin_option');
    assert.match(error.message, /^\[plugin storage-s3\] /);
    assert.match(error.message, pattern);
    assert.not.match(error.message, 'pw-XYZ');
  }
  const urls: [string, RegExp][] = [
    ['s3://AKIA:pw-XYZ@bucket/p', /must not carry credentials/],
    ['s3://b/p', /valid bucket name/],
    ['s3://bucket/a//b', /empty/],
  ];
  for (const [url, pattern] of urls) {
    const { error } = await failure(open(url, {}));
    assert.is(error.code, 'bad_storage_url');
    assert.match(error.message, pattern);
    assert.not.match(error.message, 'pw-XYZ');
  }
});

input.after(async ({ s3 }) => s3.close());

function* chunksOf(data: Buffer, size: number) {
  for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
}

faults.run();
input.run();
