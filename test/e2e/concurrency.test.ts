import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { isAlive, signal, waitGone } from '../../lib/proc.js';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { waitFor } from '../../testkit/wait.js';

/** A started repository and a REST client for it. */
interface Repo {
  dir: string;
  port: number;
  token: string;
  pid: number;
}

async function start(dir: string): Promise<Repo> {
  const out = await neonJson(['start'], { cwd: dir });
  const token = fs.readFileSync(path.join(dir, '.neon', 'token'), 'utf8').trim();
  return { dir, port: out.status.daemon.port, token, pid: out.status.daemon.pid };
}

async function api(repo: Repo, method: string, route: string, body?: unknown) {
  const response = await fetch(`http://127.0.0.1:${repo.port}${route}`, {
    method,
    headers: { authorization: `Bearer ${repo.token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as Record<string, any> };
}

function state(dir: string): { computes: Record<string, any> } {
  return JSON.parse(fs.readFileSync(path.join(dir, '.neon', 'state.json'), 'utf8'));
}

function trash(dir: string): string[] {
  const folder = path.join(dir, '.neon', 'trash');
  return fs.existsSync(folder) ? fs.readdirSync(folder) : [];
}

/** After a stop and a start, the repository works: main answers queries and lists exactly `names`. */
async function restartsCleanly(repo: Repo, names: string[]): Promise<Repo> {
  const stopped = await neon(['stop'], { cwd: repo.dir });
  assert.is(stopped.code, 0, stopped.stderr);
  const again = await start(repo.dir);
  const pgs = (await api(again, 'GET', '/pgs')).body as unknown as { name: string; state: string; connection_string: string }[];
  assert.equal(pgs.map((p) => p.name).sort(), [...names].sort());
  const main = pgs.find((p) => p.name === 'main')!;
  assert.is(main.state, 'running');
  assert.equal(await query(main.connection_string, 'select 1 as one'), [{ one: 1 }]);
  return again;
}

const parallel = suite('operations on one compute are serialised');
let repo: Repo;

parallel.before(async () => {
  repo = await start(tmpDir());
});
parallel.after(() => cleanup(repo.dir));

parallel('20 parallel start / stop / destroy calls on one compute: no 5xx, one destroy wins, state stays consistent', async () => {
  const made = await api(repo, 'PUT', '/pgs', { name: 'busy' });
  assert.is(made.status, 201, JSON.stringify(made.body));
  const plan = ['stop', 'start', 'stop', 'destroy', 'start', 'stop', 'start', 'destroy', 'start', 'stop'];
  const calls = [...plan, ...plan].map((what) =>
    what === 'destroy' ? api(repo, 'DELETE', '/pgs/busy') : api(repo, 'POST', '/pgs/busy/actions', { action: what }),
  );
  const answers = await Promise.all(calls);
  const statuses = answers.map((a) => a.status);
  assert.ok(
    statuses.every((s) => s === 200 || s === 404),
    `statuses: ${statuses.join(' ')}; ${JSON.stringify(answers.find((a) => a.status >= 500)?.body)}`,
  );
  const destroys = answers.filter((_, i) => [...plan, ...plan][i] === 'destroy');
  assert.is(destroys.filter((a) => a.status === 200).length, 1, 'exactly one destroy succeeds; the later ones are 404');
  for (const late of destroys.filter((a) => a.status === 404)) assert.is(late.body.code, 'pg_not_found');
  // Gone everywhere: the API, state.json, the compute folder and the trash.
  assert.is((await api(repo, 'GET', '/pgs/busy')).status, 404);
  assert.equal(Object.keys(state(repo.dir).computes), ['main']);
  assert.not.ok(fs.existsSync(path.join(repo.dir, '.neon', 'computes', 'busy')));
  assert.equal(trash(repo.dir), []);
  repo = await restartsCleanly(repo, ['main']);
  // The name can be used again.
  assert.is((await api(repo, 'PUT', '/pgs', { name: 'busy2' })).status, 201);
  assert.is((await api(repo, 'DELETE', '/pgs/busy2')).status, 200);
  assert.is((await api(repo, 'DELETE', '/pgs/busy2')).status, 404);
});

const crash = suite('a destroy interrupted by a crash is finished at the next start');
let crashed: Repo;

crash.before(async () => {
  crashed = await start(tmpDir());
});
crash.after(() => cleanup(crashed.dir));

crash('SIGKILL of the daemon during a destroy: the next start has the compute whole or gone, never half', async () => {
  assert.is((await api(crashed, 'PUT', '/pgs', { name: 'doomed' })).status, 201);
  const destroy = api(crashed, 'DELETE', '/pgs/doomed').catch(() => undefined);
  // Stopping the compute takes a moment: the kill lands while the destroy is under way.
  await new Promise((r) => setTimeout(r, 150));
  signal(crashed.pid, 'SIGKILL');
  await destroy;
  assert.ok(await waitGone([crashed.pid], 10_000));
  // A supervisor may bring the daemon back by itself: either way `neon start` ends with one running.
  crashed = await waitFor('neon start after the kill', () => start(crashed.dir), 120_000);
  const names = ((await api(crashed, 'GET', '/pgs')).body as unknown as { name: string }[]).map((p) => p.name);
  const folder = path.join(crashed.dir, '.neon', 'computes', 'doomed');
  if (names.includes('doomed')) {
    assert.ok(fs.existsSync(path.join(folder, 'pgdata', 'PG_VERSION')), 'a compute that is still listed has all its data');
  } else {
    assert.not.ok(fs.existsSync(folder));
    assert.not.ok(Object.hasOwn(state(crashed.dir).computes, 'doomed'));
  }
  assert.equal(trash(crashed.dir), []);
  crashed = await restartsCleanly(crashed, names);
});

crash('a tombstoned compute (folder moved to the trash, record still there) is removed at start', async () => {
  const others = ((await api(crashed, 'GET', '/pgs')).body as unknown as { name: string }[]).map((p) => p.name);
  assert.is((await api(crashed, 'PUT', '/pgs', { name: 'tomb' })).status, 201);
  assert.is((await neon(['stop'], { cwd: crashed.dir })).code, 0);
  // What a crash right after the tombstone leaves behind: the folder in the trash, the record in state.json.
  const trashDir = path.join(crashed.dir, '.neon', 'trash');
  fs.mkdirSync(trashDir, { recursive: true });
  fs.renameSync(path.join(crashed.dir, '.neon', 'computes', 'tomb'), path.join(trashDir, 'tomb@1-deadbeef'));
  fs.mkdirSync(path.join(trashDir, 'orphan@2-cafecafe', 'pgdata'), { recursive: true });
  assert.ok(Object.hasOwn(state(crashed.dir).computes, 'tomb'));
  crashed = await start(crashed.dir);
  assert.is((await api(crashed, 'GET', '/pgs/tomb')).status, 404);
  assert.not.ok(Object.hasOwn(state(crashed.dir).computes, 'tomb'));
  assert.equal(trash(crashed.dir), []);
  assert.ok(isAlive(crashed.pid));
  crashed = await restartsCleanly(crashed, others);
});

parallel.run();
crash.run();
