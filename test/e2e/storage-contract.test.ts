/**
 * The storage contract, run against every backend: a folder (storage-file) and S3 (storage-s3 over s3rver).
 * A case here is something any caller relies on whatever the backend; backend-specific cases (temp files on
 * disk, crash leftovers, S3 faults) live in the backend's own tests.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { NeonError } from '../../core/errors.js';
import { readObject, type Storage } from '../../core/storage.js';
import storageFile from '../../plugins/storage-file/index.js';
import storageS3 from '../../plugins/storage-s3/index.js';
import { startS3, type S3Fixture } from '../../testkit/s3.js';
import { codeOf, keys } from '../../testkit/assert.js';

const MiB = 1024 * 1024;

/** A backend under test: how to open a fresh, empty storage and what its URL must be. */
interface Backend {
  name: string;
  setup(): Promise<void>;
  teardown(): Promise<void>;
  /** A fresh empty storage and the URL it must report. */
  open(): Promise<{ storage: Storage; url: string; close(): void }>;
}

const tmpRoots: string[] = [];
const fileBackend: Backend = {
  name: 'storage-file',
  async setup() {},
  async teardown() {
    for (const dir of tmpRoots.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
  },
  async open() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'neon-contract-'));
    tmpRoots.push(dir);
    const root = path.join(dir, 'store');
    const url = pathToFileURL(root).href;
    const storage = await storageFile().resolveStorage!.handler({ scheme: 'file', url, raw: root });
    return { storage: storage!, url, close() {} };
  },
};

let s3: S3Fixture | undefined;
let prefixes = 0;
const s3Backend: Backend = {
  name: 'storage-s3',
  async setup() {
    s3 = await startS3();
  },
  async teardown() {
    await s3?.close();
  },
  async open() {
    // A fresh prefix per test is a fresh, empty storage; small parts make the big cases multipart.
    const url = `s3://${s3!.bucket}/contract/t${++prefixes}`;
    const plugin = storageS3({ ...s3!.options, partSizeMb: 5, concurrency: 2 });
    const storage = (await plugin.resolveStorage!.handler({ scheme: 's3', url: url + '/', raw: url })) as Storage & { destroy(): void };
    return { storage, url, close: () => storage.destroy() };
  },
};


const text = (storage: Storage, key: string) => readObject(storage, key).then((b) => b.toString());

/** Run `fn` over `items` with at most `limit` at once. */
async function parallel<T>(items: T[], limit: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  const queue = [...items];
  await Promise.all(
    Array.from({ length: limit }, async () => {
      for (let item = queue.shift(); item !== undefined; item = queue.shift()) await fn(item);
    }),
  );
}

type Ctx = { storage: Storage; url: string; close(): void };

for (const backend of [fileBackend, s3Backend]) {
  const suites: ReturnType<typeof suite<Ctx>>[] = [];
  /** A suite whose tests each get a fresh, empty storage of this backend. */
  const storageSuite = (name: string) => {
    const test = suite<Ctx>(`${backend.name}: ${name}`, {} as Ctx);
    test.before.each(async (ctx) => {
      Object.assign(ctx, await backend.open());
    });
    test.after.each((ctx) => ctx.close());
    suites.push(test);
    return test;
  };

  const bodies = storageSuite('put and get');

  bodies('Buffer, string and stream bodies come back byte-identical, with their sizes', async ({ storage, url }) => {
    assert.is(storage.url, url, 'the URL is canonical');
    const binary = Buffer.from([0, 255, 10, 13, 0, 128]);
    const big = randomBytes(4 * MiB + 123);
    let pulled = 0;
    function* chunks() {
      for (let at = 0; at < big.length; at += 64 * 1024, pulled++) yield big.subarray(at, at + 64 * 1024);
    }
    await storage.put('bin', binary);
    await storage.put('text', 'héllo wörld\n');
    await storage.put('empty', '');
    await storage.put('deep/big', Readable.from(chunks()));
    await storage.put('strings', Readable.from(['ab', 'cd', 'é']));
    assert.is(pulled, 65, 'the whole stream was consumed');
    assert.ok((await readObject(storage, 'bin')).equals(binary));
    assert.is(await text(storage, 'text'), 'héllo wörld\n');
    assert.is(await text(storage, 'empty'), '');
    assert.ok((await readObject(storage, 'deep/big')).equals(big), 'the streamed object is byte-identical');
    assert.is(await text(storage, 'strings'), 'abcdé');
    assert.is((await storage.head('deep/big'))?.size, big.length);
    assert.is((await storage.head('text'))?.size, Buffer.byteLength('héllo wörld\n'));
    assert.is((await storage.head('empty'))?.size, 0);
    assert.instance((await storage.head('bin'))?.mtime, Date);
    assert.equal(await keys(storage), ['bin', 'deep/big', 'empty', 'strings', 'text']);
  });

  bodies('a missing key: head is undefined, get is not_found, also for folders and paths through an object', async ({ storage }) => {
    await storage.put('obj', 'x');
    await storage.put('wal/seg', 'y');
    for (const key of ['nope', 'wal/nope', 'wal', 'obj/child']) {
      assert.is(await storage.head(key), undefined, `head ${key}`);
      assert.is(await codeOf(storage.get(key)), 'not_found', `get ${key}`);
    }
  });

  bodies('delete removes; deleting a missing key, a folder or a path through an object is a no-op', async ({ storage }) => {
    await storage.put('a', 'x');
    await storage.put('wal/seg', 'y');
    await storage.delete('a');
    assert.is(await storage.head('a'), undefined);
    assert.is(await codeOf(storage.get('a')), 'not_found');
    for (const key of ['a', 'never', 'wal', 'wal/seg/x']) await storage.delete(key);
    assert.is(await text(storage, 'wal/seg'), 'y', 'deleting the folder key left its objects alone');
    assert.equal(await keys(storage), ['wal/seg']);
  });

  bodies('put replaces an existing object, also with a shorter one', async ({ storage }) => {
    await storage.put('k', 'a long first version');
    await storage.put('k', Buffer.from('short'));
    assert.is(await text(storage, 'k'), 'short');
    assert.is((await storage.head('k'))?.size, 5);
    assert.equal(await keys(storage), ['k']);
  });

  bodies("a put whose stream fails leaves the old object, with the stream's own error", async ({ storage }) => {
    await storage.put('k', 'old');
    const failing = new Readable({
      read() {
        this.push(Buffer.alloc(1024, 'n'));
        this.destroy(new Error('source broke'));
      },
    });
    const error = await storage.put('k', failing).catch((e: Error) => e);
    assert.match(String((error as Error)?.message), /source broke/);
    assert.is(await text(storage, 'k'), 'old');
    assert.equal(await keys(storage), ['k']);
  });

  bodies('keys with spaces, unicode and URL-special characters round-trip and list in order', async ({ storage }) => {
    const special = [
      'a b/c d',
      'plus+sign',
      'q?x=1&y=2',
      'hash#frag',
      'pct%20lit',
      'ünï/cødé ✓',
      'semi;colon,comma',
      'quote\'"',
      'tilde~star*(paren)',
      'x=1@host:9',
    ];
    for (const key of special) await storage.put(key, `body of ${key}`);
    for (const key of special) {
      assert.is(await text(storage, key), `body of ${key}`, key);
      assert.is((await storage.head(key))?.size, Buffer.byteLength(`body of ${key}`), key);
    }
    const byBytes = [...special].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    assert.equal(await keys(storage), byBytes, 'listed in UTF-8 byte order');
    assert.equal(await keys(storage, 'ünï/'), ['ünï/cødé ✓']);
    await storage.delete('q?x=1&y=2');
    assert.is(await storage.head('q?x=1&y=2'), undefined);
    assert.is(await text(storage, 'plus+sign'), 'body of plus+sign');
  });

  const listing = storageSuite('list');

  listing('lists keys in order, into nested folders, filtered by any prefix', async ({ storage }) => {
    const all = [
      'a-z',
      'a/b',
      'base/2024/x',
      'base/2024/y',
      'base/b',
      'wal.bak',
      'wal/000000010000000000000001',
      'wal/000000010000000000000002',
      'wal/00000002.history',
      'wal/000000020000000000000001',
      'zeta',
    ];
    for (const key of [...all].reverse()) await storage.put(key, key);
    assert.equal(await keys(storage), all);
    assert.equal(await keys(storage, ''), all);
    assert.equal(await keys(storage, 'wal/0000000100'), ['wal/000000010000000000000001', 'wal/000000010000000000000002']);
    assert.equal(await keys(storage, 'wal/00000002'), ['wal/00000002.history', 'wal/000000020000000000000001']);
    assert.equal(
      await keys(storage, 'wal'),
      all.filter((k) => k.startsWith('wal')),
      'wal matches wal.bak and wal/…',
    );
    assert.equal(
      await keys(storage, 'wal/'),
      all.filter((k) => k.startsWith('wal/')),
    );
    assert.equal(await keys(storage, 'ba'), ['base/2024/x', 'base/2024/y', 'base/b']);
    assert.equal(await keys(storage, 'base/2024/'), ['base/2024/x', 'base/2024/y']);
    assert.equal(await keys(storage, 'a'), ['a-z', 'a/b']);
    for (const missing of ['nope', 'nope/', 'wal/9', 'base/2025/', 'zeta/x', 'zeta/']) {
      assert.equal(await keys(storage, missing), [], `prefix ${missing}`);
    }
    for await (const object of storage.list('base/2024/x')) assert.equal([object.key, object.size], ['base/2024/x', 11]);
  });

  listing('more than 1000 keys are all listed, once each, in order (S3 pages at 1000)', async ({ storage }) => {
    const many = Array.from({ length: 1234 }, (_, i) => `many/${String(i).padStart(5, '0')}`);
    await parallel([...many].reverse(), 16, (key) => storage.put(key, key.slice(5)));
    await storage.put('manz', 'after');
    const listed: string[] = [];
    let bytes = 0;
    for await (const object of storage.list('many/')) {
      listed.push(object.key);
      bytes += object.size;
    }
    assert.is(listed.length, many.length);
    assert.equal(listed, many);
    assert.is(bytes, many.length * 5, 'every size is right');
    assert.equal((await keys(storage, 'man')).slice(-2), ['many/01233', 'manz']);
    assert.equal(await keys(storage, 'many/0100'), many.slice(1000, 1010));
  });

  listing('a prefix that climbs out of the root is refused', async ({ storage }) => {
    assert.is(await codeOf(keys(storage, '../')), 'bad_key');
    assert.is(await codeOf(keys(storage, 'a/../../x')), 'bad_key');
  });

  const conditional = storageSuite('ifAbsent');

  conditional('ifAbsent on an existing key is a conflict and keeps the old content', async ({ storage }) => {
    await storage.put('k', 'old');
    assert.is(await codeOf(storage.put('k', 'new', { ifAbsent: true })), 'conflict');
    assert.is(await codeOf(storage.put('k', Readable.from([Buffer.from('new')]), { ifAbsent: true })), 'conflict');
    assert.is(await codeOf(storage.put('k', Buffer.alloc(6 * MiB, 'n'), { ifAbsent: true })), 'conflict');
    const refused = await storage.put('k', 'new', { ifAbsent: true }).catch((e: Error) => e);
    assert.match((refused as Error).message, /^k already exists in /);
    assert.is(await text(storage, 'k'), 'old');
    assert.equal(await keys(storage), ['k']);
  });

  conditional('ifAbsent on a new key stores it', async ({ storage }) => {
    await storage.put('fresh', 'v1', { ifAbsent: true });
    await storage.put('deep/er/fresh', Readable.from(['v', '2']), { ifAbsent: true });
    assert.is(await text(storage, 'fresh'), 'v1');
    assert.is(await text(storage, 'deep/er/fresh'), 'v2');
  });

  conditional('of two concurrent ifAbsent puts of one key, exactly one wins, small or multipart', async ({ storage }) => {
    const race = async (key: string, bodies: Buffer[]) => {
      const results = await Promise.allSettled(bodies.map((body) => storage.put(key, body, { ifAbsent: true })));
      const won = results.findIndex((r) => r.status === 'fulfilled');
      const lost = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
      assert.is(lost.length, 1, `${key}: exactly one put fails`);
      assert.is((lost[0].reason as NeonError).code, 'conflict', String(lost[0].reason));
      assert.ok((await readObject(storage, key)).equals(bodies[won]), `${key} holds the winner's body`);
    };
    const names = Array.from({ length: 10 }, (_, i) => `race/${i}`);
    for (const key of names) await race(key, [Buffer.alloc(10_000, 'A'), Buffer.alloc(10_000, 'B')]);
    await race('race/big', [Buffer.alloc(6 * MiB, 'A'), Buffer.alloc(6 * MiB, 'B')]);
    assert.equal(await keys(storage), [...names, 'race/big'].sort());
  });

  const validation = storageSuite('key validation');

  validation('bad keys are refused by every operation and nothing is stored', async ({ storage }) => {
    const bad = ['../x', '../../x', '/abs', 'a//b', 'a/./b', '', 'a/', './a', 'a/..', 'a\0b'];
    for (const key of bad) {
      assert.is(await codeOf(storage.put(key, 'evil')), 'bad_key', `put ${JSON.stringify(key)}`);
      assert.is(await codeOf(storage.put(key, 'evil', { ifAbsent: true })), 'bad_key');
      assert.is(await codeOf(storage.get(key)), 'bad_key', `get ${JSON.stringify(key)}`);
      assert.is(await codeOf(storage.head(key)), 'bad_key', `head ${JSON.stringify(key)}`);
      assert.is(await codeOf(storage.delete(key)), 'bad_key', `delete ${JSON.stringify(key)}`);
    }
    assert.equal(await keys(storage), []);
  });

  const big = storageSuite('big objects');

  big('a 64 MiB stream round-trips byte-identical without the process holding it in memory', async ({ storage }) => {
    const size = 64 * MiB + 4321;
    const sent = createHash('sha256');
    async function* generate() {
      for (let at = 0; at < size; at += 256 * 1024) {
        const chunk = randomBytes(Math.min(256 * 1024, size - at));
        sent.update(chunk);
        yield chunk;
      }
    }
    const before = process.memoryUsage().rss;
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 10);
    try {
      await storage.put('big/stream', Readable.from(generate()));
      assert.is((await storage.head('big/stream'))?.size, size);
      const got = createHash('sha256');
      let received = 0;
      for await (const chunk of await storage.get('big/stream')) {
        got.update(chunk as Buffer);
        received += (chunk as Buffer).length;
      }
      assert.is(received, size);
      assert.is(got.digest('hex'), sent.digest('hex'), 'the content is byte-identical');
    } finally {
      clearInterval(sampler);
    }
    const growth = (peak - before) / MiB;
    assert.ok(growth < 48, `RSS grew by ${growth.toFixed(1)} MiB for a ${Math.round(size / MiB)} MiB object`);
  });

  suites[0].before(() => backend.setup());
  suites[suites.length - 1].after(() => backend.teardown());
  for (const test of suites) test.run();
}
