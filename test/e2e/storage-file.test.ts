import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { NeonError } from '../../core/errors.js';
import { isTempName } from '../../core/fs-atomic.js';
import { parseStorageUrl, readObject, type Storage } from '../../core/storage.js';
import storageFile from '../../plugins/storage-file/index.js';
import { cleanup, ROOT, tmpDir } from '../../testkit/env.js';
import { codeOf, keys } from '../../testkit/assert.js';

/** Open `root` through the plugin, as the storage hook does. */
async function open(root: string, plugin = storageFile()): Promise<Storage> {
  const storage = await plugin.resolveStorage!.handler({ scheme: 'file', url: pathToFileURL(root).href, raw: root });
  if (!storage) throw new Error('storage-file declined a file URL');
  return storage;
}


/** Every file under `dir` (relative paths, sorted), to see what really is on disk. */
function filesOnDisk(dir: string): string[] {
  const all = fs.readdirSync(dir, { recursive: true }) as string[];
  return all.filter((name) => fs.statSync(path.join(dir, name)).isFile()).sort();
}

const text = (storage: Storage, key: string) => readObject(storage, key).then((b) => b.toString());

/** A suite whose tests each get a fresh folder `dir` with a storage opened on `dir/store`. */
function storageSuite(name: string) {
  const test = suite(name, { dir: '', root: '', storage: undefined as unknown as Storage });
  test.before.each(async (ctx) => {
    ctx.dir = tmpDir('neon-storage-file-');
    ctx.root = path.join(ctx.dir, 'store');
    ctx.storage = await open(ctx.root);
  });
  test.after.each((ctx) => cleanup(ctx.dir));
  return test;
}

// The behaviour every backend shares is test/e2e/storage-contract.test.ts; here is what only a folder can show:
// the files on disk.
const contract = storageSuite('storage-file on disk');

contract('a put whose stream fails leaves the old object and no temp file', async ({ root, storage }) => {
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
  assert.equal(filesOnDisk(root), ['k']);
});

const validation = storageSuite('storage-file key validation');

validation('bad keys are refused by every operation and nothing lands outside the root', async ({ dir, root, storage }) => {
  const bad = ['../x', '../../x', '/abs', 'a//b', 'a/./b', '', 'a/', './a', 'a/..', 'a\0b'];
  for (const key of bad) {
    assert.is(await codeOf(storage.put(key, 'evil')), 'bad_key', `put ${JSON.stringify(key)}`);
    assert.is(await codeOf(storage.put(key, 'evil', { ifAbsent: true })), 'bad_key');
    assert.is(await codeOf(storage.get(key)), 'bad_key', `get ${JSON.stringify(key)}`);
    assert.is(await codeOf(storage.head(key)), 'bad_key', `head ${JSON.stringify(key)}`);
    assert.is(await codeOf(storage.delete(key)), 'bad_key', `delete ${JSON.stringify(key)}`);
  }
  assert.equal(fs.readdirSync(dir), ['store']);
  assert.equal(filesOnDisk(root), []);
  assert.is(fs.existsSync('/abs'), false);
});

const crash = storageSuite('storage-file crash between temp write and rename');

/** Kill `child` if it still runs and wait for it to be gone. */
async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = once(child, 'exit');
  child.kill('SIGKILL');
  await gone;
}

crash('a killed writer leaves the old object, no new one, and no visible temp file', async ({ dir, root, storage }) => {
  await storage.put('base/old', 'old content');
  const script = path.join(dir, 'writer.mjs');
  fs.writeFileSync(
    script,
    `
    import { Readable } from 'node:stream';
    import { pathToFileURL } from 'node:url';
    import storageFile from ${JSON.stringify(pathToFileURL(path.join(ROOT, 'plugins/storage-file/index.ts')).href)};
    const root = process.argv[2];
    const storage = await storageFile().resolveStorage.handler({ scheme: 'file', url: pathToFileURL(root).href, raw: root });
    // Writes 64 KiB, then never ends: the put stays between its temp write and its rename.
    const stalled = () => { let sent = false; return new Readable({ read() { if (!sent) { sent = true; this.push(Buffer.alloc(65536, 'n')); } } }); };
    setInterval(() => {}, 1000);
    await Promise.all([storage.put('base/old', stalled()), storage.put('base/new', stalled())]);
    process.exit(3);
  `,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', script, root], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk) => (stderr += chunk));
  const temps = () => fs.readdirSync(path.join(root, 'base')).filter(isTempName);
  try {
    const deadline = Date.now() + 20_000;
    const written = () => temps().filter((name) => fs.statSync(path.join(root, 'base', name)).size >= 65536);
    while (written().length < 2) {
      if (child.exitCode !== null) assert.unreachable(`the writer exited early (${child.exitCode}): ${stderr}`);
      if (Date.now() > deadline) assert.unreachable(`no temp files appeared: ${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    await stop(child);
    assert.is(child.signalCode, 'SIGKILL');
  } finally {
    await stop(child);
  }
  assert.is(temps().length, 2, 'the crash really left two temp files');
  assert.is(await text(storage, 'base/old'), 'old content');
  assert.is((await storage.head('base/old'))?.size, 'old content'.length);
  assert.is(await storage.head('base/new'), undefined);
  assert.is(await codeOf(storage.get('base/new')), 'not_found');
  assert.equal(await keys(storage), ['base/old']);
  assert.equal(await keys(storage, 'base/'), ['base/old']);
  await storage.put('base/new', 'after the crash', { ifAbsent: true });
  await storage.put('base/old', 'replaced');
  assert.is(await text(storage, 'base/new'), 'after the crash');
  assert.is(await text(storage, 'base/old'), 'replaced');
  assert.equal(await keys(storage), ['base/new', 'base/old']);
});

const urls = suite('parseStorageUrl');

const parse = (raw: string) => parseStorageUrl(raw, '/srv/work');
const urlOf = (raw: string) => parse(raw).url;
const refusal = (raw: string): string => {
  try {
    parse(raw);
  } catch (error) {
    assert.instance(error, NeonError);
    return `${(error as NeonError).code}: ${(error as Error).message}`;
  }
  assert.unreachable(`${JSON.stringify(raw)} was accepted`);
  throw new Error('unreachable');
};

urls('bare paths resolve against cwd into file URLs; file:/// URLs are kept', () => {
  assert.equal(parse('data/repo'), { scheme: 'file', url: 'file:///srv/work/data/repo', raw: 'data/repo' });
  assert.is(urlOf('../up'), 'file:///srv/up');
  assert.is(urlOf('/abs/path'), 'file:///abs/path');
  assert.equal(parse('file:///abs/path'), { scheme: 'file', url: 'file:///abs/path', raw: 'file:///abs/path' });
  assert.is(urlOf('FILE:///abs'), 'file:///abs');
  assert.is(fileURLToPath(urlOf('my dir')), '/srv/work/my dir');
  assert.is(parseStorageUrl('rel').url, pathToFileURL(path.resolve('rel')).href, 'cwd defaults to process.cwd()');
});

urls('trailing slashes are removed, and the root still maps to /', () => {
  assert.is(urlOf('/x/y/'), 'file:///x/y');
  assert.is(urlOf('file:///x/y//'), 'file:///x/y');
  assert.is(urlOf('s3://b/p/'), 's3://b/p');
  assert.is(urlOf('S3_PREFIX=s3://b/p/'), 's3://b/p');
  assert.is(urlOf('/'), 'file:///');
  assert.is(fileURLToPath(urlOf('file:///')), '/');
});

urls('WAL-G style FILE_PREFIX / S3_PREFIX map to URLs and keep what the user wrote', () => {
  assert.equal(parse('FILE_PREFIX=/x'), { scheme: 'file', url: 'file:///x', raw: 'FILE_PREFIX=/x' });
  assert.equal(parse('WALG_FILE_PREFIX=/x'), { scheme: 'file', url: 'file:///x', raw: 'WALG_FILE_PREFIX=/x' });
  assert.is(urlOf('WALG_FILE_PREFIX=rel'), 'file:///srv/work/rel');
  assert.equal(parse('S3_PREFIX=s3://b/p'), { scheme: 's3', url: 's3://b/p', raw: 'S3_PREFIX=s3://b/p' });
  assert.equal(parse('WALG_S3_PREFIX=s3://b/p'), { scheme: 's3', url: 's3://b/p', raw: 'WALG_S3_PREFIX=s3://b/p' });
  assert.equal(parse('WALG_S3_PREFIX=b/p'), { scheme: 's3', url: 's3://b/p', raw: 'WALG_S3_PREFIX=b/p' });
});

urls('empty input and file URLs with a host are refused', () => {
  assert.match(refusal(''), /^bad_storage_url: storage URL is empty/);
  assert.match(refusal('   '), /^bad_storage_url: /);
  assert.match(refusal('FILE_PREFIX='), /^bad_storage_url: /);
  assert.match(refusal('file://host/x'), /^bad_storage_url: "file:\/\/host\/x" names a host/);
});

const plugin = storageSuite('storage-file plugin');

plugin('an unknown option is refused, naming the plugin and the option', () => {
  assert.throws(() => storageFile({ bogus: 1 } as any), /\[plugin storage-file\] unknown option "bogus"/);
  assert.not.throws(() => storageFile({ fsync: false }));
});

plugin('a missing root is created; fsync: false still stores', async ({ dir }) => {
  const storage = await open(path.join(dir, 'a/b/c'), storageFile({ fsync: false }));
  assert.ok(fs.statSync(path.join(dir, 'a/b/c')).isDirectory());
  await storage.put('k', 'v');
  assert.is(await text(storage, 'k'), 'v');
});

plugin('a root it cannot write (under a regular file) is storage_unwritable', async ({ dir }) => {
  fs.writeFileSync(path.join(dir, 'file'), 'not a folder');
  const root = path.join(dir, 'file/store');
  const error = await open(root).catch((e: unknown) => e);
  assert.instance(error, NeonError);
  assert.is((error as NeonError).code, 'storage_unwritable');
  assert.match((error as Error).message, root);
  assert.is(fs.readFileSync(path.join(dir, 'file'), 'utf8'), 'not a folder');
});

contract.run();
validation.run();
crash.run();
urls.run();
plugin.run();
