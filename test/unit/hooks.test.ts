import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { NeonError, PluginError, UnhandledSchemeError } from '../../core/errors.js';
import { createHooks, type StartContext } from '../../core/hooks.js';
import { applyPlugins, checkPluginOptions, resolvePlugins, type NeonPlugin, type PluginOption } from '../../core/plugin.js';
import { resolveLauncher, resolveStorage } from '../../core/resolve.js';
import type { Storage } from '../../core/storage.js';
import { silentLogger } from '../../core/log.js';
import { rejects } from '../../testkit/assert.js';

const context = { repo: { dir: '/tmp/unused' }, log: silentLogger, pgVersion: 17 };

function hostWith(plugins: PluginOption[], command = 'start') {
  const hooks = createHooks();
  applyPlugins(hooks, resolvePlugins(plugins, { command }));
  return hooks;
}

const ordering = suite('hook ordering');

ordering('enforce puts pre plugins first and post plugins last, keeping the configured order otherwise', async () => {
  const calls: string[] = [];
  const plugin = (name: string, enforce?: 'pre' | 'post'): NeonPlugin => ({ name, enforce, init: () => void calls.push(name) });
  const hooks = hostWith([plugin('a'), plugin('late', 'post'), plugin('b'), plugin('early', 'pre')]);
  await hooks.init.promise(context);
  assert.equal(calls, ['early', 'a', 'b', 'late']);
});

ordering('a handler with order pre/post moves before/after every plain handler, whatever the enforce', async () => {
  const calls: string[] = [];
  const hooks = hostWith([
    { name: 'plain-pre', enforce: 'pre', init: () => void calls.push('plain-pre') },
    { name: 'order-pre', enforce: 'post', init: { order: 'pre', handler: () => void calls.push('order-pre') } },
    { name: 'order-post', enforce: 'pre', init: { order: 'post', handler: () => void calls.push('order-post') } },
    { name: 'plain', init: () => void calls.push('plain') },
  ]);
  await hooks.init.promise(context);
  assert.equal(calls, ['order-pre', 'plain-pre', 'plain', 'order-post']);
});

ordering('series hooks wait for each async handler before the next', async () => {
  const calls: string[] = [];
  const hooks = hostWith([
    {
      name: 'slow',
      init: async () => {
        await new Promise((r) => setTimeout(r, 30));
        calls.push('slow');
      },
    },
    { name: 'fast', init: () => void calls.push('fast') },
  ]);
  await hooks.init.promise(context);
  assert.equal(calls, ['slow', 'fast']);
});

ordering('falsy entries are skipped, nested arrays flattened, apply filters by command', async () => {
  const calls: string[] = [];
  const hooks = hostWith(
    [
      false,
      null,
      [{ name: 'nested', init: () => void calls.push('nested') }, [undefined, { name: 'deep', init: () => void calls.push('deep') }]],
      { name: 'only-init', apply: 'init', init: () => void calls.push('only-init') },
      { name: 'fn-apply', apply: ({ command }) => command === 'start', init: () => void calls.push('fn-apply') },
    ],
    'start',
  );
  await hooks.init.promise(context);
  assert.equal(calls, ['nested', 'deep', 'fn-apply']);
});

ordering('a plugin that is not an object, or has a misspelt hook, is refused with its name', () => {
  assert.throws(
    () => resolvePlugins([(() => ({ name: 'x' })) as unknown as NeonPlugin], { command: 'start' }),
    /forget to call the factory/,
  );
  assert.throws(
    () => resolvePlugins([{ name: 'typo', inti: () => undefined } as unknown as NeonPlugin], { command: 'start' }),
    /plugin "typo" has an unknown property "inti"/,
  );
  assert.throws(
    () => resolvePlugins([{ name: 'bad', enforce: 'first' } as unknown as NeonPlugin], { command: 'start' }),
    /enforce must be/,
  );
});

const bail = suite('bail hooks');

const fakeStorage = (url: string) => ({ url }) as unknown as Storage;

bail('storage is resolved by URL scheme; the first plugin that answers wins, undefined passes on', async () => {
  const hooks = hostWith([
    { name: 'declines', resolveStorage: { schemes: ['mem'], handler: () => undefined } },
    { name: 'answers', resolveStorage: { schemes: ['mem'], handler: (req) => fakeStorage(`answers:${req.url}`) } },
    { name: 'too-late', resolveStorage: { schemes: ['mem'], handler: () => fakeStorage('too-late') } },
    { name: 'files', resolveStorage: { schemes: ['file'], handler: (req) => fakeStorage(req.url) } },
  ]);
  assert.is((await resolveStorage(hooks, 'mem://bucket/x')).url, 'answers:mem://bucket/x');
  assert.is((await resolveStorage(hooks, '/var/data')).url, 'file:///var/data');
  assert.is((await resolveStorage(hooks, 'FILE_PREFIX=/var/walg')).url, 'file:///var/walg');
});

bail('an unclaimed scheme is an UnhandledSchemeError naming the scheme and the plugin to add', async () => {
  const hooks = hostWith([]);
  try {
    await resolveStorage(hooks, 's3://bucket/prefix');
    assert.unreachable('should have thrown');
  } catch (error) {
    assert.instance(error, UnhandledSchemeError);
    assert.match((error as Error).message, /"s3:\/\/"/);
    assert.match((error as Error).message, /storageS3\(\) from 'neon-local\/plugins\/storage-s3'/);
  }
  await rejects(() => resolveStorage(hooks, 'gs://b'), /no plugin handles the URL scheme "gs:\/\/"/);
  await rejects(() => resolveLauncher(hooks, 'compute'), /launcherCompute\(\)/);
});

const stamping = suite('error stamping');

stamping('an error thrown in a lifecycle hook carries the plugin name and the hook', async () => {
  const hooks = hostWith([
    {
      name: 'breaks',
      start: () => {
        throw new Error('disk on fire');
      },
    },
  ]);
  try {
    await hooks.start.promise({ repo: context.repo, log: silentLogger } as unknown as StartContext);
    assert.unreachable('should have thrown');
  } catch (error) {
    assert.instance(error, PluginError);
    assert.is((error as PluginError).plugin, 'breaks');
    assert.is((error as Error).message, '[plugin breaks, hook start] disk on fire');
    assert.is((error as PluginError).expected, false, 'a plain Error is a bug: shown with its stack');
  }
});

stamping('a NeonError stays expected (one line) and keeps its code; provider errors are stamped too', async () => {
  const hooks = hostWith([
    {
      name: 'picky',
      init: () => {
        throw new NeonError('bad_input', 'no such bucket');
      },
    },
    {
      name: 'opener',
      resolveStorage: {
        schemes: ['x'],
        handler: () => {
          throw new NeonError('denied', 'access denied');
        },
      },
    },
  ]);
  const error = await hooks.init.promise(context).catch((e) => e);
  assert.is(error.expected, true);
  assert.is(error.code, 'bad_input');
  assert.is(error.message, '[plugin picky, hook init] no such bucket');
  await rejects(() => resolveStorage(hooks, 'x://y'), /\[plugin opener, hook resolveStorage\] access denied/);
});

stamping('plugin factories reject unknown options with the plugin name and the options they know', () => {
  assert.throws(
    () => checkPluginOptions('storage-file', { fsnc: false } as object, ['fsync' as never]),
    /\[plugin storage-file\] unknown option "fsnc" \(known options: fsync\)/,
  );
  assert.equal(checkPluginOptions('storage-file', { fsync: false }, ['fsync']), { fsync: false });
});

ordering.run();
bail.run();
stamping.run();
