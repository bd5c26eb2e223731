import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { waitFor } from '../../testkit/wait.js';

/** Everything under `root` (lstat), but not what symlinks point to. */
function walk(root: string): { file: string; stat: fs.Stats }[] {
  const out: { file: string; stat: fs.Stats }[] = [];
  const visit = (file: string) => {
    const stat = fs.lstatSync(file);
    out.push({ file, stat });
    if (stat.isDirectory()) for (const entry of fs.readdirSync(file)) visit(path.join(file, entry));
  };
  visit(root);
  return out;
}

/** The folders the Postgres user passes through to its data directories (group may search them, nothing more). */
function passage(repoDir: string): Set<string> {
  const computes = path.join(repoDir, 'computes');
  return new Set([repoDir, computes, ...fs.readdirSync(computes).map((name) => path.join(computes, name))]);
}

/** The Postgres user's group when neon runs as root (Postgres then runs as `postgres`). */
const PG_GID = (() => {
  if (process.getuid?.() !== 0) return undefined;
  const line = fs
    .readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  return line ? Number(line.split(':')[3]) : undefined;
})();

/** What is open to the group or to others, as `mode path` lines; sockets are gated by their folder. */
function exposed(repoDir: string): string[] {
  const open = passage(repoDir);
  const problems: string[] = [];
  for (const { file, stat } of walk(repoDir)) {
    if (stat.isSymbolicLink() || stat.isSocket()) continue;
    const mode = stat.mode & 0o777;
    // WAL that a compute's recovery reads (hard-linked into its folder): readable by the Postgres group.
    const forPostgres = PG_GID !== undefined && stat.gid === PG_GID && stat.isFile() ? 0o040 : 0;
    const allowed = stat.isDirectory() && open.has(file) ? 0o010 : forPostgres;
    if (mode & 0o077 & ~allowed) problems.push(`${mode.toString(8).padStart(4, '0')} ${path.relative(repoDir, file)}`);
  }
  return problems;
}

const modes = suite('everything under .neon is readable by its owner only');
let dir: string;
let repoDir: string;

modes.before(async () => {
  dir = tmpDir();
  repoDir = path.join(dir, '.neon');
});
modes.after(() => cleanup(dir));

modes('after a start with data, a snapshot, an image and a second compute, nothing is open to others', async () => {
  await neonJson(['start'], { cwd: dir });
  const main = await neonJson(['pg', 'show', '-n', 'main'], { cwd: dir });
  await query(main.connection_string, "create table secrets (v text); insert into secrets values ('hunter2')");
  await neonJson(['snapshot', 'create', 'first'], { cwd: dir });
  await neonJson(['image', 'create'], { cwd: dir });
  await neonJson(['pg', 'create', '-n', 'other'], { cwd: dir });
  // The plain image cache (a full copy of the database) exists by now.
  const cache = path.join(repoDir, 'pageserver', 'cache');
  await waitFor('the image cache', () => walk(cache).some(({ file }) => /\/global\/1260$/.test(file)), 60_000);
  assert.equal(exposed(repoDir), []);
  const top = fs.statSync(repoDir);
  assert.is(top.mode & 0o007, 0, '.neon is closed to others');
  // The Postgres user still reaches its data: both computes answer.
  const pgs = (await neonJson(['pg', 'list'], { cwd: dir })) as { name: string; state: string; connection_string: string }[];
  for (const pg of pgs) {
    assert.is(pg.state, 'running', pg.name);
    assert.equal(await query(pg.connection_string, 'select count(*)::int as n from secrets'), [{ n: 1 }]);
  }
  if (process.getuid?.() === 0) {
    // Another user cannot read the copy of pg_authid (password verifiers), even knowing where it is.
    const authid = walk(cache).find(({ file }) => /\/global\/1260$/.test(file))!.file;
    const read = spawnSync('cat', [authid], { uid: 65534, gid: 65534 });
    assert.is.not(read.status, 0, 'nobody cannot read the cached pg_authid');
    assert.match(String(read.stderr), /Permission denied/);
  }
});

modes('a repository made world-readable (an older neon, a copy) is made private again at the next start', async () => {
  assert.is((await neon(['stop'], { cwd: dir })).code, 0);
  const pack = walk(path.join(repoDir, 'pageserver')).find(({ stat }) => stat.isFile())!.file;
  fs.chmodSync(pack, 0o644);
  fs.chmodSync(path.join(repoDir, 'logs'), 0o755);
  fs.chmodSync(repoDir, 0o755);
  assert.ok(exposed(repoDir).length >= 3);
  await neonJson(['start'], { cwd: dir });
  assert.equal(exposed(repoDir), []);
  const pgs = (await neonJson(['pg', 'list'], { cwd: dir })) as { name: string; state: string }[];
  assert.ok(pgs.every((pg) => pg.state === 'running'));
});

modes.run();
