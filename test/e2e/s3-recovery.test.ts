import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { Storage } from '../../core/storage.js';
import storageS3 from '../../plugins/storage-s3/index.js';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { startS3, type S3Fixture } from '../../testkit/s3.js';
import { waitFor } from '../../testkit/wait.js';

const lsnValue = (text: string) => {
  const [hi, lo] = text.split('/');
  return (BigInt('0x' + hi) << 32n) + BigInt('0x' + lo);
};
/** A folder with a config that gives the main compute a port of its own (other tests run beside this one). */
function projectIn(parent: string, name: string): string {
  const project = path.join(parent, name);
  fs.mkdirSync(project);
  const port = 20000 + Math.floor(Math.random() * 20000);
  fs.writeFileSync(path.join(project, 'neon.config.json'), JSON.stringify({ postgres: { port } }));
  return project;
}
const passwordOf = (url: string) => decodeURIComponent(new URL(url).password);

async function keys(storage: Storage, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for await (const object of storage.list(prefix)) out.push(object.key);
  return out;
}

/** Every file under `dir` whose bytes contain `needle` (what `grep -r` would find). */
function grepR(dir: string, needle: string): string[] {
  const found: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const file = path.join(entry.parentPath ?? (entry as any).path, entry.name);
    if (entry.isFile() && fs.readFileSync(file).includes(needle)) found.push(file);
  }
  return found;
}

const s3suite = suite('S3 storage_dest end to end');
let s3: S3Fixture;
let dir = '';
s3suite.before(async () => {
  s3 = await startS3();
  dir = tmpDir();
});
s3suite.after(async () => {
  await cleanup(dir);
  await s3?.close();
});

s3suite('WAL, images and history go to the bucket; after SIGKILL and rm -rf .neon every offloaded row comes back', async () => {
  const env = s3.env;
  const url = `s3://${s3.bucket}/team/db1`;
  const project = projectIn(dir, 'project');
  const init = await neon(['init', `--storage_dest=${url}`], { cwd: project, env });
  assert.is(init.code, 0, init.stderr);
  // Nothing on stderr: no warning of the AWS SDK's (it warns Node 20 users about its future releases) reaches users.
  assert.is(init.stderr, '', 'init prints nothing on stderr');
  const first = await neonJson(['start'], { cwd: project, env });
  const conn = first.connection_string as string;
  await query(conn, 'create table kept (id int primary key, body text)');
  for (let i = 0; i < 20; i++) {
    await query(conn, `insert into kept select g, repeat('x', 200) from generate_series(${i * 1000 + 1}, ${(i + 1) * 1000}) g`);
  }
  const [{ lsn }] = await query(conn, 'select pg_current_wal_flush_lsn()::text as lsn');
  await waitFor('the offload of the WAL up to the last commit', async () => {
    const status = await neonJson(['status'], { cwd: project, env });
    const partial = status.offload?.last_partial?.flush_lsn;
    return partial && lsnValue(partial) >= lsnValue(lsn);
  });

  const bucket = (await storageS3(s3.options).resolveStorage!.handler({ scheme: 's3', url, raw: url })) as Storage;
  const stored = await keys(bucket);
  assert.ok(stored.some((k) => /^wal\/main\/[0-9A-F]{24}(\.partial)?\.gz$/.test(k)), `WAL in the bucket: ${stored.join(' ')}`);
  assert.ok(stored.some((k) => /^chunks\/[0-9a-f]{64}\.pack$/.test(k)), 'chunk packs in the bucket');
  assert.ok(stored.some((k) => k.startsWith('images/main/')), 'image manifests in the bucket');
  assert.ok(stored.includes('history.json') && stored.includes('repository.json'), 'history in the bucket');
  assert.ok(stored.some((k) => /^claims\/\d+\.json$/.test(k)), 'the writer claim in the bucket');
  assert.equal(grepR(s3.directory, passwordOf(conn)), [], 'the password is nowhere in the bucket');

  // The machine is lost: every process killed, the repository gone. Only the bucket remains.
  await cleanup(path.join(project, '.neon'));
  assert.not.ok(fs.existsSync(path.join(project, '.neon')));
  const back = await neonJson(['start', `--storage_dest=${url}`], { cwd: project, env });
  assert.is(back.restored, true);
  assert.is(back.restored_from, url);
  assert.ok(lsnValue(back.restored_lsn) >= lsnValue(lsn), `restored up to ${back.restored_lsn}, committed up to ${lsn}`);
  const [{ n }] = await query<{ n: number }>(back.connection_string, 'select count(*)::int as n from kept');
  assert.is(n, 20_000);
  assert.is.not(passwordOf(back.connection_string), passwordOf(conn), 'the storage kept no password: a new one was set');
  await query(back.connection_string, 'insert into kept values (-1, null)');
  assert.equal(grepR(s3.directory, passwordOf(back.connection_string)), [], 'nor the new one');
  assert.is((await neon(['stop'], { cwd: project, env })).code, 0);
});

s3suite('wrong credentials, a missing bucket, an unreachable endpoint: one clear line each, no .neon made', async () => {
  const cases: [string, Record<string, string>, string, RegExp][] = [
    ['wrong keys', { ...s3.env, AWS_ACCESS_KEY_ID: 'NOT-A-KEY' }, `s3://${s3.bucket}/x`, /access key|credentials|AWS_ACCESS_KEY_ID/i],
    ['missing bucket', s3.env, 's3://no-such-bucket/x', /no-such-bucket/],
    ['unreachable', { ...s3.env, AWS_ENDPOINT: 'http://127.0.0.1:9' }, `s3://${s3.bucket}/x`, /127\.0\.0\.1:9|reach|connect/i],
  ];
  for (const [what, env, url, pattern] of cases) {
    const project = path.join(dir, what.replace(/ /g, '-'));
    fs.mkdirSync(project);
    const result = await neon(['start', `--storage_dest=${url}`], { cwd: project, env });
    assert.is.not(result.code, 0, what);
    assert.match(result.stderr, pattern, `${what}: ${result.stderr}`);
    assert.is(result.stderr.trim().split('\n').length, 1, `${what}: one line, not ${result.stderr}`);
    assert.not.ok(fs.existsSync(path.join(project, '.neon')), `${what}: nothing local was made`);
  }
});

const folder = suite('restore from a folder storage_dest says so');
let fdir = '';
folder.after(() => cleanup(fdir));

folder('neon start prints that it restored, from where and up to which LSN; the folder holds no password', async () => {
  fdir = tmpDir();
  const store = path.join(fdir, 'store');
  const project = projectIn(fdir, 'project');
  await neonJson(['init', `--storage_dest=${store}`], { cwd: project });
  const conn = (await neonJson(['start'], { cwd: project })).connection_string as string;
  await query(conn, 'create table t as select 1 as x');
  const [{ lsn }] = await query(conn, 'select pg_current_wal_flush_lsn()::text as lsn');
  await waitFor('the offload of the WAL up to the last commit', async () => {
    const partial = (await neonJson(['status'], { cwd: project })).offload?.last_partial?.flush_lsn;
    return partial && lsnValue(partial) >= lsnValue(lsn);
  });
  assert.equal(grepR(store, passwordOf(conn)), [], 'grep -r finds no password in the storage folder');
  await neon(['stop'], { cwd: project });
  await cleanup(path.join(project, '.neon'));
  const back = await neon(['start', `--storage_dest=${store}`], { cwd: project });
  assert.is(back.code, 0, back.stderr);
  assert.match(back.stdout, new RegExp(`Restored .* from file://${store} up to LSN [0-9A-F]+/[0-9A-F]+`));
  assert.not.match(back.stdout, /Initialised/);
  assert.match(back.stdout, /password .* was reset/);
  assert.is((await neon(['stop'], { cwd: project })).code, 0);
});

s3suite.run();
folder.run();
