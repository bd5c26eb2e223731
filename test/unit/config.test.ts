import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { loadConfig, type ResolvedConfig } from '../../core/config.js';
import { NeonError } from '../../core/errors.js';
import { builtinPlugins } from '../../daemon/builtins.js';
import { rejects } from '../../testkit/assert.js';
import { ROOT, cleanup, tmpDir } from '../../testkit/env.js';

/** Real plugins, as a config file outside the repository imports them (built by `npm run build`). */
const STORAGE_FILE = path.join(ROOT, 'dist/plugins/storage-file/index.js');
if (!fs.existsSync(STORAGE_FILE)) throw new Error(`${STORAGE_FILE} is missing: run \`npm run build\` first`);

/** Run `fn` in a fresh temp folder holding `files`, and remove the folder afterwards. */
async function inDir(files: Record<string, string>, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = tmpDir('neon-config-');
  try {
    for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
    await fn(dir);
  } finally {
    await cleanup(dir);
  }
}

const names = (resolved: ResolvedConfig) => resolved.plugins.map((p) => p.name);
const load = (dir: string, command = 'start') => loadConfig(dir, { command });
/** Load as the daemon does: with the built-in plugins. */
const loadWithBuiltins = (dir: string) => loadConfig(dir, { command: 'start' }, builtinPlugins());
const BUILTINS = ['storage-file', 'storage-s3', 'launcher-compute', 'launcher-safekeeper', 'safekeeper-offload', 'format-pgdata', 'format-tar', 'format-walg'];

/** Expect loading `dir` to fail with a one-line config_error whose message matches every pattern. */
async function configError(dir: string, ...patterns: RegExp[]): Promise<string> {
  const error = await rejects(() => load(dir), patterns[0]);
  assert.instance(error, NeonError);
  assert.is((error as NeonError).code, 'config_error');
  for (const pattern of patterns) assert.match(error.message, pattern);
  assert.not.match(error.message, /\n/, 'the message is one line');
  return error.message;
}

// 1. Every kind of config file is found and loaded.

const kinds = suite('config file kinds');

const cases: { name: string; files: Record<string, string>; file: string; check: (r: ResolvedConfig) => void; plugin: string }[] = [
  {
    name: 'neon.config.ts (compiled: type annotations and `as const`)',
    files: {
      'neon.config.ts': `interface Port { port: number }\nconst pg: Port = { port: 6001 };\nexport default { postgres: pg, plugins: [{ name: 'from-ts' }] } as const;\n`,
    },
    file: 'neon.config.ts',
    check: (r) => assert.is(r.config.postgres?.port, 6001),
    plugin: 'from-ts',
  },
  {
    name: 'neon.config.mts',
    files: { 'neon.config.mts': `const port: number = 6002;\nexport default { postgres: { port }, plugins: [{ name: 'from-mts' }] };\n` },
    file: 'neon.config.mts',
    check: (r) => assert.is(r.config.postgres?.port, 6002),
    plugin: 'from-mts',
  },
  {
    name: 'neon.config.js as CommonJS (no package.json)',
    files: { 'neon.config.js': `module.exports = { storage_dest: '/from/cjs-js', plugins: [{ name: 'from-cjs-js' }] };\n` },
    file: 'neon.config.js',
    check: (r) => assert.is(r.config.storage_dest, '/from/cjs-js'),
    plugin: 'from-cjs-js',
  },
  {
    name: 'neon.config.js as ESM (package.json "type": "module", without a neon key)',
    files: {
      'package.json': JSON.stringify({ name: 'app', type: 'module' }),
      'neon.config.js': `export default { storage_dest: '/from/esm-js', plugins: [{ name: 'from-esm-js' }] };\n`,
    },
    file: 'neon.config.js',
    check: (r) => assert.is(r.config.storage_dest, '/from/esm-js'),
    plugin: 'from-esm-js',
  },
  {
    name: 'neon.config.mjs',
    files: { 'neon.config.mjs': `export default { daemon: { port: 3111 }, plugins: [{ name: 'from-mjs' }] };\n` },
    file: 'neon.config.mjs',
    check: (r) => assert.is(r.config.daemon?.port, 3111),
    plugin: 'from-mjs',
  },
  {
    name: 'neon.config.cjs',
    files: { 'neon.config.cjs': `module.exports = { postgres: { port: 6003 }, plugins: [{ name: 'from-cjs' }] };\n` },
    file: 'neon.config.cjs',
    check: (r) => assert.is(r.config.postgres?.port, 6003),
    plugin: 'from-cjs',
  },
  {
    name: 'neon.config.json',
    files: { 'neon.config.json': JSON.stringify({ postgres: { port: 6004 }, plugins: [{ name: 'from-json' }] }) },
    file: 'neon.config.json',
    check: (r) => assert.is(r.config.postgres?.port, 6004),
    plugin: 'from-json',
  },
  {
    name: 'package.json with a "neon" key',
    files: { 'package.json': JSON.stringify({ name: 'app', neon: { storage_dest: '/from/pkg', plugins: [{ name: 'from-pkg' }] } }) },
    file: 'package.json',
    check: (r) => assert.is(r.config.storage_dest, '/from/pkg'),
    plugin: 'from-pkg',
  },
];

for (const c of cases) {
  kinds(c.name, () =>
    inDir(c.files, async (dir) => {
      const resolved = await load(dir);
      c.check(resolved);
      assert.is(resolved.file, path.join(dir, c.file));
      assert.equal(names(resolved), [c.plugin], 'the listed plugins replace the defaults');
      assert.equal(fs.readdirSync(dir).sort(), Object.keys(c.files).sort(), 'no compiled temp file is left behind');
    }),
  );
}

kinds('a config can import real plugin factories (from dist)', () =>
  inDir(
    { 'neon.config.ts': `import storageFile from '${STORAGE_FILE}';\nexport default { plugins: [storageFile({ fsync: false })] };\n` },
    async (dir) => {
      const resolved = await load(dir);
      assert.equal(names(resolved), ['storage-file']);
      assert.equal(resolved.plugins[0].resolveStorage?.schemes, ['file']);
    },
  ),
);

// 2. The function form gets the command; async functions and promises work too.

const functions = suite('function and promise exports');

functions('a function export receives the command given to loadConfig', () =>
  inDir(
    {
      'neon.config.ts': `export default ({ command }: { command: string }) => ({ storage_dest: '/data/' + command, plugins: [{ name: 'for-' + command }] });\n`,
    },
    async (dir) => {
      const init = await load(dir, 'init');
      const start = await load(dir, 'start');
      assert.is(init.config.storage_dest, '/data/init');
      assert.equal(names(init), ['for-init']);
      assert.is(start.config.storage_dest, '/data/start');
      assert.equal(names(start), ['for-start']);
    },
  ),
);

functions('an async function export is awaited', () =>
  inDir(
    {
      'neon.config.mjs': `export default async ({ command }) => { await new Promise((r) => setTimeout(r, 10)); return { storage_dest: '/async/' + command }; };\n`,
    },
    async (dir) => assert.is((await load(dir, 'status')).config.storage_dest, '/async/status'),
  ),
);

functions('a promise export is awaited', () =>
  inDir(
    { 'neon.config.mjs': `export default new Promise((r) => setTimeout(() => r({ storage_dest: '/promised' }), 10));\n` },
    async (dir) => assert.is((await load(dir)).config.storage_dest, '/promised'),
  ),
);

// 3 and 4. Defaults.

const defaults = suite('defaults');

defaults('no config file gives the built-in defaults', () =>
  inDir({}, async (dir) => {
    const resolved = await loadWithBuiltins(dir);
    assert.is(resolved.file, undefined);
    assert.equal(resolved.config, {});
    assert.equal(names(resolved), BUILTINS);
  }),
);

defaults('a package.json without a "neon" key is not a config', () =>
  inDir({ 'package.json': JSON.stringify({ name: 'app' }) }, async (dir) => {
    const resolved = await loadWithBuiltins(dir);
    assert.is(resolved.file, undefined);
    assert.equal(names(resolved), BUILTINS);
  }),
);

defaults('a config without `plugins` gets the default plugins', () =>
  inDir({ 'neon.config.ts': `export default { postgres: { port: 6005 } };\n` }, async (dir) => {
    const resolved = await loadWithBuiltins(dir);
    assert.is(resolved.file, path.join(dir, 'neon.config.ts'));
    assert.is(resolved.config.postgres?.port, 6005);
    assert.equal(names(resolved), BUILTINS);
  }),
);

defaults('listing one plugin keeps the built-ins (the launchers are not dropped)', () =>
  inDir({ 'neon.config.mjs': `export default { plugins: [{ name: 'audit', start() {} }] };\n` }, async (dir) => {
    assert.equal(names(await loadWithBuiltins(dir)), ['audit', ...BUILTINS]);
  }),
);

defaults('a configured built-in replaces the default one, options and all', () =>
  inDir(
    { 'neon.config.ts': `import storageFile from '${STORAGE_FILE}';\nexport default { plugins: [storageFile({ fsync: false }), { name: 'x' }] };\n` },
    async (dir) => {
      const resolved = await loadWithBuiltins(dir);
      assert.equal(names(resolved), ['storage-file', 'x', 'storage-s3', 'launcher-compute', 'launcher-safekeeper', 'safekeeper-offload', 'format-pgdata', 'format-tar', 'format-walg']);
    },
  ),
);

// 5 and 6. Errors: NeonError, code config_error, one helpful line.

const errors = suite('config errors');

const failing: { name: string; files: Record<string, string>; patterns: RegExp[] }[] = [
  { name: 'a config that throws while loading', files: { 'neon.config.mjs': `throw new Error('no coffee');\n` }, patterns: [/no coffee/] },
  {
    name: 'a function export that throws',
    files: { 'neon.config.mjs': `export default () => { throw new Error('bad command'); };\n` },
    patterns: [/neon\.config\.mjs/, /function threw/, /bad command/],
  },
  { name: 'a number export', files: { 'neon.config.mjs': `export default 42;\n` }, patterns: [/must export an object/, /exported number/] },
  { name: 'a null export', files: { 'neon.config.mjs': `export default null;\n` }, patterns: [/must export an object/, /exported null/] },
  {
    name: 'no default export',
    files: { 'neon.config.mjs': `const forgot = {};\n` },
    patterns: [/must export an object/, /exported undefined/],
  },
  {
    name: 'an array export',
    files: { 'neon.config.cjs': `module.exports = [{ name: 'x' }];\n` },
    patterns: [/must export an object/, /exported an array/],
  },
  {
    name: 'an unknown top-level key',
    files: { 'neon.config.ts': `export default { storage_dst: '/x' };\n` },
    patterns: [/neon\.config\.ts/, /unknown setting "storage_dst"/, /storage_dest/],
  },
  {
    name: 'an unknown nested key',
    files: { 'neon.config.json': JSON.stringify({ postgres: { prot: 5432 } }) },
    patterns: [/neon\.config\.json/, /unknown setting "postgres\.prot"/, /postgres\.port/],
  },
  {
    name: 'a value of the wrong type',
    files: { 'neon.config.ts': `export default { postgres: { port: '5432' } };\n` },
    patterns: [/"postgres\.port" must be a number, not string/],
  },
  {
    name: 'a syntax error in a .ts config',
    files: { 'neon.config.ts': `export default { postgres: { port: 5432 }\nconst = ;\n` },
    patterns: [/could not load the neon config/, /neon\.config\.ts:2:1: ',' expected/],
  },
  {
    name: 'a syntax error in an ES module config (the real error, not a Node internal assertion)',
    files: { 'neon.config.mjs': `export default { postgres: { port: 5432 }\nconst = ;\n` },
    patterns: [/could not load the neon config/, /Unexpected token/],
  },
  {
    name: 'an unknown option of a real plugin factory',
    files: {
      'neon.config.ts': `import storageFile from '${STORAGE_FILE}';\nexport default { plugins: [storageFile({ fsnc: true } as any)] };\n`,
    },
    patterns: [/storage-file/, /unknown option "fsnc"/, /known options: fsync/],
  },
];

for (const f of failing) {
  errors(f.name, () =>
    inDir(f.files, async (dir) => {
      await configError(dir, ...f.patterns);
      assert.equal(fs.readdirSync(dir).sort(), Object.keys(f.files).sort(), 'no compiled temp file is left behind');
    }),
  );
}

errors('a CommonJS config that throws is run once, not retried', () =>
  inDir(
    { 'neon.config.cjs': `globalThis.neonConfigRuns = (globalThis.neonConfigRuns ?? 0) + 1;\nthrow new Error('once');\n` },
    async (dir) => {
      const runs = globalThis as { neonConfigRuns?: number };
      delete runs.neonConfigRuns;
      await configError(dir, /once/);
      assert.is(runs.neonConfigRuns, 1);
    },
  ),
);

// 7. `apply` filters plugins by command.

const apply = suite('apply through loadConfig');

apply('a plugin with apply: "init" is used for init only', () =>
  inDir(
    { 'neon.config.ts': `export default { plugins: [{ name: 'always' }, { name: 'init-only', apply: 'init' as const }] };\n` },
    async (dir) => {
      assert.equal(names(await load(dir, 'init')), ['always', 'init-only']);
      assert.equal(names(await load(dir, 'start')), ['always']);
    },
  ),
);

kinds.run();
functions.run();
defaults.run();
errors.run();
apply.run();
