import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { isAlive } from '../../lib/proc.js';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';

// Issue 9, item 1: a repository whose config.json or state.json is lost still holds every row. neon must say
// so and how to repair it, never re-initialise over it; `neon repair` brings it back.

const dirs: string[] = [];
const lost = suite('a lost or damaged config.json / state.json never wipes the repository');
lost.after(async () => {
  for (const dir of dirs.splice(0)) await cleanup(dir);
});

/** A started repository with one row in it; answers its folder and connection string. */
async function repositoryWithRow(): Promise<{ dir: string; url: string; daemonPid: number }> {
  const dir = tmpDir();
  dirs.push(dir);
  const out = await neonJson(['start'], { cwd: dir });
  const url = out.connection_string;
  await query(url, "create table keep (v text); insert into keep values ('precious')");
  return { dir, url, daemonPid: out.status.daemon.pid };
}

const rows = (url: string) => query(url, 'select v from keep').then((r) => r.map((row) => row.v));

lost('config.json deleted while neon runs: start refuses, nothing is deleted, the daemon and Postgres keep running', async () => {
  const { dir, url, daemonPid } = await repositoryWithRow();
  fs.rmSync(path.join(dir, '.neon', 'config.json'));
  const start = await neon(['start'], { cwd: dir });
  assert.is(start.code, 1, start.stdout);
  assert.match(start.stderr, /config\.json is missing.*nothing was changed.*neon repair/);
  assert.not.match(start.stdout + start.stderr, /Initialised/);
  assert.ok(isAlive(daemonPid), 'the running daemon was left alone');
  assert.equal(await rows(url), ['precious']);
  // init without --force is refused the same way
  const init = await neon(['init'], { cwd: dir });
  assert.is(init.code, 1);
  assert.match(init.stderr, /neon repair/);
  assert.equal(await rows(url), ['precious']);
});

lost('config.json gone after a stop: neon repair rebuilds it and the row is there after start', async () => {
  const { dir } = await repositoryWithRow();
  assert.is((await neon(['stop'], { cwd: dir })).code, 0);
  fs.rmSync(path.join(dir, '.neon', 'config.json'));
  const doctor = await neon(['doctor'], { cwd: dir });
  assert.is(doctor.code, 1);
  assert.match(doctor.stdout, /config\.json/);
  const repair = await neonJson(['repair'], { cwd: dir });
  assert.equal(repair.repaired, [path.join(dir, '.neon', 'config.json')]);
  const out = await neonJson(['start'], { cwd: dir });
  assert.equal(await rows(out.connection_string), ['precious']);
  assert.is((await neon(['doctor'], { cwd: dir })).code, 0);
});

lost('an emptied or corrupt state.json is a one-line error, not a stack trace and not forgotten computes', async () => {
  const { dir, url } = await repositoryWithRow();
  await neonJson(['pg', 'create', '-n', 'side'], { cwd: dir });
  assert.is((await neon(['stop'], { cwd: dir })).code, 0);
  const stateFile = path.join(dir, '.neon', 'state.json');
  for (const damage of ['', '{"computes": ', 'null']) {
    fs.writeFileSync(stateFile, damage);
    const start = await neon(['start'], { cwd: dir });
    assert.is(start.code, 1, `state.json ${JSON.stringify(damage)}: ${start.stdout}`);
    assert.not.match(start.stderr, /\n\s+at /, 'no stack trace');
    assert.match(start.stderr, /state\.json.*neon repair/);
  }
  fs.rmSync(stateFile);
  assert.match((await neon(['start'], { cwd: dir })).stderr, /state\.json is missing/);
  fs.writeFileSync(stateFile, '{"computes": ');
  const repair = await neonJson(['repair'], { cwd: dir });
  assert.equal(repair.repaired, [stateFile]);
  const out = await neonJson(['start'], { cwd: dir });
  const pgs = await neonJson(['pg', 'list'], { cwd: dir });
  assert.equal(pgs.map((p: { name: string }) => p.name).sort(), ['main', 'side'], 'both computes are back');
  // the same password: the connection string users saved still works
  assert.is(out.connection_string, url);
  assert.equal(await rows(url), ['precious']);
  assert.ok(fs.readdirSync(path.join(dir, '.neon')).some((f) => f.startsWith('state.json.broken-')), 'the damaged file is kept aside');
});

lost('a half-made repository (init killed before it finished) is simply made again', async () => {
  const dir = tmpDir();
  dirs.push(dir);
  const repo = path.join(dir, '.neon');
  fs.mkdirSync(path.join(repo, 'computes', 'main'), { recursive: true });
  fs.writeFileSync(path.join(repo, 'token'), 'x\n');
  fs.writeFileSync(path.join(repo, 'init.incomplete'), '1\n');
  const init = await neon(['init'], { cwd: dir });
  assert.is(init.code, 0, init.stderr);
  assert.not.ok(fs.existsSync(path.join(repo, 'init.incomplete')));
});

lost.run();
