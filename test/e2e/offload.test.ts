import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHooks } from '../../core/hooks.js';
import { applyPlugins } from '../../core/plugin.js';
import { createLogger } from '../../core/log.js';
import { Repository } from '../../daemon/repository.js';
import { readObject } from '../../core/storage.js';
import { packWal, parseLsn, parseSegmentName, unpackWal, walObjectKey } from '../../core/wal.js';
import { WalStore } from '../../wal/store.js';
import { FileStorage } from '../../plugins/storage-file/index.js';
import safekeeperOffload from '../../plugins/safekeeper-offload/index.js';
import { cleanup, neon, neonJson, processesOf, tmpDir } from '../../testkit/env.js';

const SEGMENT = 16 * 1024 * 1024;
const SEGMENT_NAME = /^[0-9A-F]{24}$/;

async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value as T;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** A running repository whose storage_dest is a folder, with a client on its main compute. */
interface Repo {
  dir: string;
  storage: string;
  port: number;
  token: string;
  client: pg.Client;
}

async function connect(dir: string): Promise<pg.Client> {
  const main = await neonJson(['pg', 'show', '-n', 'main'], { cwd: dir });
  const client = new pg.Client({ connectionString: main.connection_string });
  await client.connect();
  return client;
}

async function start(dir: string, storage: string): Promise<Repo> {
  const out = await neonJson(['start'], { cwd: dir });
  await waitFor('the safekeeper to connect', async () => (await neonJson(['safekeeper', 'list'], { cwd: dir }))[0]?.connected);
  const token = fs.readFileSync(path.join(dir, '.neon', 'token'), 'utf8').trim();
  return { dir, storage, port: out.status.daemon.port, token, client: await connect(dir) };
}

async function api(repo: Repo, route: string): Promise<{ status: number; body: any; raw: Buffer }> {
  const response = await fetch(`http://127.0.0.1:${repo.port}${route}`, { headers: { authorization: `Bearer ${repo.token}` } });
  const raw = Buffer.from(await response.arrayBuffer());
  const json = response.headers.get('content-type')?.includes('json');
  return { status: response.status, body: json ? JSON.parse(raw.toString()) : undefined, raw };
}

const offloadStatus = async (repo: Repo) => (await api(repo, '/status')).body.offload;
const skWal = (repo: Repo) => path.join(repo.dir, '.neon', 'safekeepers', 'sk1', 'wal', 'main');
const objectPath = (repo: Repo, key: string) => path.join(repo.storage, ...key.split('/'));
const localSegments = (repo: Repo) =>
  fs
    .readdirSync(skWal(repo))
    .filter((name) => SEGMENT_NAME.test(name))
    .sort();

/** Wait until every finished local segment is in storage and nothing is pending. */
async function caughtUp(repo: Repo, timeoutMs = 30_000): Promise<string[]> {
  return waitFor(
    'offload to catch up',
    async () => {
      const status = await offloadStatus(repo);
      const local = localSegments(repo);
      const stored = local.every((name) => fs.existsSync(objectPath(repo, walObjectKey('main', name))));
      return status.pending === 0 && status.error === null && stored && local.length > 0 ? local : undefined;
    },
    timeoutMs,
  );
}

async function timedCommit(client: pg.Client, sql: string): Promise<number> {
  const started = Date.now();
  await client.query(sql);
  return Date.now() - started;
}

const e2e = suite('safekeeper-offload against a running repository');
let dir = '';
let repo: Repo;

e2e.before(async () => {
  dir = tmpDir();
  const storage = path.join(dir, 'storage');
  const init = await neon(['init', `--storage_dest=${storage}`], { cwd: dir });
  assert.is(init.code, 0, init.stderr);
  repo = await start(dir, storage);
});
e2e.after(async () => {
  await repo?.client.end().catch(() => undefined);
  await cleanup(dir);
});

e2e('finished segments are stored gzip-compressed under wal/main/ and unpack to the safekeeper file, byte for byte', async () => {
  await repo.client.query('create table t (x int, y text)');
  await repo.client.query("insert into t select g, repeat('x', 500) from generate_series(1, 60000) g");
  await repo.client.query('select pg_switch_wal()');
  // Background WAL (checkpoints, autovacuum) may finish another segment meanwhile: compare once offload has
  // caught up with the safekeeper's newest finished segment, and nothing newer was finished since.
  const { segments, status } = await waitFor('offload to settle on the newest finished segment', async () => {
    const segments = await caughtUp(repo);
    const status = await offloadStatus(repo);
    return status.last_segment === segments.at(-1) && localSegments(repo).at(-1) === segments.at(-1) ? { segments, status } : undefined;
  });
  assert.ok(segments.length >= 2, `several segments were finished (${segments})`);
  for (const name of segments) {
    const key = walObjectKey('main', name);
    const packed = fs.readFileSync(objectPath(repo, key));
    assert.equal([...packed.subarray(0, 2)], [0x1f, 0x8b], `${key} is gzip`);
    assert.ok(packed.length < SEGMENT, `${key} is compressed (${packed.length} bytes)`);
    assert.ok((await unpackWal(key, packed)).equals(fs.readFileSync(path.join(skWal(repo), name))), `${key} holds the local segment`);
  }
  assert.is(status.last_segment, segments.at(-1));
  assert.is(status.storage, `file://${repo.storage}`);
  const state = JSON.parse(fs.readFileSync(path.join(dir, '.neon', 'offload', 'state.json'), 'utf8'));
  assert.ok(state.branches.main.segments.includes(segments.at(-1)), 'the upload is recorded in offload/state.json');
});

e2e('the growing segment is stored as .partial.gz while WAL flows, matching the local file up to the flush LSN', async () => {
  let stop = false;
  const load = (async () => {
    for (let i = 0; !stop; i++) await repo.client.query("insert into t select g, repeat('p', 200) from generate_series(1, 300) g");
  })();
  try {
    await waitFor(
      'a partial object',
      () => {
        const name = fs.readdirSync(objectPath(repo, 'wal/main')).find((f) => f.endsWith('.partial.gz'));
        return name && `wal/main/${name}`;
      },
      5000,
    );
  } finally {
    stop = true;
    await load;
  }
  // Once WAL stops, the partial in storage catches up with the safekeeper's flush position, and stays there.
  const { segment, flush_lsn } = await waitFor('the partial to reach the flush LSN', async () => {
    const [sk] = await neonJson(['safekeeper', 'list'], { cwd: dir });
    const { last_partial } = await offloadStatus(repo);
    return last_partial && last_partial.flush_lsn === sk.flush_lsn ? last_partial : undefined;
  });
  const key = `wal/main/${segment}.partial.gz`;
  const stored = await unpackWal(key, fs.readFileSync(objectPath(repo, key)));
  const local = fs.readFileSync(path.join(skWal(repo), `${segment}.partial`));
  const upTo = Number(parseLsn(flush_lsn) - parseSegmentName(segment, SEGMENT)!.segno * BigInt(SEGMENT));
  assert.ok(upTo > 0, 'the partial holds WAL');
  assert.ok(stored.subarray(0, upTo).equals(local.subarray(0, upTo)), `${key} matches the local .partial up to ${flush_lsn}`);

  // When that segment is finished, its .gz replaces the partial object.
  await repo.client.query('select pg_switch_wal()');
  await caughtUp(repo);
  await waitFor('the partial object to go', () => !fs.existsSync(objectPath(repo, key)));
  assert.ok(fs.existsSync(objectPath(repo, walObjectKey('main', segment))));
  const finished = localSegments(repo);
  const stale = fs.readdirSync(objectPath(repo, 'wal/main')).filter((f) => f.endsWith('.partial.gz') && finished.includes(f.slice(0, 24)));
  assert.equal(stale, [], 'no partial object outlives its finished segment');
});

e2e('a flipped byte in a stored segment is rejected as corrupt, by unpackWal and by GET /wal when the local copy is gone', async () => {
  const [name] = localSegments(repo);
  const key = walObjectKey('main', name);
  const file = objectPath(repo, key);
  const good = fs.readFileSync(file);
  const bad = Buffer.from(good);
  bad[bad.length >> 1] ^= 0x40;
  try {
    await unpackWal(key, bad);
    assert.unreachable('a damaged object must not unpack');
  } catch (error) {
    assert.is((error as { code?: string }).code, 'corrupt');
    assert.match((error as Error).message, key);
  }
  const local = path.join(skWal(repo), name);
  const aside = path.join(dir, `${name}.aside`);
  fs.renameSync(local, aside);
  try {
    fs.writeFileSync(file, bad);
    const rejected = await api(repo, `/wal/main/${name}`);
    assert.is(rejected.status, 500);
    assert.is(rejected.body.code, 'corrupt');
    fs.writeFileSync(file, good);
    const served = await api(repo, `/wal/main/${name}`);
    assert.is(served.status, 200);
    assert.ok(served.raw.equals(fs.readFileSync(aside)), 'the daemon serves the segment from storage');
  } finally {
    fs.writeFileSync(file, good);
    fs.renameSync(aside, local);
  }
});

e2e('a failing storage delays offload but never commits; it catches up once repaired', async () => {
  const wal = path.join(repo.storage, 'wal');
  const away = path.join(repo.storage, 'wal.away');
  // A file where the folder should be: mkdir fails even for root, who ignores permission bits.
  fs.renameSync(wal, away);
  fs.writeFileSync(wal, 'not a folder');
  const before = localSegments(repo);
  try {
    // A commit held up by offload would wait until the storage is repaired (the finally below): any finite bound
    // tells the two apart, and a generous one keeps a loaded machine from failing it.
    for (let i = 0; i < 12; i++) {
      const ms = await timedCommit(repo.client, "insert into t select g, repeat('f', 500) from generate_series(1, 5000) g");
      assert.ok(ms < 30_000, `commit ${i} took ${ms} ms`);
    }
    assert.ok((await timedCommit(repo.client, 'select pg_switch_wal()')) < 30_000);
    const failing = await waitFor('offload to report the failure', async () => {
      const status = await offloadStatus(repo);
      return status.error && status.pending > 0 ? status : undefined;
    });
    assert.match(failing.error, /ENOTDIR|EEXIST|not a directory|exists/i);
    const human = await neon(['status'], { cwd: dir });
    assert.match(human.stdout, /offload\s+last \w+, \d+ pending, error: /);
    assert.ok(localSegments(repo).length > before.length, 'segments were finished meanwhile');
    assert.ok((await timedCommit(repo.client, "insert into t values (-1, 'still commits')")) < 30_000);
  } finally {
    fs.rmSync(wal, { force: true });
    fs.renameSync(away, wal);
  }
  const after = await caughtUp(repo, 40_000);
  for (const name of after.filter((n) => !before.includes(n))) {
    const key = walObjectKey('main', name);
    assert.ok((await unpackWal(key, fs.readFileSync(objectPath(repo, key)))).equals(fs.readFileSync(path.join(skWal(repo), name))));
  }
});

e2e('a restart uploads what was missed while stopped and re-uploads nothing', async () => {
  // Only segments already offloaded: one finished just now may still be on its way (its object not there yet).
  const stored = (await caughtUp(repo)).map((name) => objectPath(repo, walObjectKey('main', name)));
  const mtimes = stored.map((file) => fs.statSync(file).mtimeMs);
  // A segment finished while the storage fails, then the daemon stops: it is offloaded by the next start.
  const wal = path.join(repo.storage, 'wal');
  fs.renameSync(wal, `${wal}.away`);
  fs.writeFileSync(wal, 'not a folder');
  let missed = '';
  try {
    await repo.client.query("insert into t select g, repeat('r', 500) from generate_series(1, 3000) g");
    await repo.client.query('select pg_switch_wal()');
    missed = await waitFor('a new finished segment', () => localSegments(repo).find((n) => !stored.some((f) => f.endsWith(`/${n}.gz`))));
    await waitFor('the upload to fail', async () => (await offloadStatus(repo)).error);
    await repo.client.end();
    const started = Date.now();
    const stop = await neon(['stop'], { cwd: dir });
    assert.is(stop.code, 0, stop.stderr);
    // Held up, it would wait for a storage that stays broken until the finally below.
    assert.ok(Date.now() - started < 60_000, 'a failing upload does not hold up the stop');
    assert.equal(processesOf(path.join(dir, '.neon')), []);
  } finally {
    fs.rmSync(wal, { force: true });
    fs.renameSync(`${wal}.away`, wal);
  }
  const log = fs.readFileSync(path.join(dir, '.neon', 'logs', 'daemon.log'), 'utf8');
  assert.match(log, /upload\(s\) pending; they are retried at the next start/);
  assert.not.ok(fs.existsSync(objectPath(repo, walObjectKey('main', missed))));

  repo = await start(dir, repo.storage);
  await waitFor('the missed segment to be offloaded', () => fs.existsSync(objectPath(repo, walObjectKey('main', missed))));
  await sleep(3000);
  assert.equal(
    stored.map((file) => fs.statSync(file).mtimeMs),
    mtimes,
    'objects uploaded before the restart are not uploaded again',
  );
  const status = await offloadStatus(repo);
  assert.is(status.uploaded, 1, 'only the missed segment was uploaded by the new daemon');
});

const unit = suite('safekeeper-offload in process');
const unitDirs: string[] = [];
unit.after(() => {
  for (const d of unitDirs) fs.rmSync(d, { recursive: true, force: true });
});

/** Run the plugin's start hook through a real hook table over a fake repository. */
async function startPlugin(plugin: ReturnType<typeof safekeeperOffload>, repoDir: string, storage?: FileStorage) {
  const hooks = createHooks();
  applyPlugins(hooks, [plugin]);
  const lines: string[] = [];
  const log = createLogger('test', (line) => void lines.push(line));
  const status = new Map<string, () => unknown>();
  const repo = new Repository(repoDir);
  await hooks.start.promise({ repo, log, storage, wal: new WalStore(() => [], storage), status, storageDest: storage?.url });
  return { hooks, lines, status, repo, log };
}

unit('unknown or bad options are refused, naming the plugin', () => {
  assert.throws(() => safekeeperOffload({ bogus: 1 } as any), /safekeeper-offload.*unknown option "bogus"/);
  assert.throws(() => safekeeperOffload({ partialIntervalMs: 0 }), /safekeeper-offload.*partialIntervalMs/);
  assert.throws(() => safekeeperOffload({ retryMaxMs: 'soon' } as any), /safekeeper-offload.*retryMaxMs/);
  assert.throws(() => safekeeperOffload({ removeLocal: 'yes' } as any), /safekeeper-offload.*removeLocal/);
  assert.is(safekeeperOffload({ partialIntervalMs: 500, retryMaxMs: 2000, removeLocal: true }).name, 'safekeeper-offload');
});

unit('without a storage it does nothing, and says so once', async () => {
  const repoDir = tmpDir();
  unitDirs.push(repoDir);
  const { hooks, lines, status, repo, log } = await startPlugin(safekeeperOffload(), repoDir);
  await hooks.walSegmentCompleted.promise({
    branch: 'main',
    timeline: 1,
    segment: '000000010000000000000001',
    path: '/x',
    safekeeper: 'sk1',
  });
  await hooks.stop.promise({ repo, log, reason: 'request' });
  assert.is(lines.filter((l) => /no storage_dest/.test(l)).length, 1, lines.join(''));
  assert.is(status.size, 0, 'no status section');
  assert.not.ok(fs.existsSync(path.join(repoDir, 'offload')));
});

unit('removeLocal deletes uploaded local segments wholly before the newest base image, keeping the newest', async () => {
  const root = tmpDir();
  unitDirs.push(root);
  const repoDir = path.join(root, 'repo');
  const names = [1, 2, 3, 4].map((n) => `00000001000000000000000${n}`);
  for (const sk of ['sk1', 'sk2']) {
    const folder = path.join(repoDir, 'safekeepers', sk, 'wal', 'main');
    fs.mkdirSync(folder, { recursive: true });
    for (const name of names) fs.truncateSync((fs.writeFileSync(path.join(folder, name), name), path.join(folder, name)), SEGMENT);
  }
  const storage = new FileStorage(path.join(root, 'storage'), `file://${root}/storage`, false);
  const plugin = safekeeperOffload({ removeLocal: true });
  const { hooks, status, repo, log } = await startPlugin(plugin, repoDir, storage);
  const read = () => status.get('offload')!() as { pending: number; uploaded: number; last_segment: string };
  await waitFor('the scan to be uploaded', () => read().pending === 0 && read().uploaded === 4);
  assert.is(read().last_segment, names[3]);
  const left = () => ['sk1', 'sk2'].map((sk) => fs.readdirSync(path.join(repoDir, 'safekeepers', sk, 'wal', 'main')).sort());
  assert.equal(left(), [names, names], 'nothing is removed without a base image');

  // Segments 1 and 2 end at or before 0/3000000; 3 does not; 4 is the newest and always stays.
  await hooks.baseImageStored.promise({ branch: 'main', lsn: '0/3000000', manifestKey: 'base/x' });
  await waitFor('old segments to go', () => left()[1].length === 2);
  assert.equal(left(), [names.slice(2), names.slice(2)]);
  await hooks.baseImageStored.promise({ branch: 'main', lsn: '0/9000000', manifestKey: 'base/y' });
  await waitFor('more to go', () => left()[1].length === 1);
  assert.equal(left(), [[names[3]], [names[3]]]);
  await hooks.stop.promise({ repo, log, reason: 'request' });

  // A second start finds everything recorded: nothing is uploaded again.
  const again = await startPlugin(safekeeperOffload(), repoDir, storage);
  await sleep(300);
  assert.equal((again.status.get('offload')!() as { uploaded: number; pending: number }).uploaded, 0);
  await again.hooks.stop.promise({ repo, log, reason: 'request' });
});

unit('an object already in storage: identical WAL counts as uploaded, different WAL is refused, unreadable is replaced', async () => {
  const root = tmpDir();
  unitDirs.push(root);
  const repoDir = path.join(root, 'repo');
  const folder = path.join(repoDir, 'safekeepers', 'sk1', 'wal', 'main');
  fs.mkdirSync(folder, { recursive: true });
  const names = [1, 2, 3].map((n) => `00000001000000000000000${n}`);
  const bytes = (text: string) => Buffer.concat([Buffer.from(text), Buffer.alloc(SEGMENT - text.length)]);
  for (const name of names) fs.writeFileSync(path.join(folder, name), bytes(name));
  const storage = new FileStorage(path.join(root, 'storage'), `file://${root}/storage`, false);
  const [same, other, broken] = names.map((name) => walObjectKey('main', name));
  await storage.put(same, await packWal(bytes(names[0])));
  await storage.put(other, await packWal(bytes('WAL of another cluster')));
  await storage.put(broken, Buffer.from('not gzip'));
  const sameMtime = fs.statSync(path.join(root, 'storage', same)).mtimeMs;

  const { hooks, status, repo, log } = await startPlugin(safekeeperOffload({ retryMaxMs: 300 }), repoDir, storage);
  const read = () => status.get('offload')!() as { pending: number; error: string | null; last_segment: string | null };
  const refused = await waitFor('the conflict to be reported', () => (read().error ? read() : undefined));
  assert.match(refused.error!, /holds different WAL/);
  assert.is(refused.pending, 2, 'the conflicting segment and the one after it wait');
  assert.is(refused.last_segment, names[0], 'the identical object counts as uploaded');
  assert.is(fs.statSync(path.join(root, 'storage', same)).mtimeMs, sameMtime);

  await storage.delete(other); // the operator settles the conflict
  await waitFor('the rest to be uploaded', () => read().pending === 0 && read().error === null);
  for (const [i, key] of [other, broken].entries()) {
    assert.ok((await unpackWal(key, await readObject(storage, key))).equals(bytes(names[i + 1])), key);
  }
  await hooks.stop.promise({ repo, log, reason: 'request' });
});

e2e.run();
unit.run();
