import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cleanup, ROOT, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';

// What a user does: install the package from a tarball into a project of their own, write a neon.config.ts
// that imports from 'neon-local' and lists a plugin, and run `npx neon start`. Nothing of this repository's
// own layout (tsconfig paths, tsx) helps there.

const install = suite('neon-local installed from a tarball into a user project');
let dir = '';
install.before(async () => {
  dir = tmpDir('neon-install-');
});
install.after(async () => {
  if (dir) {
    await execa('npx', ['--no-install', 'neon', 'stop'], { cwd: path.join(dir, 'app'), reject: false });
    await cleanup(dir);
  }
});

install('npm install <tarball>, a neon.config.ts listing a plugin, npx neon start, a query, npx neon stop', async () => {
  // dist/ is what npm test built; --ignore-scripts keeps pack from rebuilding it under the other tests' feet.
  const packed = await execa('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: ROOT });
  const tarball = path.join(dir, JSON.parse(packed.stdout)[0].filename as string);
  const app = path.join(dir, 'app');
  fs.mkdirSync(app, { mode: 0o755 });
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'my-app', private: true }));
  await execa('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', tarball], { cwd: app });
  fs.writeFileSync(
    path.join(app, 'neon.config.ts'),
    [
      "import { defineConfig } from 'neon-local';",
      "import storageFile from 'neon-local/plugins/storage-file';",
      '',
      '// One plugin listed with options: the built-in launchers must still be there.',
      'export default defineConfig({ plugins: [storageFile({ fsync: false })], safekeepers: 1 });',
      '',
    ].join('\n'),
  );
  const started = await execa('npx', ['--no-install', 'neon', 'start', '--json'], { cwd: app, reject: false });
  assert.is(started.exitCode, 0, started.stderr);
  const answer = JSON.parse(started.stdout);
  assert.ok(answer.status.config_file.endsWith('neon.config.ts'), 'the project config was loaded');
  assert.ok(answer.status.plugins.includes('launcher-compute'), 'built-in launchers are applied');
  const [row] = await query(answer.connection_string, 'select 40 + 2 as answer');
  assert.is(row.answer, 42);
  const second = await execa('npx', ['--no-install', 'neon-local', 'status', '--json'], { cwd: app, reject: false });
  assert.is(second.exitCode, 0, 'the neon-local bin name works too');
  const stopped = await execa('npx', ['--no-install', 'neon', 'stop'], { cwd: app, reject: false });
  assert.is(stopped.exitCode, 0, stopped.stderr);
});

install.run();
