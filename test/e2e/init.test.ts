import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { embeddedBinaries, reachableBinaries, versionOf } from '../../postgres/binaries.js';
import { isRoot, pgUserFor, unreachable } from '../../postgres/user.js';
import { cleanup, neon, neonJson, ROOT, tmpDir } from '../../testkit/env.js';

const dirs: string[] = [];
function project(config?: string): string {
  const dir = tmpDir();
  dirs.push(dir);
  if (config !== undefined) fs.writeFileSync(path.join(dir, 'neon.config.mjs'), config);
  return dir;
}
const plugin = (name: string) => pathToFileURL(path.join(ROOT, 'dist/plugins', name, 'index.js')).href;

/** A Debian-style system install other than the embedded major (CI installs Debian's postgresql). */
function systemInstall(): { binDir: string; version: number } {
  const majors = fs.existsSync('/usr/lib/postgresql') ? fs.readdirSync('/usr/lib/postgresql') : [];
  for (const major of majors) {
    const binDir = `/usr/lib/postgresql/${major}/bin`;
    const found = versionOf(binDir);
    if (found && found.version !== 17) return { binDir, version: found.version };
  }
  throw new Error('these tests need a system PostgreSQL other than 17 (apt-get install postgresql; .ci/run does it)');
}

/** The one-line error a failed command printed; a stack trace would be a bug. */
function oneLineError(result: { code: number; stderr: string }): string {
  assert.is(result.code, 1, `expected exit code 1, got ${result.code}: ${result.stderr}`);
  assert.not.match(result.stderr, /\n\s+at /, 'an expected error prints no stack');
  assert.match(result.stderr, /^neon: /);
  return result.stderr;
}

const badInput = suite('neon init: bad input is refused clearly and creates nothing');
badInput.after(async () => {
  for (const dir of dirs.splice(0)) await cleanup(dir);
});

badInput('an unknown --storage_dest scheme names the scheme and leaves no repository', async () => {
  const dir = project();
  const err = oneLineError(await neon(['init', '--storage_dest=gs://bucket/x'], { cwd: dir }));
  assert.match(err, /no plugin handles the URL scheme "gs:\/\/"/);
  assert.not.ok(fs.existsSync(path.join(dir, '.neon', 'config.json')));
  // s3:// is built in: without credentials it says which to set, and still creates nothing.
  const s3 = oneLineError(await neon(['init', '--storage_dest=s3://bucket/x'], { cwd: dir, env: { AWS_ENDPOINT: 'http://127.0.0.1:9' } }));
  assert.match(s3, /\[plugin storage-s3, hook resolveStorage\].*AWS_ACCESS_KEY_ID/);
  assert.not.ok(fs.existsSync(path.join(dir, '.neon', 'config.json')));
});

badInput('unsupported or missing Postgres versions, and a wrong postgres.bin, are clear errors', async () => {
  const dir = project();
  assert.match(
    oneLineError(await neon(['init', '--pg-version', '14'], { cwd: dir })),
    /PostgreSQL 14 is not supported: neon needs PostgreSQL 15 or newer/,
  );
  assert.match(
    oneLineError(await neon(['init', '--pg-version', '99'], { cwd: dir })),
    /PostgreSQL 99 binaries not found \(looked in .*\): install postgresql-99/,
  );
  assert.match(oneLineError(await neon(['init', '--pg-version', 'new'], { cwd: dir })), /--pg-version must be a major version number/);
  const badBin = project(`export default { postgres: { bin: '/nonexistent/bin' } };`);
  assert.match(
    oneLineError(await neon(['init'], { cwd: badBin })),
    /postgres\.bin is \/nonexistent\/bin, but it holds no runnable postgres/,
  );
});

badInput('a config that throws, exports a non-object, or gives a plugin an unknown option', async () => {
  const throws = project(`throw new Error('config exploded');`);
  assert.match(oneLineError(await neon(['init'], { cwd: throws })), /config exploded/);
  const number = project(`export default 42;`);
  assert.match(oneLineError(await neon(['start'], { cwd: number })), /must export an object.*exported number/);
  const option = project(
    `import storageFile from '${plugin('storage-file')}';\nexport default { plugins: [storageFile({ fsnc: true })] };`,
  );
  assert.match(oneLineError(await neon(['init'], { cwd: option })), /\[plugin storage-file\] unknown option "fsnc"/);
  for (const dir of [throws, number, option]) assert.not.ok(fs.existsSync(path.join(dir, '.neon', 'config.json')));
});

badInput('running as root without the Postgres user, or with a repository it cannot reach', async () => {
  const noUser = project(`export default { postgres: { user: 'neon-no-such-user' } };`);
  const result = await neon(['init'], { cwd: noUser });
  if (isRoot()) {
    assert.match(oneLineError(result), /Postgres refuses to run as root and there is no user "neon-no-such-user".*useradd/);
    const hidden = project();
    fs.chmodSync(hidden, 0o700);
    const err = oneLineError(await neon(['init'], { cwd: hidden }));
    assert.match(err, /the Postgres user "postgres" cannot reach .*chmod o\+x/);
  } else {
    assert.is(result.code, 0, 'not root: Postgres runs as this user and postgres.user does not matter');
  }
});

const storage = suite('neon init --storage_dest records the storage');
storage.after(async () => {
  for (const dir of dirs.splice(0)) await cleanup(dir);
});

storage('a bare path, a file:// URL and a WAL-G FILE_PREFIX are recorded as the same kind of file URL', async () => {
  for (const form of ['relative', 'url', 'walg'] as const) {
    const dir = project();
    const dest = path.join(dir, `store-${form}`);
    const arg = { relative: `store-${form}`, url: pathToFileURL(dest).href, walg: `FILE_PREFIX=${dest}` }[form];
    const out = await neonJson(['init', `--storage_dest=${arg}`], { cwd: dir });
    assert.is(out.storage_dest, pathToFileURL(dest).href);
    assert.ok(fs.statSync(dest).isDirectory(), 'the storage folder is created');
    const meta = JSON.parse(fs.readFileSync(path.join(dir, '.neon', 'config.json'), 'utf8'));
    assert.is(meta.storageDest, pathToFileURL(dest).href);
  }
});

const binaries = suite('Postgres binaries: embedded by default, a system install or a configured folder on request');
binaries.after(async () => {
  for (const dir of dirs.splice(0)) await cleanup(dir);
});

binaries('--pg-version picks a system install; postgres.bin picks a folder; status says which', async () => {
  const system = systemInstall();
  const byVersion = project();
  const byPath = project(`export default { postgres: { bin: ${JSON.stringify(system.binDir)} } };`);
  for (const [dir, args, source] of [
    [byVersion, ['--pg-version', String(system.version)], 'system'],
    [byPath, [], 'path'],
  ] as const) {
    const init = await neonJson(['init', ...args], { cwd: dir });
    assert.is(init.postgres.source, source);
    assert.is(init.postgres.version, system.version);
    const started = await neonJson(['start'], { cwd: dir });
    assert.is(started.status.postgres.source, source);
    assert.is(started.status.postgres.bin_dir, system.binDir);
    const client = new pg.Client({ connectionString: started.connection_string });
    await client.connect();
    const { rows } = await client.query('show server_version_num');
    await client.end();
    assert.is(Math.floor(Number(rows[0].server_version_num) / 10000), system.version);
    assert.is((await neon(['stop'], { cwd: dir })).code, 0);
  }
});

binaries('embedded binaries in a folder the Postgres user cannot enter are run from a copy it can reach', async () => {
  const embedded = (await embeddedBinaries())!;
  const user = pgUserFor('postgres');
  if (!user) {
    assert.is(await reachableBinaries(embedded, user), embedded, 'not root: Postgres runs as this user, no copy needed');
    return;
  }
  const hidden = project();
  fs.chmodSync(hidden, 0o700); // like a checkout under /root
  fs.cpSync(path.dirname(embedded.binDir), path.join(hidden, 'native'), { recursive: true, verbatimSymlinks: true });
  const privateCopy = { ...embedded, binDir: path.join(hidden, 'native', 'bin') };
  assert.is(unreachable(user, [path.join(privateCopy.binDir, 'postgres')]), path.join(privateCopy.binDir, 'postgres'));
  const runnable = await reachableBinaries(privateCopy, user);
  assert.match(runnable.binDir, /^\/var\/cache\/neon\//);
  const version = spawnSync(path.join(runnable.binDir, 'postgres'), ['--version'], { uid: user.uid, gid: user.gid, encoding: 'utf8' });
  assert.match(version.stdout, new RegExp(`PostgreSQL\\) ${embedded.fullVersion.replace('.', '\\.')}`));
});

badInput.run();
storage.run();
binaries.run();
