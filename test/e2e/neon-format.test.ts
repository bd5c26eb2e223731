import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';

/*
 * Seed 003's "neon format": `neon export --snapshot_format=neon` writes a snapshot in neon's own layout (a push),
 * and `neon init --snapshot_path=PATH` recognises a storage that holds a neon repository and clones it.
 */

interface Ctx {
  root: string;
  a: string;
  shared: string;
  rows: unknown;
}

const ctx = {} as Ctx;
const test = suite<Ctx>('export and init in the neon format', ctx);
const CHECKSUM = "select count(*)::int as n, md5(string_agg(v, ',' order by id)) as sum from t";
const env = { NEON_PORT: '0' };

test.before(async (c) => {
  c.root = tmpDir('neon-format-');
  c.a = path.join(c.root, 'alice');
  c.shared = path.join(c.root, 'shared');
  fs.mkdirSync(c.a, { mode: 0o755 });
  const started = await neonJson(['start'], { cwd: c.a, env });
  await query(started.connection_string, "create table t as select g as id, md5(g::text) as v from generate_series(1, 5000) g");
  [c.rows] = await query(started.connection_string, CHECKSUM);
  await neonJson(['snapshot', 'create', 's1'], { cwd: c.a, env });
});

test.after(async (c) => {
  await cleanup(c.root);
});

test('export --snapshot_format=neon without a snapshot is one clear line, and nothing is written', async (c) => {
  const result = await neon(['export', `--snapshot_path=${c.shared}`, '--snapshot_format=neon'], { cwd: c.a, env });
  assert.is.not(result.code, 0);
  assert.match(result.stderr, /neon format moves snapshots: name one/);
  assert.is(result.stderr.trim().split('\n').length, 1, result.stderr);
  assert.not.ok(fs.existsSync(c.shared) && fs.readdirSync(c.shared).length > 0, 'nothing written');
});

test('export --snapshot_format=neon --snapshot s1 pushes the snapshot', async (c) => {
  const pushed = await neonJson(['export', `--snapshot_path=${c.shared}`, '--snapshot_format=neon', '--snapshot', 's1'], { cwd: c.a, env });
  assert.is(pushed.snapshot, 's1');
  assert.ok(pushed.bytes > 0, JSON.stringify(pushed));
  const again = await neonJson(['export', `--snapshot_path=${c.shared}`, '--snapshot_format=neon', '--snapshot', 's1'], { cwd: c.a, env });
  assert.is(again.bytes, 0, 'a second export of the same snapshot moves nothing');
});

test('init --snapshot_path of that folder (no format) clones it; start serves the rows', async (c) => {
  const b = path.join(c.root, 'bob');
  fs.mkdirSync(b, { mode: 0o755 });
  const init = await neon(['init', `--snapshot_path=${c.shared}`], { cwd: b, env });
  assert.is(init.code, 0, init.stderr);
  assert.match(init.stdout, /from snapshot s1 of .* \(neon format/);
  const started = await neonJson(['start'], { cwd: b, env });
  const [rows] = await query(started.connection_string, CHECKSUM);
  assert.equal(rows, c.rows, "bob's main compute holds alice's rows");
  const storages = await neonJson(['storage', 'list'], { cwd: b, env });
  assert.ok(storages.some((s: { name: string }) => s.name === 'origin'), JSON.stringify(storages));
});

test('init --snapshot_path of a folder that holds no neon repository and no format: one clear line, no repository', async (c) => {
  const empty = path.join(c.root, 'empty');
  const d = path.join(c.root, 'dave');
  fs.mkdirSync(empty, { mode: 0o755 });
  fs.mkdirSync(d, { mode: 0o755 });
  const result = await neon(['init', `--snapshot_path=${empty}`], { cwd: d, env });
  assert.is.not(result.code, 0);
  assert.match(result.stderr, /--snapshot_format is needed: pgdata, tar or walg \(.* holds no neon repository to clone\)/);
  assert.not.ok(fs.existsSync(path.join(d, '.neon')), 'no repository left behind');
});

test.run();
