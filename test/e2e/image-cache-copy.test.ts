// The plain copy of an image (written on its own thread while the image is taken, cache-writer.ts) is cloned into
// every new compute: it must be the image byte for byte, and a daemon killed while writing it must leave nothing
// half-written that a compute could ever be made from.
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ChunkStore } from '../../chunkstore/index.js';
import { restoreImage } from '../../pageserver/restore.js';
import { alive, cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { cachedCopyOf, manifestsOf, treeOf } from '../../testkit/images.js';
import { query } from '../../testkit/pg.js';
import { waitFor } from '../../testkit/wait.js';

const QUIET = JSON.stringify({ pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 } });

const test = suite('the plain copy of an image');
let dir = '';
const cwd = () => ({ cwd: dir });
const neonDir = () => path.join(dir, '.neon');
const cacheDir = () => path.join(neonDir(), 'pageserver', 'cache');

test.before(async () => {
  dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'neon.config.json'), QUIET);
  const url = (await neonJson(['start'], cwd())).connection_string;
  await waitFor('the first base image', async () => (await neonJson(['image', 'list'], cwd())).length > 0, 120_000);
  // ~80 MB: files of several MiB (more than one hand-over to the writer thread each) and many small ones.
  await query(
    url,
    `create table big (id int primary key, body text); insert into big select g, repeat(md5(g::text), 4) from generate_series(1, 400000) g`,
  );
});
test.after(() => cleanup(dir));

/** After `neon stop`: the newest image's plain copy compared with a restore of the image from its chunks. */
async function newestCopyIsTheImage(what: string): Promise<void> {
  const newest = (await manifestsOf(neonDir())).at(-1)!;
  const store = await ChunkStore.open(path.join(neonDir(), 'pageserver', 'chunks'));
  try {
    const target = path.join(dir, `from-chunks-${Date.now()}`);
    await restoreImage(store, newest, target);
    const expected = treeOf(target);
    const copy = treeOf(cachedCopyOf(neonDir(), newest));
    assert.equal([...copy.keys()].sort(), [...expected.keys()].sort(), `${what}: the same files`);
    for (const [file, description] of expected) assert.ok(copy.get(file) === description, `${what}: ${file} is the same`);
    fs.rmSync(target, { recursive: true });
  } finally {
    await store.close();
  }
}

test('an image’s plain copy holds exactly the image’s files', async () => {
  await neonJson(['image', 'create'], cwd());
  await neonJson(['stop'], cwd());
  await newestCopyIsTheImage('after an image');
});

test('SIGKILL while the copy is written: nothing half-written stays, the next image has a whole copy', async () => {
  const url = (await neonJson(['start'], cwd())).connection_string;
  // Every row rewritten: more WAL than half the database, so the next image is a full one (written by the thread).
  await query(url, `update big set body = body || 'x'`);
  const pid = (await neonJson(['status'], cwd())).daemon.pid as number;
  const copies = () => fs.readdirSync(cacheDir()).filter((name) => !name.startsWith('.'));
  const before = copies();
  const image = neon(['image', 'create'], cwd());
  const incoming = () => copies().find((name) => name.startsWith('incoming-'));
  // Kill once the writer thread has written part of the copy.
  await waitFor(
    'the copy to be written',
    () => {
      const folder = incoming();
      return (folder && fs.readdirSync(path.join(cacheDir(), folder), { recursive: true }).length > 50) || undefined;
    },
    120_000,
  );
  process.kill(pid, 'SIGKILL');
  assert.is.not((await image).code, 0, 'the kill cut the image short');
  await waitFor('the daemon to die', () => !alive(pid) || undefined, 60_000);

  await neonJson(['start'], cwd());
  assert.equal(copies().sort(), before.sort(), 'the half-written copy is gone, the others stay');
  await neonJson(['image', 'create'], cwd());
  const verify = await neonJson(['verify'], cwd());
  assert.is(verify.ok, true, JSON.stringify(verify).slice(0, 300));
  await neonJson(['stop'], cwd());
  await newestCopyIsTheImage('after the restart');
});

test.run();
