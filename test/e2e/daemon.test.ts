import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import pg from 'pg';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { isAlive } from '../../lib/proc.js';
import { cleanup, neon, neonJson, processesOf, tmpDir } from '../../testkit/env.js';
import { waitFor } from '../../testkit/wait.js';

/** A started repository in a temp folder, with what a REST client needs. */
interface Started {
  dir: string;
  port: number;
  token: string;
  daemonPid: number;
}

async function startRepo(dir: string, env: Record<string, string> = {}): Promise<Started> {
  const out = await neonJson(['start'], { cwd: dir, env });
  const token = fs.readFileSync(path.join(dir, '.neon', 'token'), 'utf8').trim();
  return { dir, port: out.status.daemon.port, token, daemonPid: out.status.daemon.pid };
}

async function api(repo: Started, method: string, route: string, options: { body?: string; token?: string | null } = {}) {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  const token = options.token === undefined ? repo.token : options.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`http://127.0.0.1:${repo.port}${route}`, { method, headers, body: options.body });
  return { status: response.status, body: (await response.json()) as Record<string, any> };
}

const rest = suite('REST API and CLI against one running repository');
let repo: Started;

rest.before(async () => {
  repo = await startRepo(tmpDir());
});
rest.after(() => cleanup(repo.dir));

rest('requests without the token, or with a wrong one, get 401 and a JSON error', async () => {
  for (const token of [null, 'wrong-token', repo.token + 'x']) {
    const res = await api(repo, 'GET', '/status', { token });
    assert.is(res.status, 401);
    assert.is(res.body.code, 'unauthorized');
  }
  assert.is((await api(repo, 'GET', '/status')).status, 200);
});

rest('unknown routes are 404, wrong methods 405, bad JSON and bad actions 400, unknown computes 404', async () => {
  assert.equal((await api(repo, 'GET', '/nope')).body.code, 'not_found');
  assert.is((await api(repo, 'GET', '/nope')).status, 404);
  assert.is((await api(repo, 'DELETE', '/status')).status, 405);
  const bad = await api(repo, 'POST', '/pgs/main/actions', { body: '{"action": "start"' });
  assert.is(bad.status, 400);
  assert.is(bad.body.code, 'bad_json');
  const action = await api(repo, 'POST', '/pgs/main/actions', { body: '{"action": "explode"}' });
  assert.is(action.status, 400);
  assert.match(action.body.message, /"action" must be one of start, stop/);
  const missing = await api(repo, 'GET', '/pgs/nope');
  assert.is(missing.status, 404);
  assert.is(missing.body.code, 'pg_not_found');
});

rest('GET /status and GET /pgs/main describe the daemon, binaries and compute', async () => {
  const status = (await api(repo, 'GET', '/status')).body;
  assert.is(status.daemon.pid, repo.daemonPid);
  assert.is(status.postgres.source, 'embedded');
  assert.match(status.postgres.version, /^17\./);
  const main = (await api(repo, 'GET', '/pgs/main')).body;
  assert.is(main.state, 'running');
  const shown = await neonJson(['pg', 'show', '-n', 'main'], { cwd: repo.dir });
  assert.is(shown.connection_string, main.connection_string);
  const client = new pg.Client({ connectionString: main.connection_string });
  await client.connect();
  assert.is((await client.query('select 1 as one')).rows[0].one, 1);
  const settings = await client.query(
    "select name, setting from pg_settings where name in ('wal_level', 'listen_addresses') order by name",
  );
  assert.equal(settings.rows, [
    { name: 'listen_addresses', setting: '127.0.0.1' },
    { name: 'wal_level', setting: 'replica' },
  ]);
  await client.end();
  // Safekeepers and base images need replication connections from localhost, with the same password.
  const replication = new pg.Client({ connectionString: main.connection_string, replication: 'database' } as pg.ClientConfig);
  await replication.connect();
  const identify = await replication.query('IDENTIFY_SYSTEM');
  assert.match(String(identify.rows[0].systemid), /^\d+$/);
  await replication.end();
});

rest('neon start when already started is idempotent and prints the status', async () => {
  const again = await neon(['start'], { cwd: repo.dir });
  assert.is(again.code, 0, again.stderr);
  assert.match(again.stdout, /already running/);
  assert.match(again.stdout, /compute\s+main\s+running/);
  assert.is((await neonJson(['status'], { cwd: repo.dir })).daemon.pid, repo.daemonPid, 'the same daemon still runs');
});

rest('pg stop / pg start act on the compute through the API', async () => {
  const stopped = await neonJson(['pg', 'stop', '-n', 'main'], { cwd: repo.dir });
  assert.is(stopped.state, 'stopped');
  const client = new pg.Client({ connectionString: stopped.connection_string });
  assert.ok(
    await client.connect().then(
      () => false,
      () => true,
    ),
    'a stopped compute refuses connections',
  );
  const started = await neonJson(['pg', 'start', '-n', 'main'], { cwd: repo.dir });
  assert.is(started.state, 'running');
  const again = await neonJson(['pg', 'start', '-n', 'main'], { cwd: repo.dir });
  assert.is(again.pid, started.pid, 'starting a running compute changes nothing');
});

rest('init on an existing repository is refused without --force, and while running even with it', async () => {
  const plain = await neon(['init'], { cwd: repo.dir });
  assert.is(plain.code, 1);
  assert.match(plain.stderr, /already exists.*--force/);
  const forced = await neon(['init', '--force'], { cwd: repo.dir });
  assert.is(forced.code, 1);
  assert.match(forced.stderr, /neon stop/);
  assert.is((await api(repo, 'GET', '/pgs/main')).body.state, 'running', 'the repository is still usable');
});

rest('a compute that dies is restarted every time (with backoff), and the log says why', async () => {
  let pg = (await api(repo, 'GET', '/pgs/main')).body;
  for (const round of [1, 2]) {
    const killed = pg.pid;
    process.kill(killed, 'SIGKILL');
    pg = await waitFor(`restart ${round}`, async () => {
      const now = (await api(repo, 'GET', '/pgs/main')).body;
      return now.state === 'running' && now.pid !== killed ? now : undefined;
    }, 60_000);
    assert.is(pg.last_exit.signal, 'SIGKILL');
  }
  assert.ok(pg.restarts >= 2, `restarted twice (restarts ${pg.restarts})`);
  const log = fs.readFileSync(path.join(repo.dir, '.neon', 'logs', 'daemon.log'), 'utf8');
  assert.match(log, /compute main exited unexpectedly \(signal SIGKILL\)/);
});

rest('a killed daemon is started again by its watchdog, which adopts the running Postgres; the data is intact', async () => {
  const main = (await api(repo, 'GET', '/pgs/main')).body;
  const client = new pg.Client({ connectionString: main.connection_string });
  await client.connect();
  await client.query('create table kept (x int); insert into kept values (7)');
  await client.end();
  process.kill(repo.daemonPid, 'SIGKILL');
  await waitFor('the daemon to die', () => !isAlive(repo.daemonPid) || undefined);
  // neon start finds the new daemon (or waits for it) instead of starting a second one
  repo = await startRepo(repo.dir);
  assert.is.not(repo.daemonPid, undefined);
  const now = (await api(repo, 'GET', '/pgs/main')).body;
  assert.is(now.pid, main.pid, 'the compute kept running and was adopted');
  const again = new pg.Client({ connectionString: now.connection_string });
  await again.connect();
  assert.equal((await again.query('select x from kept')).rows, [{ x: 7 }]);
  await again.end();
});

rest('stop, then stop again: the second is a clear error; nothing is left running', async () => {
  assert.is((await neon(['stop'], { cwd: repo.dir })).code, 0);
  const twice = await neon(['stop'], { cwd: repo.dir });
  assert.is(twice.code, 1);
  assert.match(twice.stderr, /^neon: neon is not running for .*: nothing to stop$/, twice.stderr);
  assert.equal(processesOf(repo.dir), []);
  const call = await neon(['pg', 'list'], { cwd: repo.dir });
  assert.is(call.code, 1);
  assert.match(call.stderr, /not running.*neon start/);
});

const ports = suite('two repositories on one machine');
const dirs: string[] = [];
let blocker: net.Server | undefined;
ports.after(async () => {
  blocker?.close();
  for (const dir of dirs) await cleanup(dir);
});

ports('when port 3000 is taken the daemon picks a free port and says so; a configured port that is taken is an error', async () => {
  blocker = net.createServer();
  const taken = await new Promise<boolean>((resolve) => {
    blocker!.once('error', () => resolve(false)); // someone else holds 3000: just as good
    blocker!.listen(3000, '127.0.0.1', () => resolve(true));
  });
  dirs.push(tmpDir(), tmpDir());
  const one = await neon(['start'], { cwd: dirs[0] });
  assert.is(one.code, 0, one.stderr);
  if (taken) assert.match(one.stdout, /port 3000 is in use, so the REST API listens on port \d+/);
  const first = await neonJson(['status'], { cwd: dirs[0] });
  assert.is.not(first.daemon.port, 3000);

  const clash = await neon(['start'], { cwd: dirs[1], env: { NEON_PORT: String(first.daemon.port) } });
  assert.is(clash.code, 1);
  assert.match(clash.stderr, new RegExp(`port ${first.daemon.port} \\(set by NEON_PORT\\) is already in use`));
  assert.equal(processesOf(dirs[1]).length, 0, 'the refused daemon left nothing running');

  const two = await neon(['start'], { cwd: dirs[1] });
  assert.is(two.code, 0, two.stderr);
  const second = await neonJson(['status'], { cwd: dirs[1] });
  assert.is.not(second.daemon.port, first.daemon.port);
  const [a, b] = await Promise.all([
    neonJson(['pg', 'show', '-n', 'main'], { cwd: dirs[0] }),
    neonJson(['pg', 'show', '-n', 'main'], { cwd: dirs[1] }),
  ]);
  assert.is.not(a.port, b.port, 'each main compute has its own port');
  assert.is((await neon(['stop'], { cwd: dirs[0] })).code, 0);
  process.kill(second.daemon.pid, 'SIGTERM');
  await waitFor('the daemon to stop on SIGTERM', () => processesOf(dirs[1]).length === 0 || undefined);
  const log = fs.readFileSync(path.join(dirs[1], '.neon', 'logs', 'daemon.log'), 'utf8');
  assert.match(log, /stopping \(signal\)[^]*stopped/, 'SIGTERM stops the computes cleanly, then the daemon');
  assert.match(fs.readFileSync(path.join(dirs[1], '.neon', 'logs', 'compute-main.log'), 'utf8'), /database system is shut down/);
});

rest.run();
ports.run();
