import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';

/*
 * The seed's /storages resource over folders: attach, list, show, detach, and a compute over a named storage;
 * every bad input is one clear line, and changes nothing.
 */

interface Ctx {
  root: string;
  repo: string;
  shared: string;
  env: Record<string, string>;
}

const ctx = {} as Ctx;
const test = suite<Ctx>('neon storage attach | list | show | detach, pg create -s', ctx);

const run = (c: Ctx, args: string[]) => neon(args, { cwd: c.repo, env: c.env });
const json = (c: Ctx, args: string[]) => neonJson(args, { cwd: c.repo, env: c.env });

/** The repository's attached storages, as `storage list --json` answers. */
async function names(c: Ctx): Promise<string[]> {
  return (await json(c, ['storage', 'list'])).map((s: { name: string }) => s.name);
}

/** A failed command: exit code non-zero, one line on stderr; returns that line. */
async function fails(c: Ctx, args: string[], pattern: RegExp): Promise<string> {
  const result = await run(c, args);
  assert.is.not(result.code, 0, `neon ${args.join(' ')} fails`);
  const lines = result.stderr.trim().split('\n');
  assert.is(lines.length, 1, `one line: ${result.stderr}`);
  assert.match(lines[0], pattern);
  return lines[0];
}

test.before(async (c) => {
  c.root = tmpDir('neon-storages-');
  c.repo = path.join(c.root, 'repo');
  c.shared = path.join(c.root, 'shared');
  fs.mkdirSync(c.repo, { mode: 0o755 });
  c.env = { NEON_PORT: '0' };
  const started = await json(c, ['start', '--storage_dest', path.join(c.root, 'dest')]);
  await query(started.connection_string, 'create table t as select g as id from generate_series(1, 5000) g');
});

test.after(async (c) => {
  await cleanup(c.root);
});

test('storage_dest is listed as "default"; attach a folder; list and show it', async (c) => {
  assert.equal(await names(c), ['default']);
  const attached = await json(c, ['storage', 'attach', '-n', 'shared', '--type', 'native', '--path', c.shared]);
  assert.is(attached.name, 'shared');
  assert.is(attached.type, 'native');
  assert.is(attached.url, `file://${c.shared}`);
  assert.equal(await names(c), ['default', 'shared']);
  const human = await run(c, ['storage', 'list']);
  assert.match(human.stdout, /^NAME\s+TYPE\s+URL/);
  assert.match(human.stdout, /shared\s+native\s+file:\/\//);

  await json(c, ['snapshot', 'create', 'first']);
  const pushed = await json(c, ['snapshot', 'push', 'first', '--to', 'shared']);
  assert.is(pushed.state, 'succeeded');
  const shown = await json(c, ['storage', 'show', '-n', 'shared']);
  assert.is(shown.reachable, true);
  assert.equal(
    shown.snapshots.map((s: { name: string }) => s.name),
    ['first'],
  );
  assert.equal(shown.branches, ['main']);
  assert.ok(shown.objects > 3 && shown.bytes > 10_000, `objects ${shown.objects}, bytes ${shown.bytes}`);
  assert.is(shown.repository.pg_version > 0, true);
  const text = (await run(c, ['storage', 'show', '-n', 'shared'])).stdout;
  assert.match(text, /reachable\s+yes/);
  assert.match(text, /first\s+main/);
});

test('pg create -s STORAGE starts a compute at its newest snapshot; detach is refused while it exists', async (c) => {
  const pg = await json(c, ['pg', 'create', '-n', 'over-shared', '-s', 'shared']);
  const [row] = await query(pg.connection_string, 'select count(*)::int as n from t');
  assert.is(row.n, 5000);
  await fails(c, ['storage', 'detach', '-n', 'shared'], /storage shared is used by compute\(s\) over-shared/);
  assert.equal(await names(c), ['default', 'shared'], 'still attached');
  await json(c, ['pg', 'destroy', '-n', 'over-shared']);
  await json(c, ['storage', 'detach', '-n', 'shared']);
  assert.equal(await names(c), ['default']);
  assert.ok(fs.existsSync(path.join(c.shared, 'snapshots', 'first.json')), 'detach deletes nothing in the storage');
});

test('bad input: one clear line each, nothing changed', async (c) => {
  const before = fs.readFileSync(path.join(c.repo, '.neon', 'storages.json'), 'utf8');
  await fails(c, ['storage', 'show', '-n', 'nobody'], /no storage named "nobody"/);
  await fails(c, ['pg', 'create', '-n', 'x', '-s', 'nobody'], /no storage named "nobody"/);
  await fails(c, ['snapshot', 'push', 'first', '--to', 'nobody'], /no storage named "nobody"/);
  await fails(c, ['storage', 'attach', '-n', 'w', '--type', 's3', '--path', c.shared], /--type s3 needs an s3:\/\/bucket\/prefix URL/);
  await fails(c, ['storage', 'attach', '-n', 'w', '--type', 'native', '--path', 's3://bucket/p'], /--type native needs a folder/);
  await fails(c, ['storage', 'attach', '-n', 'w', '--type', 'ftp', '--path', c.shared], /--type must be native .* or s3/);
  const secret = await fails(
    c,
    ['storage', 'attach', '-n', 'w', '--type', 's3', '--path', 's3://AKIDEXAMPLE:hunter2secret@bucket/p'],
    /holds credentials/,
  );
  assert.not.match(secret, /hunter2secret/, 'the secret is not repeated');
  await fails(c, ['storage', 'detach', '-n', 'default'], /storage_dest and cannot be detached/);

  // A storage written by a newer neon: refused at attach and at pull, naming the version.
  const newer = path.join(c.root, 'newer');
  fs.mkdirSync(path.join(newer, 'snapshots'), { recursive: true });
  fs.writeFileSync(path.join(newer, 'repository.json'), JSON.stringify({ format: 'neon-repository', version: 2 }));
  await fails(c, ['storage', 'attach', '-n', 'newer', '--type', 'native', '--path', newer], /unknown format version \(2\): upgrade neon/);
  await fails(c, ['snapshot', 'pull', 'x', '--from', newer], /unknown format version \(2\): upgrade neon/);
  await fails(c, ['clone', newer, path.join(c.root, 'clone-newer')], /unknown format version \(2\): upgrade neon/);
  assert.not.ok(fs.existsSync(path.join(c.root, 'clone-newer', '.neon')), 'a refused clone leaves no repository');
  assert.is(fs.readFileSync(path.join(c.repo, '.neon', 'storages.json'), 'utf8'), before, 'storages.json is unchanged');
  assert.equal(await names(c), ['default']);

  const asJson = await run(c, ['storage', 'show', '-n', 'nobody', '--json']);
  assert.equal(JSON.parse(asJson.stderr), { code: 'storage_not_found', message: JSON.parse(asJson.stderr).message });
});

test('--help shows the options with examples', async (c) => {
  const help = (await run(c, ['storage', '--help'])).stdout;
  assert.match(help, /--type <type>/);
  assert.match(help, /Examples:\s+neon storage attach -n \w+ --type s3 --path s3:\/\//);
  const clone = (await run(c, ['clone', '--help'])).stdout;
  assert.match(clone, /neon clone s3:\/\//);
  const snapshot = (await run(c, ['snapshot', '--help'])).stdout;
  assert.match(snapshot, /neon snapshot push \S+ --to/);
});

test.run();
