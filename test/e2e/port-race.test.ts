import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { freePort } from '../../lib/net.js';
import { cleanup, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';

/*
 * Two repositories started at the same moment both find their configured port free (it is checked, then bound by
 * Postgres a moment later): the one whose Postgres loses the bind must come up on another port, not fail.
 */
const test = suite('port-race');
const dirs: string[] = [];

test.after(async () => {
  for (const dir of dirs) await cleanup(dir);
});

test('two neon start in two fresh folders at once, on the same configured port: both computes answer', async () => {
  const port = await freePort();
  for (let i = 0; i < 2; i++) {
    const dir = tmpDir('neon-port-race-');
    // The same port for both, as two repositories with the default 55432 have (without clashing with other tests).
    fs.writeFileSync(path.join(dir, 'neon.config.json'), JSON.stringify({ postgres: { port } }));
    dirs.push(dir);
  }
  const started = await Promise.all(dirs.map((dir) => neonJson(['start'], { cwd: dir })));
  const urls: string[] = started.map((out) => out.connection_string);
  assert.ok(urls.every(Boolean), 'each start prints a connection string');
  const ports = urls.map((url) => new URL(url).port);
  assert.is.not(ports[0], ports[1], 'the two main computes listen on different ports');
  assert.ok(ports.includes(String(port)), `one of them has the configured port ${port}`);
  for (const [i, url] of urls.entries()) {
    await query(url, `create table mine (n int); insert into mine values (${i})`);
  }
  // Each answers from its own database: the rows written through its own address.
  for (const [i, url] of urls.entries()) {
    const rows = await query<{ n: number }>(url, 'select n from mine');
    assert.equal(rows, [{ n: i }]);
  }
  // The port each got is kept: status after the start names the same one.
  for (const [i, dir] of dirs.entries()) {
    const main = await neonJson(['pg', 'show', '-n', 'main'], { cwd: dir });
    assert.is(String(main.port), ports[i]);
  }
});

test.run();
