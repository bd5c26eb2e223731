import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { signal, waitGone } from '../../lib/proc.js';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { startFaultProxy, type FaultProxy } from '../../testkit/fault-proxy.js';
import { query } from '../../testkit/pg.js';
import { startS3, type S3Fixture } from '../../testkit/s3.js';
import { waitFor } from '../../testkit/wait.js';

/*
 * Two people exchange snapshots through one bucket (s3rver on loopback, the real AWS SDK): A pushes, B clones and
 * reads A's rows; A changes 1 % of the pages and pushes again, B pulls only what changed. A's traffic goes through
 * a fault proxy, so that its requests can fail, hang, or be cut off by a SIGKILL of A's daemon.
 */

interface Ctx {
  s3: S3Fixture;
  proxy: FaultProxy;
  root: string;
  a: string;
  b: string;
  url: string;
  first: number;
  aEnv: Record<string, string>;
  bEnv: Record<string, string>;
}

const ctx = {} as Ctx;
const test = suite<Ctx>('snapshot push / pull / clone between two repositories through S3', ctx);

// 240k rows of ~100 bytes: about 3,500 pages (28 MB); 1 % of the pages are the first 2,400 rows.
const ROWS = 240_000;
const CHANGED = 'id <= 2400';
const CHECKSUM = "select count(*)::int as n, md5(string_agg(v, ',' order by id)) as sum from t";

async function mainUrl(dir: string, env: Record<string, string>): Promise<string> {
  return (await neonJson(['pg', 'show', '-n', 'main'], { cwd: dir, env })).connection_string;
}

async function remoteSnapshots(c: Ctx): Promise<string[]> {
  const shown = await neonJson(['storage', 'show', '-n', 'origin'], { cwd: c.b, env: c.bEnv });
  return shown.snapshots.map((s: { name: string }) => s.name).sort();
}

test.before(async (c) => {
  c.s3 = await startS3();
  c.proxy = await startFaultProxy({ target: c.s3.endpoint, seed: 11 });
  c.root = tmpDir('neon-pushpull-');
  c.a = path.join(c.root, 'alice');
  c.b = path.join(c.root, 'bob');
  c.url = `s3://${c.s3.bucket}/team`;
  c.aEnv = { ...c.s3.env, AWS_ENDPOINT: c.proxy.endpoint, NEON_PORT: '0' };
  c.bEnv = { ...c.s3.env, NEON_PORT: '0' };
  fs.mkdirSync(c.a, { mode: 0o755 });
  const started = await neonJson(['start'], { cwd: c.a, env: c.aEnv });
  await query(
    started.connection_string,
    `create table t as select g as id, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) as v from generate_series(1, ${ROWS}) g`,
  );
});

test.after(async (c) => {
  await cleanup(c.root);
  await c.proxy?.close();
  await c.s3?.close();
});

test("A pushes a snapshot; B clones the bucket and reads A's rows", async (c) => {
  await neonJson(['snapshot', 'create', 's1'], { cwd: c.a, env: c.aEnv });
  const pushed = await neonJson(['snapshot', 'push', 's1', '--to', c.url], { cwd: c.a, env: c.aEnv });
  assert.is(pushed.state, 'succeeded');
  assert.ok(pushed.result.bytes > 1_000_000, `the first push moves the data (${pushed.result.bytes} bytes)`);
  assert.is(pushed.progress.bytes, pushed.result.bytes, 'the operation reports the bytes it moved');
  c.first = pushed.result.bytes;
  const again = await neonJson(['snapshot', 'push', 's1', '--to', c.url], { cwd: c.a, env: c.aEnv });
  assert.ok(again.result.up_to_date, 'pushing it again moves nothing');

  const cloned = await neonJson(['clone', c.url, c.b], { cwd: c.root, env: c.bEnv });
  assert.is(cloned.cloned.snapshot, 's1');
  const [rows] = await query(cloned.connection_string, CHECKSUM);
  const [theirs] = await query(await mainUrl(c.a, c.aEnv), CHECKSUM);
  assert.equal(rows, theirs, "B's main compute holds A's rows");
  await query(cloned.connection_string, 'insert into t values (0, $$bob was here$$)');
});

test('A changes 1 % of the pages and pushes again; B pulls a small fraction of the first transfer', async (c) => {
  const aUrl = await mainUrl(c.a, c.aEnv);
  await query(aUrl, `update t set v = upper(v) where ${CHANGED}`);
  const [expected] = await query(aUrl, CHECKSUM);
  await neonJson(['snapshot', 'create', 's2'], { cwd: c.a, env: c.aEnv });
  const pushed = await neonJson(['snapshot', 'push', 's2', '--to', c.url], { cwd: c.a, env: c.aEnv });
  assert.ok(pushed.result.bytes < c.first / 5, `the second push moved ${pushed.result.bytes} bytes, the first ${c.first}`);

  const pulled = await neonJson(['snapshot', 'pull', 's2', '--from', 'origin'], { cwd: c.b, env: c.bEnv });
  assert.ok(pulled.result.bytes < c.first / 5, `the pull moved ${pulled.result.bytes} bytes, the first transfer ${c.first}`);
  const pg = await neonJson(['pg', 'create', '-n', 'at-s2', '-s', 'origin', '--at', 's2'], { cwd: c.b, env: c.bEnv });
  const [rows] = await query(pg.connection_string, CHECKSUM);
  assert.equal(rows, expected, "the pulled snapshot has A's changed rows");
  const [mine] = await query(await mainUrl(c.b, c.bEnv), 'select count(*)::int as n from t where id = 0');
  assert.is(mine.n, 1, "B's own main branch is untouched");
});

test('a push killed midway leaves only the older snapshots listed; the next push completes it', async (c) => {
  const aUrl = await mainUrl(c.a, c.aEnv);
  await query(aUrl, `update t set v = lower(v) where id > ${ROWS - 60_000}`);
  await neonJson(['snapshot', 'create', 's3'], { cwd: c.a, env: c.aEnv });
  c.proxy.configure(0.5, ['delay']); // slow enough to be caught in the act
  const status = await neonJson(['status'], { cwd: c.a, env: c.aEnv });
  const started = neon(['snapshot', 'push', 's3', '--to', c.url, '--json'], { cwd: c.a, env: c.aEnv });
  await waitFor('the push to move bytes', () => c.proxy.injected.delay > 2, 60_000);
  signal(status.daemon.pid, 'SIGKILL');
  await waitGone([status.daemon.pid], 10_000);
  const failed = await started;
  assert.is.not(failed.code, 0, 'the CLI reports that the push did not finish');
  c.proxy.configure(0);
  assert.equal(await remoteSnapshots(c), ['s1', 's2'], 'the half-pushed snapshot is not listed');

  await neonJson(['start'], { cwd: c.a, env: c.aEnv });
  const pushed = await neonJson(['snapshot', 'push', 's3', '--to', c.url], { cwd: c.a, env: c.aEnv });
  assert.is(pushed.state, 'succeeded');
  assert.equal(await remoteSnapshots(c), ['s1', 's2', 's3']);
});

test('with half of the requests failing (500, 503, resets, 2 s delays) push and pull complete with identical content', async (c) => {
  const aUrl = await mainUrl(c.a, c.aEnv);
  await query(aUrl, `update t set v = md5(v) where id % 50 = 0`);
  const [expected] = await query(aUrl, CHECKSUM);
  await neonJson(['snapshot', 'create', 's4'], { cwd: c.a, env: c.aEnv });
  c.proxy.configure(0.5, ['error500', 'slowdown503', 'reset', 'delay']);
  const before = Object.values(c.proxy.injected).reduce((x, y) => x + y, 0);
  await neonJson(['snapshot', 'push', 's4', '--to', c.url], { cwd: c.a, env: c.aEnv });
  // B pulls through the same proxy.
  const bEnv = { ...c.bEnv, AWS_ENDPOINT: c.proxy.endpoint };
  await neonJson(['snapshot', 'pull', 's4', '--from', c.url], { cwd: c.b, env: bEnv });
  const injected = Object.values(c.proxy.injected).reduce((x, y) => x + y, 0) - before;
  c.proxy.configure(0);
  assert.ok(injected >= 3, `faults were injected (${injected})`);
  const pg = await neonJson(['pg', 'create', '-n', 'at-s4', '-s', 'origin', '--at', 's4'], { cwd: c.b, env: c.bEnv });
  const [rows] = await query(pg.connection_string, CHECKSUM);
  assert.equal(rows, expected);
});

test.run();
